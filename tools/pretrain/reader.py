"""EXPERIMENT (issue 8), not yet a working base: can a small Idefics2 learn, from scratch on this
CPU, to read the synthetic `tiny` documents into the JSON answer the engine trains on?

Trains transformers' Idefics2ForConditionalGeneration (random init, a config sized for 160x96
pages with 8-px patches and the tiny fixture's character-level tokenizer) on the `train` split of
`ledger synth --profile tiny --holdout invoice-d` and reports loss and exact-match accuracy of
greedy answers on held-out layout documents as it goes.

    ledger synth --out /tmp/pre --count 6000 --seed 11 --profile tiny --holdout invoice-d
    /work/venv/bin/python tools/pretrain/reader.py /tmp/pre [--minutes 10] [--out DIR]

Needs torch, transformers, tokenizers, pillow (PyPI).

Status (29 Nov 2026, 2 cores): it does not learn to read yet. Two runs:
- --latents 24 --vision-hidden 96 --lr 2e-3: 1.41M parameters, 0.17 s/step at batch 16. The loss
  falls to 0.55 per answer token within ~100 steps (the JSON format, years, months) and stays
  there to step 3,000 (9 min). Greedy doc and field EM are 0.00 on train and held-out layouts.
- --latents 64 --vision-hidden 128 --lr 1e-3 --warmup 300: the same plateau (0.54–0.56) to step 1,100.
- --latents 32 --vision-hidden 128 --lr 5e-4 --warmup 200 --batch 32: the same plateau (0.540 at
  step 1,300, 12 min).
The answer's digits are not being read from the image (not even on the training layouts).
`--probe` (one random 56-px digit on a blank 160x96 page, answer {"d": digit}) confirms it:
after 1,000 steps (3 min) the loss per answer token stays at 0.21, which is what guessing the
digit costs, and greedy EM is at chance (0.04–0.21). At random init the image does reach the
logits, but weakly: two different images move the last logits by 0.004, and the image features
have std 0.02, the same as the text embeddings. So the
information path from pixels to answer is what to debug first: feature scale, the perceiver, the
learning rate of the vision tower. Only then is it worth scaling the task up. Next to try: a reading curriculum (one big
number per image, then the page), a vision tower without the perceiver bottleneck at first, or
many more steps.
"""
import argparse
import json
import os
import random
import time

import numpy as np
import torch
from PIL import Image
from tokenizers import Tokenizer
from transformers import Idefics2Config, Idefics2ForConditionalGeneration

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = os.path.join(ROOT, "runners/idefics2/fixtures/tiny")
IMAGE_TOKEN = 4


def rows(data_root, split):
    with open(os.path.join(data_root, "data", f"{split}-00000-of-00001.jsonl")) as f:
        return [json.loads(l) for l in f if l.strip()]


def pixels(data_root, row):
    img = Image.open(os.path.join(data_root, "data", row["image"])).convert("RGB")
    a = np.asarray(img, dtype=np.float32) / 255.0
    a = (a - 0.5) / 0.5
    return torch.from_numpy(a).permute(2, 0, 1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("data")
    ap.add_argument("--minutes", type=float, default=10)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--out", default=None)
    ap.add_argument("--latents", type=int, default=24)
    ap.add_argument("--vision-hidden", type=int, default=96)
    ap.add_argument("--warmup", type=int, default=0)
    ap.add_argument("--probe", action="store_true",
                    help="sanity probe: pages with one large random digit, answer {\"d\": digit}")
    a = ap.parse_args()
    N_LATENTS = a.latents
    torch.manual_seed(0)
    random.seed(0)
    tok = Tokenizer.from_file(os.path.join(TINY, "tokenizer.json"))
    cfg = Idefics2Config(
        vision_config=dict(hidden_size=a.vision_hidden, intermediate_size=2 * a.vision_hidden, num_hidden_layers=3, num_attention_heads=4,
                           image_size=160, patch_size=8, hidden_act="gelu_pytorch_tanh"),
        perceiver_config=dict(hidden_act="silu", resampler_n_latents=N_LATENTS, resampler_depth=2,
                              resampler_n_heads=4, resampler_head_dim=32, num_key_value_heads=2),
        text_config=dict(model_type="mistral", vocab_size=420, hidden_size=128, intermediate_size=256,
                         num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2, head_dim=32,
                         max_position_embeddings=512, pad_token_id=6, bos_token_id=1, eos_token_id=2),
        image_token_id=IMAGE_TOKEN,
        tie_word_embeddings=False,
    )
    model = Idefics2ForConditionalGeneration(cfg)
    print("params", sum(p.numel() for p in model.parameters()), flush=True)
    if a.probe:
        from PIL import ImageDraw, ImageFont

        font = ImageFont.load_default(size=56)
        cache = {}

        def probe_pixels(r):
            if r["image"] not in cache:
                img = Image.new("RGB", (160, 96), "white")
                ImageDraw.Draw(img).text((r["x"], 16), r["target"]["d"], fill="black", font=font)
                arr = (np.asarray(img, dtype=np.float32) / 255.0 - 0.5) / 0.5
                cache[r["image"]] = torch.from_numpy(arr).permute(2, 0, 1)
            return cache[r["image"]]

        rng = random.Random(1)
        def mk(i, layout):
            return {"image": f"probe{i}", "x": rng.randint(4, 120), "layout": layout,
                    "target": {"d": str(rng.randint(0, 9))}}
        train = [mk(i, "probe") for i in range(2000)]
        test = [mk(10_000 + i, "probe-test") for i in range(200)]
        globals()["pixels"] = lambda _root, r: probe_pixels(r)
    else:
        train = [r for r in rows(a.data, "train")]
        test = [r for r in rows(a.data, "test")]
    print("train", len(train), "layouts", sorted({r["layout"] for r in train}),
          "test", len(test), "layouts", sorted({r["layout"] for r in test}), flush=True)
    prompt = tok.encode("User:", add_special_tokens=False).ids + [3] + [IMAGE_TOKEN] * N_LATENTS + [3] + \
        tok.encode("Extract JSON.<end_of_utterance>\nAssistant:", add_special_tokens=False).ids

    def example(r):
        ans = tok.encode(" " + json.dumps(r["target"], separators=(",", ":")), add_special_tokens=False).ids + [5]
        ids = [1] + prompt + ans
        labels = [-100] * (1 + len(prompt)) + ans
        return ids, labels

    def batch(rs):
        exs = [example(r) for r in rs]
        n = max(len(i) for i, _ in exs)
        ids = torch.full((len(exs), n), 6, dtype=torch.long)
        lab = torch.full((len(exs), n), -100, dtype=torch.long)
        att = torch.zeros((len(exs), n), dtype=torch.long)
        for k, (i, l) in enumerate(exs):
            ids[k, : len(i)] = torch.tensor(i)
            lab[k, : len(l)] = torch.tensor(l)
            att[k, : len(i)] = 1
        pv = torch.stack([pixels(a.data, r) for r in rs]).unsqueeze(1)
        return ids, att, lab, pv

    @torch.no_grad()
    def accuracy(rs):
        model.eval()
        ok = 0
        fields = 0
        fields_ok = 0
        for r in rs:
            ids = torch.tensor([[1] + prompt])
            pv = pixels(a.data, r).unsqueeze(0).unsqueeze(0)
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=pv,
                                 max_new_tokens=48, do_sample=False, eos_token_id=5, pad_token_id=6)
            text = tok.decode(out[0, ids.shape[1]:].tolist(), skip_special_tokens=True).strip()
            try:
                got = json.loads(text)
            except Exception:
                got = {}
            ok += got == r["target"]
            for k, v in r["target"].items():
                fields += 1
                fields_ok += isinstance(got, dict) and got.get(k) == v
        model.train()
        return ok / len(rs), fields_ok / max(fields, 1)

    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(a.warmup, 1)))
    start = time.time()
    step = 0
    model.train()
    while time.time() - start < a.minutes * 60:
        rs = random.sample(train, a.batch)
        ids, att, lab, pv = batch(rs)
        loss = model(input_ids=ids, attention_mask=att, pixel_values=pv, labels=lab).loss
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        step += 1
        if step % 50 == 0:
            print(f"step {step} loss {loss.item():.4f} {time.time() - start:.0f}s", flush=True)
        if step % 400 == 0:
            doc, field = accuracy(random.sample(test, 24))
            tdoc, tfield = accuracy(random.sample(train, 24))
            print(f"  held-out layout: doc EM {doc:.2f} field EM {field:.2f}; train layouts: doc EM {tdoc:.2f} field EM {tfield:.2f}", flush=True)
    doc, field = accuracy(random.sample(test, 48))
    print(f"final step {step}: held-out doc EM {doc:.2f} field EM {field:.2f}", flush=True)
    if a.out:
        model.save_pretrained(a.out)


if __name__ == "__main__":
    main()
