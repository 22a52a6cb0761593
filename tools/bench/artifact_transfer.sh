#!/usr/bin/env bash
# Throughput of one artifact through the JetStream artifact bucket, against
# a plain file copy on this machine (issue 25). Not run by CI.
#
#   tools/bench/artifact_transfer.sh [SIZE_MB]      (default 1024)
#
# Starts its own nats-server (JetStream in a temporary directory), stores a
# SIZE_MB file of random bytes in a home's artifact store, then times:
#   upload    `ledger artifact push`  (hash-named object, 512 KiB chunks, acked)
#   download  `ledger artifact get`   (into another home, re-hashed before install)
#   cp        `cp` of the same file, then `sync`  (the peer: a plain file copy)
#   cp+sha    `cp` then `sha256sum` of the copy  (a copy that is also checked)
# and prints MB/s for each and the ratios against cp and cp+sha, measured in
# the same run.
set -euo pipefail
cd "$(dirname "$0")/../.."
size_mb=${1:-1024}
ledger=${LEDGER:-target/release/ledger}
[ -x "$ledger" ] || cargo build --release -p foundry-cli >&2

work=$(mktemp -d)
trap 'kill "$nats_pid" 2>/dev/null || true; rm -rf "$work"' EXIT
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
nats-server -js -sd "$work/js" -a 127.0.0.1 -p "$port" >"$work/nats.log" 2>&1 &
nats_pid=$!
url="nats://127.0.0.1:$port"
for _ in $(seq 50); do nc -z 127.0.0.1 "$port" 2>/dev/null && break; sleep 0.1; done

"$ledger" --home "$work/a" init >/dev/null
head -c "$((size_mb << 20))" /dev/urandom >"$work/file.bin"
sha=$(sha256sum "$work/file.bin" | cut -d' ' -f1)
mkdir -p "$work/a/artifacts/sha256/${sha:0:2}"
mv "$work/file.bin" "$work/a/artifacts/sha256/${sha:0:2}/$sha"
src="$work/a/artifacts/sha256/${sha:0:2}/$sha"
sync

secs() { python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.3f}')" "$@"; }
now() { date +%s.%N; }

t0=$(now); "$ledger" --home "$work/a" --nats "$url" artifact push "$sha" >/dev/null; t1=$(now)
up=$(secs "$t0" "$t1")
t0=$(now); "$ledger" --home "$work/b" --nats "$url" artifact get "$sha" >/dev/null; sync; t1=$(now)
down=$(secs "$t0" "$t1")
t0=$(now); cp "$src" "$work/copy.bin"; sync; t1=$(now)
cp_s=$(secs "$t0" "$t1")
rm -f "$work/copy.bin"; sync
t0=$(now); cp "$src" "$work/copy.bin"; sha256sum "$work/copy.bin" >/dev/null; sync; t1=$(now)
cpsha_s=$(secs "$t0" "$t1")

python3 - "$size_mb" "$up" "$down" "$cp_s" "$cpsha_s" <<'EOF'
import sys
mb = float(sys.argv[1]); up, down, cp, cpsha = map(float, sys.argv[2:])
print(f"artifact of {mb:.0f} MB on this machine")
print(f"{'':10} {'s':>8} {'MB/s':>8} {'÷ cp':>7} {'÷ cp+sha':>9}")
for name, s in [("upload", up), ("download", down), ("cp", cp), ("cp+sha", cpsha)]:
    print(f"{name:10} {s:8.2f} {mb / s:8.0f} {cp / s:7.2f} {cpsha / s:9.2f}")
EOF
