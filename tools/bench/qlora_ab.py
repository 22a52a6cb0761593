"""Interleaved A/B benchmark of a QLoRA training step: Foundry (ml/qlora/examples/bench_step.rs)
against the PyTorch + PEFT + bitsandbytes peer (../shared/peers/pytorch_idefics2.py), same config,
same thread count, alternating runs in one session so that both see the same machine load.

    cargo build --release -p foundry-qlora --example bench_step
    /work/venv/bin/python tools/bench/qlora_ab.py --size small --pairs 3 [--threads 2] [--steps 3]
        [--warmup 1] [--peer ../shared/peers/pytorch_idefics2.py] [--bin target/release/examples/bench_step]
        [--autocast-bf16] [--foundry-bf16]

The model folder (random init, f32, the peer's config for --size) is created with transformers
under --dir when missing. Each pair runs Foundry then the peer (or the reverse on odd pairs), each
in its own process with RAYON_NUM_THREADS / OMP_NUM_THREADS = --threads. Prints one JSON line per
run and a summary: per pair, the step-time ratio Foundry / PyTorch and each peak RSS, with the load
average read before each run; the median ratio over pairs last. Not run by CI.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def loadavg():
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


def make_model(peer, size, d):
    """Saves the peer's random-init Idefics2 of `size` (f32) to `d`, once."""
    if os.path.exists(os.path.join(d, "config.json")):
        return
    sys.path.insert(0, os.path.dirname(os.path.abspath(peer)))
    import torch
    from pytorch_idefics2 import IMAGE_TOKEN, SIZES
    from transformers import Idefics2Config, Idefics2ForConditionalGeneration
    torch.manual_seed(0)
    s = SIZES[size]
    cfg = Idefics2Config(vision_config=s["vision"], perceiver_config=s["perceiver"], text_config=s["text"],
                         image_token_id=IMAGE_TOKEN)
    Idefics2ForConditionalGeneration(cfg).save_pretrained(d)


def last_json(text):
    for line in reversed(text.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            return json.loads(line)
    raise ValueError("no JSON line in output:\n" + text[-2000:])


def run(cmd, threads):
    env = dict(os.environ, RAYON_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    la = loadavg()
    t0 = time.time()
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if p.returncode != 0:
        raise SystemExit(f"{cmd[0]} failed ({p.returncode}):\n{p.stderr[-3000:]}")
    out = last_json(p.stdout)
    out["load_avg_before"] = la
    out["wall_s"] = round(time.time() - t0, 1)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", default="small", choices=["tiny", "small"])
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--autocast-bf16", action="store_true", help="run the peer with bf16 autocast")
    ap.add_argument("--foundry-bf16", action="store_true",
                    help="run Foundry with bf16 products (bench_step --bf16-products, AVX512-BF16)")
    ap.add_argument("--peer", default=os.path.join(ROOT, "../shared/peers/pytorch_idefics2.py"))
    ap.add_argument("--bin", default=os.path.join(os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")),
                                                  "release/examples/bench_step"))
    ap.add_argument("--dir", default=None, help="model folder (default /tmp/foundry-qlora-bench-SIZE)")
    a = ap.parse_args()
    d = a.dir or f"/tmp/foundry-qlora-bench-{a.size}"
    if not os.path.exists(a.bin):
        raise SystemExit(f"{a.bin} not found: cargo build --release -p foundry-qlora --example bench_step")
    make_model(a.peer, a.size, d)
    foundry = [a.bin, d, str(a.steps), str(a.warmup)] + (["--bf16-products"] if a.foundry_bf16 else [])
    peer = [sys.executable, a.peer, "--size", a.size, "--method", "qlora", "--threads", str(a.threads),
            "--steps", str(a.steps), "--warmup", str(a.warmup)] + (["--autocast-bf16"] if a.autocast_bf16 else [])
    pairs = []
    for i in range(a.pairs):
        order = [("foundry", foundry), ("pytorch", peer)]
        if i % 2 == 1:
            order.reverse()
        res = {}
        for name, cmd in order:
            res[name] = run(cmd, a.threads)
            print(json.dumps({"pair": i, "who": name, **res[name]}), flush=True)
        f, p = res["foundry"], res["pytorch"]
        pair = {"pair": i, "foundry_step_s": f["median_step_s"], "pytorch_step_s": p["median_step_s"],
                "step_ratio": round(f["median_step_s"] / p["median_step_s"], 3),
                "foundry_rss_mib": f["peak_rss_mib"], "pytorch_rss_mib": p["peak_rss_mib"],
                "rss_ratio": round(f["peak_rss_mib"] / p["peak_rss_mib"], 3),
                "load_avg": [f["load_avg_before"], p["load_avg_before"]]}
        pairs.append(pair)
        print(json.dumps(pair), flush=True)
    summary = {"size": a.size, "threads": a.threads, "steps": a.steps, "pairs": len(pairs),
               "peer_autocast_bf16": a.autocast_bf16, "foundry_bf16_products": a.foundry_bf16,
               "median_step_ratio": statistics.median(p["step_ratio"] for p in pairs),
               "median_rss_ratio": statistics.median(p["rss_ratio"] for p in pairs),
               "load_avg_range": [min(min(p["load_avg"]) for p in pairs), max(max(p["load_avg"]) for p in pairs)]}
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
