#!/usr/bin/env bash
# The README's test command: sets up what the tests need on a fresh Debian
# machine, then runs every test of the workspace.
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

# Tests are built with the dev profile, whose dependencies are optimized
# (opt-level 3), so the ML tests run at full speed.
cargo test --workspace "$@"
