#!/usr/bin/env bash
# Starts 3 clustered NATS JetStream servers on loopback for test suites run
# on NATS storage, and stops them.
#   tests/cluster/nats-cluster.sh start DIR   # prints the client URLs
#   tests/cluster/nats-cluster.sh stop DIR
# Needs DYCONIT_NATS_SERVER (the nats-server binary, >= 2.12). Each server
# keeps its store, log and pid under DIR. `start` returns once JetStream
# is healthy on all three servers (monitoring /healthz of each) and the meta
# leader sees the other two current and online (an R3 stream needs all three
# peers), or fails after 60 s.
# The servers' output goes to their logs only: `urls=$(... start DIR)` would
# otherwise wait for them to exit.
set -euo pipefail
cmd="${1:?start|stop}"
dir="${2:?directory}"
base="${DYCONIT_NATS_BASE_PORT:-14220}"

stop() {
  for i in 0 1 2; do
    if [[ -f "$dir/n$i.pid" ]]; then
      kill "$(cat "$dir/n$i.pid")" 2>/dev/null || true
      rm -f "$dir/n$i.pid"
    fi
  done
}

case "$cmd" in
  stop) stop ;;
  start)
    bin="${DYCONIT_NATS_SERVER:?set DYCONIT_NATS_SERVER to the nats-server binary}"
    mkdir -p "$dir"
    routes="nats://127.0.0.1:$((base + 10)),nats://127.0.0.1:$((base + 11)),nats://127.0.0.1:$((base + 12))"
    for i in 0 1 2; do
      "$bin" -n "n$i" -a 127.0.0.1 -p $((base + i)) -m $((base + 20 + i)) -js -sd "$dir/n$i" \
        --cluster_name dyconit-ci --cluster "nats://127.0.0.1:$((base + 10 + i))" --routes "$routes" \
        -l "$dir/n$i.log" </dev/null >/dev/null 2>&1 &
      echo $! >"$dir/n$i.pid"
    done
    for _ in $(seq 600); do
      if python3 - "$((base + 20))" <<'PY' 2>/dev/null; then
import json, sys, urllib.request
ports = range(int(sys.argv[1]), int(sys.argv[1]) + 3)
for port in ports:
    urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1).read()
# The meta leader's view (the one whose replicas leave out the leader) must
# have both other servers current and online: until then creating an R3
# stream fails with "no suitable peers for placement, peer offline".
def ready(port):
    meta = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/jsz", timeout=1))["meta_cluster"]
    replicas = meta.get("replicas") or []
    names = {r["name"] for r in replicas}
    return (meta.get("leader") and meta["leader"] not in names and len(replicas) == 2
            and all(r.get("current") and not r.get("offline") for r in replicas))
sys.exit(0 if any(ready(p) for p in ports) else 1)
PY
        echo "nats://127.0.0.1:$base,nats://127.0.0.1:$((base + 1)),nats://127.0.0.1:$((base + 2))"
        exit 0
      fi
      sleep 0.1
    done
    echo "NATS cluster not healthy after 60 s; logs in $dir" >&2
    tail -n 20 "$dir"/n*.log >&2 || true
    stop
    exit 1
    ;;
  *) echo "usage: $0 start|stop DIR" >&2; exit 2 ;;
esac
