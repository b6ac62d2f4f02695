#!/usr/bin/env bash
# Interop suite: drives the real dyconit-chat server from a Python grpcio
# client generated from proto/chat.proto. Run from the repo root:
#   bash tests/interop/run.sh [extra pytest args]
#   bash tests/interop/run.sh --cluster [extra pytest args]
# --cluster starts 3 clustered NATS JetStream servers (tests/cluster/
# nats-cluster.sh; needs DYCONIT_NATS_SERVER) and runs every test against
# three `serve --storage nats` nodes with its clients spread over them.
set -euo pipefail
cluster=""
if [[ "${1:-}" == "--cluster" ]]; then
  cluster=1
  shift
fi

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$repo_root"

target_dir="${CARGO_TARGET_DIR:-$repo_root/target}"
venv="$target_dir/interop-venv"
gen="$target_dir/interop-gen"

# Pinned client stack (a different gRPC implementation than the server's tonic).
pins=(
  "grpcio==1.85.1"
  "grpcio-tools==1.85.1"
  "protobuf==7.36.2"
  "pytest==9.2.0"
)

if [[ ! -x "$venv/bin/python" ]]; then
  echo "interop: creating venv at $venv"
  python3 -m venv "$venv"
fi
stamp="$venv/.interop-pins"
if [[ ! -f "$stamp" ]] || [[ "$(cat "$stamp")" != "${pins[*]}" ]]; then
  echo "interop: installing ${pins[*]}"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "${pins[@]}"
  printf '%s' "${pins[*]}" >"$stamp"
fi

# Python stubs from the wire contract, regenerated every run (never committed).
rm -rf "$gen"
mkdir -p "$gen"
"$venv/bin/python" -m grpc_tools.protoc \
  -I "$repo_root/proto" \
  --python_out="$gen" \
  --grpc_python_out="$gen" \
  "$repo_root/proto/chat.proto"

if [[ -z "${DYCONIT_BIN:-}" ]]; then
  echo "interop: cargo build --bin dyconit-chat"
  cargo build --bin dyconit-chat
  DYCONIT_BIN="$target_dir/debug/dyconit-chat"
fi
if [[ ! -x "$DYCONIT_BIN" ]]; then
  echo "interop: server binary not found or not executable: $DYCONIT_BIN" >&2
  exit 1
fi
export DYCONIT_BIN
export INTEROP_STUBS="$gen"
export PYTHONDONTWRITEBYTECODE=1

if [[ -n "$cluster" ]]; then
  nats_dir="$target_dir/interop-nats"
  rm -rf "$nats_dir"
  INTEROP_NATS_URL=$(bash "$repo_root/tests/cluster/nats-cluster.sh" start "$nats_dir")
  export INTEROP_NATS_URL
  trap 'bash "$repo_root/tests/cluster/nats-cluster.sh" stop "$nats_dir"' EXIT
  echo "interop: 3 chat nodes per test on the NATS cluster at $INTEROP_NATS_URL"
  "$venv/bin/python" -m pytest -p no:cacheprovider "$repo_root/tests/interop" "$@"
  exit
fi
exec "$venv/bin/python" -m pytest -p no:cacheprovider "$repo_root/tests/interop" "$@"
