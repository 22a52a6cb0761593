#!/usr/bin/env bash
# Makes the demo's base model, ml/idefics2/fixtures/reader: a small Idefics2 pretrained from
# random weights to read the synthetic `tiny` cards and to answer questions about single fields
# ("What is the total?"), never to answer in JSON, and never on a `-d` layout family (see
# tools/pretrain/reader.py). Not run by CI; the result is committed.
#
#   tools/pretrain/make_reader.sh [OUT_DIR]
#
# Four stages, each continuing from the last (about 42 + 14 + 22 + 30 minutes on 2 cores):
#   1. transcription only, from random weights, on cards of the a-c families of all four types;
#   2-4. transcription and field questions on freely arranged cards (`synth --free-arrangement`:
#      random field order, labels or none, label before/after/above the value, alignment, weight,
#      position; no `-d` label) mixed with cards of the a-c families, so that reading does not hang
#      on a memorized layout. Stage 4 asks up to three fields per card, one per conversation turn.
# Each stage draws a fresh corpus. STAGE1=DIR skips stage 1 and starts from DIR.
#
# Needs the `ledger` binary (built here) and a Python with torch, transformers 5.x, tokenizers,
# safetensors and pillow (PYTHON, default /work/venv/bin/python).
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${1:-ml/idefics2/fixtures/reader}
PYTHON=${PYTHON:-/work/venv/bin/python}
cargo build --release -p foundry-cli
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
FAMILIES=""
for t in invoice receipt bank_statement purchase_order; do
  for v in a b c; do FAMILIES="$FAMILIES${FAMILIES:+,}$t-$v"; done
done
synth() {
  target/release/ledger synth --profile tiny --types invoice,receipt,bank_statement,purchase_order \
    --layouts "$FAMILIES" --with-text "$@" > /dev/null
}
STAGE1=${STAGE1:-}
if [ -z "$STAGE1" ]; then
  synth --out "$WORK/s1" --count 24000 --seed 11
  STAGE1="$WORK/stage1"
  "$PYTHON" tools/pretrain/reader.py "$WORK/s1" --out "$STAGE1" --max-steps 4000 --minutes 120
fi
# stage N FREE_SEED FREE_COUNT FAMILY_SEED FAMILY_COUNT FROM TO reader.py-options...
stage() {
  synth --out "$WORK/free$2" --count "$3" --seed "$2" --free-arrangement
  synth --out "$WORK/fam$4" --count "$5" --seed "$4"
  "$PYTHON" tools/pretrain/reader.py "$WORK/free$2" "$WORK/fam$4" --init "$6" --out "$7" \
    --warmup 50 --minutes 120 "${@:8}"
}
stage 2 12 24000 13 6000 "$STAGE1" "$WORK/stage2" --qa 0.5 --max-steps 2500 --lr 5e-4
stage 3 14 24000 15 6000 "$WORK/stage2" "$WORK/stage3" --qa 0.6 --max-steps 4000 --lr 4e-4
stage 4 16 30000 17 4000 "$WORK/stage3" "$OUT" --qa 0.7 --turns 3 --max-steps 4000 --lr 3e-4
