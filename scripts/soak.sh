#!/usr/bin/env bash
# Soak: runs a server and hours of mixed traffic with client churn against
# it (examples/soak.rs), then reports the server's RSS drift and the send
# latency drift between the first and the last window.
#
#   scripts/soak.sh [DURATION] [extra soak flags...]
#   scripts/soak.sh 1h                   # the release run: first 10 min vs last 10 min
#   PROFILE=debug scripts/soak.sh 2m --window 30s --sample 5s
#
# The server runs with its default durable storage in a temporary data
# directory, removed at the end; its log goes to $OUT/soak-server.log.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"
duration="${1:-1h}"
shift || true
profile="${PROFILE:-release}"
target_dir="${CARGO_TARGET_DIR:-$repo_root/target}"
out="${OUT:-$target_dir}"

if [[ "$profile" == release ]]; then
  cargo build --release --bin dyconit-chat --example soak
else
  cargo build --bin dyconit-chat --example soak
fi
bin="$target_dir/$profile/dyconit-chat"
soak="$target_dir/$profile/examples/soak"

data="$(mktemp -d)"
port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
admin="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
"$bin" serve --listen "127.0.0.1:$port" --admin-listen "127.0.0.1:$admin" \
  --data-dir "$data" --log warn >"$out/soak-server.log" 2>&1 &
server=$!
cleanup() {
  kill "$server" 2>/dev/null || true
  wait "$server" 2>/dev/null || true
  rm -rf "$data"
}
trap cleanup EXIT

for _ in $(seq 100); do
  if curl -sf "http://127.0.0.1:$admin/readyz" >/dev/null; then break; fi
  sleep 0.1
done
echo "soak: server pid $server on 127.0.0.1:$port ($profile build), for $duration"
"$soak" --url "http://127.0.0.1:$port" --pid "$server" --duration "$duration" "$@"
