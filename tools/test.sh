#!/usr/bin/env bash
# The README's test command: sets up what the tests need on a fresh Debian
# machine (nats-server, a C toolchain, chromium, python3 with the modal
# package), then runs every test of the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v nats-server >/dev/null 2>&1 || need_apt+=(nats-server)
command -v cc >/dev/null 2>&1 || need_apt+=(build-essential)
# The run report's screenshot test renders in a real headless browser.
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "installing ${need_apt[*]} with apt-get"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need_apt[@]}"
fi

# The Modal tests run the test double of the `modal` CLI (a Python script)
# and check that the rendered launcher imports under the real `modal`
# package from PyPI.
if ! command -v python3 >/dev/null 2>&1; then
  echo "installing python3 with apt-get"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq python3 python3-pip
fi
if ! python3 -c "import modal" >/dev/null 2>&1; then
  echo "installing the modal Python package with pip"
  python3 -m pip install --quiet modal ||
    python3 -m pip install --quiet --break-system-packages modal
fi

# Shards written by `ledger synth --format parquet` are loaded with Hugging Face
# `datasets` (images decoded) where it is installed; without it that test
# shows as ignored.
if ! python3 -c "import datasets, PIL" >/dev/null 2>&1; then
  echo "installing the datasets and pillow Python packages with pip"
  python3 -m pip install --quiet datasets pillow ||
    python3 -m pip install --quiet --break-system-packages datasets pillow ||
    echo "could not install datasets: its test will show as ignored"
fi

# Tests are built with the dev profile, whose dependencies are optimized
# (opt-level 3), so the ML tests run at full speed.
cargo test --workspace "$@"
