#!/usr/bin/env bash
# The README's main command: the main job on the embedded default (no server).
# Builds `ledger`, records work in a fresh home, then verifies, exports and
# re-imports the whole history.
set -euo pipefail
cd "$(dirname "$0")/.."
HOME_DIR=${FOUNDRY_QUICKSTART_HOME:-./.foundry-quickstart}
cargo build --release -p foundry-cli
L="target/release/ledger --home $HOME_DIR"
rm -rf "$HOME_DIR"
start=$(date +%s)

step() { printf '\n== %s\n' "$*"; }

step "init"
$L init

step "append 100000 metrics events in durable batches of 1000"
$L bench append --events 100000 --batch 1000 --in-home

step "history"
$L log --limit 5
$L stats

step "verify the chain"
$L verify --artifacts

step "export, re-import into a second home, verify"
rm -rf "$HOME_DIR.copy"
$L export "$HOME_DIR/ledger.export"
target/release/ledger --home "$HOME_DIR.copy" import "$HOME_DIR/ledger.export"
target/release/ledger --home "$HOME_DIR.copy" verify

printf '\nquickstart finished in %ss\n' "$(( $(date +%s) - start ))"
