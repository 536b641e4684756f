#!/usr/bin/env bash
# gxd's main job on one machine: installs what is missing, builds gxd, and runs
# `gxd dev` — a local PostgreSQL, the devnet peer (GX chaincode built in) and the
# daemon, all on embedded defaults, state under ./.gxd-dev. Ctrl-C stops it all.
#
#   scripts/dev.sh                 # extra arguments go to `gxd dev`
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
# The same package selection as scripts/test.sh (--workspace): Cargo unifies features over
# the selected packages, so `-p gxd` would mean a second (~12 minute) RocksDB build.
cargo build --workspace --locked --bins
target_dir=$(cargo metadata --format-version 1 --no-deps --locked \
  | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
exec "$target_dir/debug/gxd" dev "$@"
