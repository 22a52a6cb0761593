#!/usr/bin/env bash
# Makes the demo's base model, runners/idefics2/fixtures/reader: a small Idefics2 pretrained from
# random weights to read the synthetic `tiny` cards (transcription only, never extraction), with
# every `-d` layout family held out of its corpus (see tools/pretrain/reader.py). Not run by CI; the result is committed.
#
#   tools/pretrain/make_reader.sh [OUT_DIR]
#
# Needs the `ledger` binary (built here) and a Python with torch, transformers 5.x, tokenizers,
# safetensors and pillow (PYTHON, default /work/venv/bin/python).
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${1:-runners/idefics2/fixtures/reader}
PYTHON=${PYTHON:-/work/venv/bin/python}
STEPS=${STEPS:-4000}
cargo build --release -p foundry-cli
CORPUS=$(mktemp -d)
trap 'rm -rf "$CORPUS"' EXIT
FAMILIES=""
for t in invoice receipt bank_statement purchase_order; do
  for v in a b c; do FAMILIES="$FAMILIES${FAMILIES:+,}$t-$v"; done
done
target/release/ledger synth --out "$CORPUS" --count 24000 --seed 11 --profile tiny \
  --types invoice,receipt,bank_statement,purchase_order --layouts "$FAMILIES" --with-text
# 4,000 steps of 16 cards: about 44 minutes on 2 cores.
"$PYTHON" tools/pretrain/reader.py "$CORPUS" --out "$OUT" --max-steps "$STEPS" --minutes 120 "${@:2}"
