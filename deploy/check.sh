#!/usr/bin/env bash
# Static checks of dashboards/ and deploy/ (no engine or cluster needed):
# the dashboards match their generator, the PrometheusRule matches the rules
# file, the deployment files agree with each other (deploy/check.py, with
# PyYAML from a venv under target/), and the systemd unit passes
# `systemd-analyze verify` where systemd-analyze exists.
set -euo pipefail
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"
target_dir="${CARGO_TARGET_DIR:-$repo_root/target}"

python3 dashboards/build.py --check
bash deploy/kubernetes/render-prometheusrule.sh --check

venv="$target_dir/ops-venv"
pin="PyYAML==6.0.3"
if [[ ! -x "$venv/bin/python" ]]; then
  python3 -m venv "$venv"
fi
if [[ "$(cat "$venv/.pins" 2>/dev/null)" != "$pin" ]]; then
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "$pin"
  printf '%s' "$pin" >"$venv/.pins"
fi
"$venv/bin/python" deploy/check.py

if command -v systemd-analyze >/dev/null; then
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  # verify wants an executable ExecStart; the unit is otherwise unchanged.
  sed "s#^ExecStart=/usr/local/bin/dyconit-chat #ExecStart=$(command -v true) #" \
    deploy/systemd/dyconit-chat.service >"$tmp/dyconit-chat.service"
  out="$(systemd-analyze verify "$tmp/dyconit-chat.service" 2>&1)" || { echo "$out" >&2; exit 1; }
  if [[ -n "$out" ]]; then
    echo "systemd-analyze verify complained:" >&2
    echo "$out" >&2
    exit 1
  fi
  echo "systemd unit: systemd-analyze verify clean"
else
  echo "systemd unit: systemd-analyze not installed; skipped"
fi
