#!/usr/bin/env bash
# Checks that vendor/candle-core is candle-core 0.11.1 from crates.io plus
# exactly vendor/candle-core/FOUNDRY.patch (src/backprop.rs and the trimmed
# Cargo.toml): fetches the pristine crate into a temporary project, applies
# the patch to a copy, and compares every file. Needs crates.io.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/p/src"
cat > "$work/p/Cargo.toml" <<'TOML'
[package]
name = "pristine"
version = "0.0.0"
edition = "2021"
[dependencies]
candle-core = "=0.11.1"
TOML
echo 'fn main() {}' > "$work/p/src/main.rs"
(cd "$work/p" && cargo fetch -q)
src=$(cd "$work/p" && cargo metadata --format-version 1 -q |
  python3 -c 'import json,sys; m=json.load(sys.stdin); print([p["manifest_path"] for p in m["packages"] if p["name"]=="candle-core"][0].rsplit("/",1)[0])')
cp -r "$src" "$work/c"
(cd "$work/c" && patch -s -p1 < "$root/vendor/candle-core/FOUNDRY.patch")
# The vendored copy leaves out examples, tests, benches and registry files.
diff -r -q \
  --exclude=examples --exclude=tests --exclude=benches --exclude=.cargo-ok \
  --exclude=.cargo_vcs_info.json --exclude=Cargo.lock --exclude=Cargo.toml.orig \
  --exclude=FOUNDRY-PATCH.md --exclude=FOUNDRY.patch \
  "$work/c" vendor/candle-core
echo "vendor/candle-core = candle-core 0.11.1 + FOUNDRY.patch"
