#!/usr/bin/env bash
# The README's main command: the main job on the embedded default (no server,
# no network). Synthesizes and pins a dataset, pins the tiny Idefics2 base,
# declares the CPU recipe, trains it with QLoRA (every checkpoint evaluated
# automatically), asks for a gated promotion, then shows, reports, verifies,
# exports and re-imports the whole history.
set -euo pipefail
cd "$(dirname "$0")/.."
HOME_DIR=${FOUNDRY_QUICKSTART_HOME:-./.foundry-quickstart}
cargo build --release -p foundry-cli
L="target/release/ledger --home $HOME_DIR"
rm -rf "$HOME_DIR" "$HOME_DIR.copy"
start=$(date +%s)

step() { printf '\n== %s\n' "$*"; }
first_word() { awk 'NR==1 {print $1}'; }

step "init"
$L init

step "synthesize 240 small invoices (tiny profile) and pin them by content"
$L synth --out "$HOME_DIR/data" --count 240 --seed 7 --profile tiny
DATASET=$($L dataset pin "$HOME_DIR/data" | first_word)
echo "dataset $DATASET"

step "pin the tiny Idefics2 base model and declare the CPU recipe"
MODEL=$($L model pin "$PWD/runners/idefics2/fixtures/tiny" | first_word)
RECIPE=$($L recipe declare recipes/tiny-cpu.toml | first_word)
echo "model $MODEL"
echo "recipe $RECIPE"

step "train with QLoRA in the foreground; checkpoints are evaluated as they are committed"
$L run start --recipe "$RECIPE" --dataset "$DATASET" --model "$MODEL" | tee "$HOME_DIR/run.log"
RUN=$(awk '/^run [0-9a-f]+ requested/ {print $2; exit}' "$HOME_DIR/run.log")
$L --json show run "$RUN" > "$HOME_DIR/run.json"
CHECKPOINT=$(grep -o '"checkpoint_id": *"[0-9a-f]*"' "$HOME_DIR/run.json" | tail -n1 | grep -o '[0-9a-f]\{64\}')

step "ask for a promotion to staging; the promoter decides on the eval evidence"
$L promote "$CHECKPOINT" --to staging --reason "quickstart" || echo "(rejected by the gates: that is recorded too)"
$L show channel staging

step "the run, its lineage and its report"
$L show run "$RUN"
$L lineage "$CHECKPOINT"
$L report run "$RUN" --html "$HOME_DIR/run-report.html"
echo "report: $HOME_DIR/run-report.html"

step "verify the chain and every artifact"
$L verify --artifacts

step "export, re-import into a second home, verify"
$L export "$HOME_DIR/ledger.export"
target/release/ledger --home "$HOME_DIR.copy" import "$HOME_DIR/ledger.export"
target/release/ledger --home "$HOME_DIR.copy" verify

printf '\nquickstart finished in %ss\n' "$(( $(date +%s) - start ))"
