"""Times transformers' Idefics2 on the "small" config, the peer of ml/idefics2/benches/forward.rs.

    /work/venv/bin/python tools/bench/idefics2_forward.py [--dir /tmp/foundry-idefics2-small] [--threads 2]

Creates the model directory (random weights, f32) when it does not exist, so the Rust bench
(`IDEFICS2_BENCH_DIR=... cargo bench -p foundry-idefics2`) runs on the same weights. Prints one
JSON line: forward_ms (full forward, one 224 px image + prompt), prefill_ms, per_token_ms.
"""
import argparse
import json
import os
import time

import torch
from transformers import Idefics2Config, Idefics2ForConditionalGeneration

SMALL = dict(
    vision=dict(hidden_size=256, intermediate_size=1024, num_hidden_layers=4, num_attention_heads=4, image_size=224, patch_size=14),
    perceiver=dict(hidden_size=512, resampler_n_latents=64, resampler_depth=2, resampler_n_heads=8, resampler_head_dim=64,
                   num_key_value_heads=4),
    text=dict(model_type="mistral", hidden_size=512, intermediate_size=1536, num_hidden_layers=4, num_attention_heads=8,
              num_key_value_heads=4, vocab_size=2000, max_position_embeddings=1024, bos_token_id=1, eos_token_id=2),
)
IMAGE_TOKEN, FAKE = 5, 6
TEXT_TOKENS = 16
NEW_TOKENS = 32


def inputs():
    g = torch.Generator().manual_seed(0)
    text = torch.randint(10, 2000, (TEXT_TOKENS,), generator=g)
    ids = torch.cat([torch.tensor([1, FAKE]), torch.full((64,), IMAGE_TOKEN), torch.tensor([FAKE]), text])[None]
    pix = torch.randn(1, 1, 3, 224, 224, generator=g)
    mask = torch.ones(1, 1, 224, 224, dtype=torch.long)
    return ids, pix, mask


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", default="/tmp/foundry-idefics2-small")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--iters", type=int, default=10)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    if not os.path.exists(os.path.join(a.dir, "config.json")):
        torch.manual_seed(0)
        cfg = Idefics2Config(vision_config=SMALL["vision"], perceiver_config=SMALL["perceiver"], text_config=SMALL["text"],
                             image_token_id=IMAGE_TOKEN)
        Idefics2ForConditionalGeneration(cfg).save_pretrained(a.dir)
        ids, pix, mask = inputs()
        from safetensors.torch import save_file
        save_file({"input_ids": ids.contiguous(), "pixel_values": pix.contiguous(), "pixel_attention_mask": mask.contiguous()},
                  os.path.join(a.dir, "bench_inputs.safetensors"))
    model = Idefics2ForConditionalGeneration.from_pretrained(a.dir, attn_implementation="eager").eval()
    ids, pix, mask = inputs()

    def timeit(f, n):
        f()
        ts = []
        for _ in range(n):
            t = time.perf_counter()
            f()
            ts.append(time.perf_counter() - t)
        ts.sort()
        return ts[len(ts) // 2]

    with torch.inference_mode():
        fwd = timeit(lambda: model(input_ids=ids, pixel_values=pix, pixel_attention_mask=mask, use_cache=False), a.iters)
        kw = dict(input_ids=ids, pixel_values=pix, pixel_attention_mask=mask, do_sample=False, eos_token_id=None,
                  pad_token_id=0)
        pre = timeit(lambda: model.generate(**kw, max_new_tokens=1, min_new_tokens=1), a.iters)
        gen = timeit(lambda: model.generate(**kw, max_new_tokens=NEW_TOKENS + 1, min_new_tokens=NEW_TOKENS + 1), max(3, a.iters // 3))
    print(json.dumps(dict(impl="transformers", threads=a.threads, forward_ms=round(fwd * 1e3, 2), prefill_ms=round(pre * 1e3, 2),
                          per_token_ms=round((gen - pre) / NEW_TOKENS * 1e3, 3), torch=torch.__version__)))


if __name__ == "__main__":
    main()
