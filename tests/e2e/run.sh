#!/usr/bin/env bash
# End-to-end check of dashboards/ and deploy/prometheus/ against a real
# Prometheus scraping a real server (see prometheus_e2e.py). Needs
# `prometheus` and `promtool` on PATH (Debian package `prometheus`), and a
# nats-server >= 2.12 in DYCONIT_NATS_SERVER for the cluster node (.ci/run
# installs it from PyPI before this runs).
# Run from anywhere:  bash tests/e2e/run.sh
set -euo pipefail
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$repo_root"
target_dir="${CARGO_TARGET_DIR:-$repo_root/target}"

for tool in prometheus promtool python3; do
  command -v "$tool" >/dev/null || { echo "e2e: $tool not found" >&2; exit 1; }
done

echo "e2e: cargo build --bin dyconit-chat --example e2e_traffic"
cargo build --bin dyconit-chat --example e2e_traffic

exec python3 "$repo_root/tests/e2e/prometheus_e2e.py" \
  --server "$target_dir/debug/dyconit-chat" \
  --traffic "$target_dir/debug/examples/e2e_traffic" "$@"
