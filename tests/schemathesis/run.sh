#!/usr/bin/env bash
# Schemathesis against the admin API of a real server: requests generated
# from the server's own OpenAPI document (positive and negative), every
# response checked against it. Twice: without an admin token (the document
# then declares no security) and with one. Run from the repo root:
#   bash tests/schemathesis/run.sh            # 40 s per run
#   ST_MAX_TIME=600 bash tests/schemathesis/run.sh
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$repo_root"
target_dir="${CARGO_TARGET_DIR:-$repo_root/target}"
venv="$target_dir/schemathesis-venv"
pin="schemathesis==4.32.5"
max_time="${ST_MAX_TIME:-40}"

if [[ ! -x "$venv/bin/python" ]]; then
  python3 -m venv "$venv"
fi
if [[ "$(cat "$venv/.pins" 2>/dev/null)" != "$pin" ]]; then
  echo "schemathesis: installing $pin"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "$pin"
  printf '%s' "$pin" >"$venv/.pins"
fi
if [[ -z "${DYCONIT_BIN:-}" ]]; then
  cargo build --bin dyconit-chat
  DYCONIT_BIN="$target_dir/debug/dyconit-chat"
fi

work="$(mktemp -d)"
server_pid=""
cleanup() {
  if [[ -n "$server_pid" ]]; then kill "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

# positive_data_acceptance is left out on purpose: a JSON Schema cannot say
# that a duration string must be at most 1h or that a log filter must parse,
# so such values are schema-valid and answered 400 with a reason (documented).
checks=(--checks all --exclude-checks positive_data_acceptance)

run_against() { # label, extra serve args..., then -- extra st args...
  local label="$1"; shift
  local serve_args=() st_args=()
  while [[ $# -gt 0 && "$1" != "--" ]]; do serve_args+=("$1"); shift; done
  [[ $# -gt 0 ]] && shift
  st_args=("$@")
  # Ports the system picks: the server says which in its ready file,
  # written (whole) once it serves.
  local ready="$work/$label.ready.json" admin=""
  "$DYCONIT_BIN" serve --storage memory --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 \
    --ready-file "$ready" ${serve_args[@]+"${serve_args[@]}"} >"$work/$label.log" 2>&1 &
  server_pid=$!
  for _ in $(seq 100); do
    [[ -f "$ready" ]] && break
    sleep 0.1
  done
  if [[ ! -f "$ready" ]]; then
    echo "schemathesis: $label: the server did not start; its log:" >&2
    tail -n 50 "$work/$label.log" >&2
    exit 1
  fi
  admin="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["admin"])' "$ready")"
  echo "schemathesis: $label (max $max_time s)"
  if ! "$venv/bin/st" run "http://$admin/api/v1/openapi.json" "${checks[@]}" \
      --max-time "$max_time" --workers 2 --suppress-health-check all --no-color \
      ${st_args[@]+"${st_args[@]}"}; then
    echo "schemathesis: $label failed; server log:" >&2
    tail -n 50 "$work/$label.log" >&2
    exit 1
  fi
  kill "$server_pid"; wait "$server_pid" 2>/dev/null || true; server_pid=""
}

run_against no-token
token="st-$(python3 -c 'import secrets; print(secrets.token_hex(16))')"
run_against token --admin-token "$token" -- -H "Authorization: Bearer $token"
