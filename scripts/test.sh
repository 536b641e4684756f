#!/usr/bin/env bash
# gxd's test command: installs what is missing, starts a throwaway PostgreSQL
# cluster (removed afterwards), runs the whole test suite against it.
#
#   scripts/test.sh                 # everything
#   scripts/test.sh -E 'test(foo)'  # extra arguments go to cargo nextest
#
# Env knobs: GXD_TEST_DATABASE_URL (use that server instead of a throwaway one),
# GXD_CRASH_ROUNDS (kill -9 rounds of the outbox crash test, default 100),
# GXD_ENGINE_CRASH_ROUNDS (kill rounds of `gxd run` in tests/engine_crash.rs, default 35).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh

cleanup() { :; }
if [ -z "${GXD_TEST_DATABASE_URL:-}" ]; then
  pgbin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
  pgdir=$(mktemp -d /tmp/gxd-test-pg.XXXXXX)
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  as_pg=()
  if [ "$(id -u)" -eq 0 ]; then chown postgres: "$pgdir"; as_pg=(runuser -u postgres --); fi
  "${as_pg[@]}" "$pgbin/initdb" -D "$pgdir/data" -U gxd_test -A trust -N -E UTF8 >"$pgdir/initdb.log"
  "${as_pg[@]}" "$pgbin/pg_ctl" -D "$pgdir/data" -l "$pgdir/postgres.log" -w -t 60 \
    -o "-c listen_addresses=127.0.0.1 -p $port -k $pgdir -c fsync=off -c max_connections=400" start >/dev/null
  cleanup() {
    "${as_pg[@]}" "$pgbin/pg_ctl" -D "$pgdir/data" -m fast -w stop >/dev/null 2>&1 || true
    rm -rf "$pgdir"
  }
  export GXD_TEST_DATABASE_URL="postgres://gxd_test@127.0.0.1:$port/postgres"
  echo "test: throwaway PostgreSQL on 127.0.0.1:$port ($pgdir)" >&2
fi
trap cleanup EXIT

# Every cargo invocation selects the whole workspace: features are unified over the
# selected packages, and a different selection means a different (~12 min) RocksDB build.
failpoint_features=gxd-storage/failpoints,gxd/failpoints
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast "$@"
  # Failpoints are process-global: their tests live in their own binaries, behind features
  # (storage's fail points; the engine's kill points in the gxd binary for the crash loop).
  cargo nextest run --workspace --locked --no-fail-fast --features "$failpoint_features" \
    -E 'binary(failpoints) | binary(engine_crash)'
else
  cargo test --workspace --locked --no-fail-fast "$@"
  cargo test --workspace --locked --no-fail-fast --features "$failpoint_features" \
    --test failpoints --test engine_crash
fi
