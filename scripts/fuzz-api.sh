#!/usr/bin/env bash
# Fuzzes the REST API against its own OpenAPI document with schemathesis (PyPI): every
# operation with generated valid and invalid inputs, with an admin and a user token.
# Passes when no response is a 5xx and every response matches the document (status code,
# content type, schema).
#
#   scripts/fuzz-api.sh                     # the api crate's fuzz_server (real router,
#                                           # PostgreSQL, outbox; test tokens)
#   GXD_FUZZ_URL=http://127.0.0.1:8080 GXD_FUZZ_ADMIN_TOKEN=... GXD_FUZZ_USER_TOKEN=... \
#     scripts/fuzz-api.sh                   # a running daemon, with real tokens
#
# Knobs: GXD_FUZZ_MAX_EXAMPLES (per operation, default 60), GXD_FUZZ_MAX_TIME_SECONDS
# (per token, default 240). PostgreSQL: GXD_TEST_DATABASE_URL or a private cluster.
set -euo pipefail
cd "$(dirname "$0")/.."

venv="${GXD_FUZZ_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/gxd/schemathesis-venv}"
if ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
  echo "fuzz: installing python3-venv" >&2
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-venv >/dev/null
fi
if [ ! -x "$venv/bin/schemathesis" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet 'schemathesis>=4,<5'
fi

server_pid=""
cleanup() { if [ -n "$server_pid" ]; then kill "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; fi; }
trap cleanup EXIT

url="${GXD_FUZZ_URL:-}"
admin="${GXD_FUZZ_ADMIN_TOKEN:-admin:ops}"
user="${GXD_FUZZ_USER_TOKEN:-user:alice}"
if [ -z "$url" ]; then
  cargo build --workspace --examples --quiet
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  target="${CARGO_TARGET_DIR:-target}"
  "$target/debug/examples/fuzz_server" "127.0.0.1:$port" &
  server_pid=$!
  url="http://127.0.0.1:$port"
fi
# Wait for the server (python3, not curl: a fresh machine may have no curl).
python3 - "$url/healthz" <<'PY'
import sys, time, urllib.request
deadline = time.time() + 60
while True:
    try:
        urllib.request.urlopen(sys.argv[1], timeout=2).read()
        break
    except Exception as e:
        if time.time() > deadline:
            sys.exit(f"fuzz: {sys.argv[1]} did not answer within 60 s: {e}")
        time.sleep(0.1)
PY

status=0
for token in "$admin" "$user"; do
  echo "fuzz: $url as ${token%%:*}" >&2
  "$venv/bin/schemathesis" run "$url/api/v1/openapi.json" \
    -H "Authorization: Bearer $token" \
    --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance \
    --phases examples,coverage,fuzzing \
    --max-examples "${GXD_FUZZ_MAX_EXAMPLES:-60}" \
    --max-time "${GXD_FUZZ_MAX_TIME_SECONDS:-240}" \
    --request-timeout 10 \
    --workers 1 \
    --exclude-path '/api/v1/commands/{id}/events' || status=1
done
exit $status
