#!/usr/bin/env bash
# Runs every row of the load table in docs/benchmarks.md ("Load")
# REPS times (default 3) and writes one JSON report per run into OUT
# (default bench-results/). Summarise with: python3 scripts/bench-summary.py OUT
# Needs a release build: cargo build --release. Spawned servers keep messages
# in memory (bench --storage memory, the default) unless the row says durable.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release/dyconit-chat}
OUT=${1:-bench-results}
REPS=${REPS:-3}
ROWS=${ROWS:-"w1 w1durable compare idle max r3 r3x110"}  # also: w1s50 nats
mkdir -p "$OUT"
# Each client has its own connection (the bench's default); CLIENTS_PER_CONNECTION=K
# multiplexes K clients on each connection instead.
MUX=()
if [[ -n "${CLIENTS_PER_CONNECTION:-}" ]]; then MUX=(--clients-per-connection "$CLIENTS_PER_CONNECTION"); fi
# A run whose delivery check fails (exit 1) still wrote its report: note it
# and go on to the next row.
b() {
  local name=$1; shift; echo "== $name: $BIN bench ${MUX[*]} $*" >&2
  "$BIN" bench --quiet --json "$OUT/$name.json" "${MUX[@]}" "$@" > "$OUT/$name.txt" \
    || echo "== $name: bench exited $? (see $OUT/$name.txt)" >&2
}

for r in $(seq 1 "$REPS"); do
  for row in $ROWS; do
    case $row in
    w1)  # W1: 1,000 streaming clients, 200 msg/s, 100 B, staleness 500 ms
      b "w1-$r" --spawn-server --staleness 500ms --clients 1000 --rate 200 --threads 50 \
        --size 100 --duration 30s --ramp-up 5s ;;
    w1durable)  # W1 with the server's default storage (SQLite, fsync per group commit)
      b "w1durable-$r" --spawn-server --storage durable --staleness 500ms --clients 1000 \
        --rate 200 --threads 50 --size 100 --duration 30s --ramp-up 5s ;;
    compare)  # W1 at 500 ms and at the smallest staleness that admits writes, back to back
      b "cmp500-$r" --spawn-server --staleness 500ms --clients 1000 --rate 200 --threads 50 \
        --size 100 --duration 20s --ramp-up 5s
      b "cmp1-$r" --spawn-server --staleness 1ms --clients 1000 --rate 200 --threads 50 \
        --size 100 --duration 20s --ramp-up 5s ;;
    idle)  # 10,000 idle streaming clients
      b "idle-$r" --spawn-server --clients 10000 --rate 0 --duration 20s --ramp-up 10s ;;
    max)  # max accepted msg/s: 64 send-only writers on SendMessages streams, 1 reader
      for rate in ${MAX_RATES:-150000 200000 250000 300000}; do
        b "max$rate-$r" --spawn-server --clients 1 --writers 64 --send-only-writers \
          --mode stream --rate "$rate" --threads 64 --size 100 --duration 10s --ramp-up 1s \
          --numerical 1000000 --order 1000000 --ack-timeout 1h \
          --server-arg=--max-outbound-bytes=1073741824 --drain 30s
      done ;;
    r3)  # 10,000 streaming clients, 100 msg/s aggregate, 60 s
      b "r3-$r" --spawn-server --clients 10000 --rate 100 --threads 10 --size 100 \
        --duration 60s --ramp-up 10s ;;
    w1s50)  # W1 at staleness 50 ms (beside the NATS row)
      b "w1s50-$r" --spawn-server --staleness 50ms --clients 1000 --rate 200 --threads 50 \
        --size 100 --duration 30s --ramp-up 5s ;;
    nats)  # the same fan-out over core NATS: 1,000 subscriber connections, 200 msg/s, 100 B
      # (NATS_SERVER: a nats-server binary, e.g. target/nats-venv/bin/nats-server)
      "$BIN" bench --quiet --spawn-nats "${NATS_SERVER:?set NATS_SERVER}" --clients 1000 \
        --rate 200 --size 100 --duration 30s --json "$OUT/nats-$r.json" > "$OUT/nats-$r.txt" ;;
    r3x110)  # the same at 110 msg/s: headroom above 1,000,000 deliveries/s
      b "r3x110-$r" --spawn-server --clients 10000 --rate 110 --threads 10 --size 100 \
        --duration 60s --ramp-up 10s ;;
    esac
  done
done
