#!/usr/bin/env bash
# Data at scale: peak RSS and throughput of `ledger dataset pin`, a 30-step
# `ledger run start` (the tiny model) and a 16-document `ledger eval` as the
# dataset grows. Not run by CI (it writes gigabytes and takes minutes).
#
#   cargo build --release -p foundry-cli
#   tools/bench/data_scale.sh [--sizes "2000:standard 20000:standard 100000:tiny"] [--dir DIR]
#
# For each COUNT:PROFILE it synthesizes the documents once (kept under DIR
# for the next run), then measures, each command in its own process with
# FOUNDRY_ISOLATE=0 (jobs in the same process, so its peak RSS is theirs):
# - pin: wall, peak RSS, MB/s of image bytes, against `sha256sum` of the same
#   files (2 in parallel, as the pin uses 2 cores) as the limit, both with the
#   files in the page cache;
# - a 30-step run start: peak RSS (training checks every train shard against
#   its pin before step 1, then reads each example alone), and steps per second
#   over steps 2-30 from the trainer's own clock (MetricsLogged);
# - eval base --limit 16: peak RSS, documents per second.
# Prints one line per size and writes them as JSON lines to DIR/results.jsonl.
set -euo pipefail
cd "$(dirname "$0")/../.."

SIZES="2000:standard 20000:standard 100000:tiny"
DIR="${TMPDIR:-/tmp}/foundry-data-scale"
while [ $# -gt 0 ]; do
  case "$1" in
    --sizes) SIZES="$2"; shift 2 ;;
    --dir) DIR="$2"; shift 2 ;;
    *) echo "usage: $0 [--sizes \"COUNT:PROFILE ...\"] [--dir DIR]" >&2; exit 2 ;;
  esac
done
BIN="$PWD/target/release/ledger"
[ -x "$BIN" ] || { echo "build first: cargo build --release -p foundry-cli" >&2; exit 1; }
mkdir -p "$DIR"
RESULTS="$DIR/results.jsonl"

# Runs a command under GNU time; prints "wall_s max_rss_kib" on fd 3.
measure() {
  local out
  out=$(mktemp)
  /usr/bin/time -f "%e %M" -o "$out" "$@"
  cat "$out" >&3
  rm -f "$out"
}

for spec in $SIZES; do
  n="${spec%%:*}"
  profile="${spec##*:}"
  D="$DIR/$profile-$n"
  if [ ! -f "$D/data/.complete" ]; then
    rm -rf "$D"
    mkdir -p "$D"
    echo "synthesizing $n $profile documents into $D/data" >&2
    "$BIN" --home "$D/synth-home" synth --out "$D/data" --count "$n" --seed 11 --profile "$profile" >/dev/null
    touch "$D/data/.complete"
  fi
  H="$D/home"
  rm -rf "$H"
  "$BIN" --home "$H" init >/dev/null

  image_bytes=$(find "$D/data" -type f \( -name '*.png' -o -name '*.jpg' \) -printf '%s\n' | awk '{s += $1} END {print s + 0}')
  all_bytes=$(find "$D/data" -type f -printf '%s\n' | awk '{s += $1} END {print s + 0}')
  # Both read from the page cache.
  find "$D/data" -type f -print0 | xargs -0 cat >/dev/null
  sha_s=$( { /usr/bin/time -f "%e" bash -c "find '$D/data' -type f -print0 | xargs -0 -n 256 -P 2 sha256sum >/dev/null"; } 2>&1 | tail -n1)

  read -r pin_s pin_kib < <(measure "$BIN" --home "$H" dataset pin "$D/data" 3>&1 >"$D/pin.out" 2>"$D/pin.err")
  dataset=$(awk 'NR == 1 {print $1}' "$D/pin.out")

  model=$("$BIN" --home "$H" model pin "$PWD/ml/idefics2/fixtures/tiny" | awk 'NR == 1 {print $1}')
  recipe=$(FOUNDRY_TRAINING_MAX_STEPS=30 FOUNDRY_TRAINING_CHECKPOINT_EVERY=30 FOUNDRY_TRAINING_WARMUP_STEPS=1 \
    FOUNDRY_TRAINING_MAX_LENGTH=4096 \
    FOUNDRY_EVAL_MAX_EXAMPLES=2 FOUNDRY_EVAL_MAX_NEW_TOKENS=8 \
    "$BIN" --home "$H" recipe declare recipes/tiny-cpu.toml | awk 'NR == 1 {print $1}')
  read -r run_s run_kib < <(FOUNDRY_ISOLATE=0 measure "$BIN" --home "$H" run start --recipe "$recipe" \
    --dataset "$dataset" --model "$model" 3>&1 >"$D/run.out" 2>"$D/run.err")
  run=$(awk '/^run [0-9a-f]+ requested/ {print $2; exit}' "$D/run.out")
  "$BIN" --home "$H" --json log --type MetricsLogged >"$D/metrics.jsonl"
  steps_per_s=$(python3 - "$D/metrics.jsonl" <<'EOF'
import json, sys
points = [p for line in open(sys.argv[1]) if line.strip()
          for p in json.loads(line)["payload"]["points"]]
ms = {p["step"]: p["elapsed_ms"] for p in points}
# Steps 2..N from the trainer's own clock: reading, checking and preparing the examples and
# computing the steps (step 1 also pays for the first encode; the model load is before it).
first, last = min(ms) + 1, max(ms)
print(f"{(last - first) / max((ms[last] - ms[first]) / 1000, 1e-9):.2f}")
EOF
)
  read -r eval_s eval_kib < <(FOUNDRY_ISOLATE=0 measure "$BIN" --home "$H" eval base --model "$model" \
    --dataset "$dataset" --split test --limit 16 3>&1 >"$D/eval.out" 2>"$D/eval.err")

  python3 - "$n" "$profile" "$image_bytes" "$all_bytes" "$sha_s" "$pin_s" "$pin_kib" "$run_s" "$run_kib" \
    "$steps_per_s" "$eval_s" "$eval_kib" <<'EOF' | tee -a "$RESULTS"
import json, sys
(n, profile, image_bytes, all_bytes, sha_s, pin_s, pin_kib, run_s, run_kib, sps, eval_s, eval_kib) = sys.argv[1:]
image_mb = int(image_bytes) / 1e6
pin_mbs = image_mb / max(float(pin_s), 1e-9)
sha_mbs = int(all_bytes) / 1e6 / max(float(sha_s), 1e-9)
print(json.dumps({
    "documents": int(n), "profile": profile, "image_mb": round(image_mb, 1),
    "pin_s": float(pin_s), "pin_rss_mib": round(int(pin_kib) / 1024, 1),
    "pin_mb_per_s": round(pin_mbs, 1), "sha256sum_mb_per_s": round(sha_mbs, 1),
    "pin_vs_sha256sum": round(pin_mbs / sha_mbs, 3),
    "run_s": float(run_s), "run_rss_mib": round(int(run_kib) / 1024, 1),
    "train_steps_per_s": float(sps),
    "eval_s": float(eval_s), "eval_rss_mib": round(int(eval_kib) / 1024, 1),
    "eval_docs_per_s": round(16 / max(float(eval_s), 1e-9), 2),
}))
EOF
done
