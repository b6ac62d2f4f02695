#!/usr/bin/env bash
# Browser suite: the admin dashboard in headless Chromium against the real
# server binary with live traffic. Installs what it needs (Debian's chromium,
# playwright-core from the committed lock file; no browser download). Run
# from anywhere:
#   bash tests/browser/run.sh [extra node --test args]
# Screenshots land in target/ (dashboard.png, dashboard-phone.png,
# dashboard-token-refused.png, dashboard-offline.png).
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$repo_root"
target_dir="${CARGO_TARGET_DIR:-$repo_root/target}"

if [[ ! -x /usr/bin/chromium ]]; then
  echo "browser: installing Debian's chromium"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  echo "browser: node and npm are needed (Node 20 or later)" >&2
  exit 1
fi
node_major="$(node -p 'process.versions.node.split(".")[0]')"
if ((node_major < 20)); then
  echo "browser: Node 20 or later is needed, found $(node --version)" >&2
  exit 1
fi

echo "browser: npm ci (playwright-core only; it never downloads a browser)"
(cd tests/browser && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --ignore-scripts --no-audit --no-fund --loglevel=error)

if [[ -z "${DYCONIT_BIN:-}" || -z "${TRAFFIC_BIN:-}" ]]; then
  echo "browser: cargo build --bin dyconit-chat --example traffic"
  cargo build --bin dyconit-chat --example traffic
  export DYCONIT_BIN="$target_dir/debug/dyconit-chat"
  export TRAFFIC_BIN="$target_dir/debug/examples/traffic"
fi
export SCREENSHOT_DIR="${SCREENSHOT_DIR:-$target_dir}"

exec node --test --test-concurrency=1 "$@" tests/browser/dashboard.test.mjs
