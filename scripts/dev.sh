#!/usr/bin/env bash
# gxd's main job on one machine: installs what is missing, builds gxd, and runs
# `gxd dev` — a local PostgreSQL, the devnet peer (GX chaincode built in) and the
# daemon, all on embedded defaults, state under ./.gxd-dev. Ctrl-C stops it all.
#
#   scripts/dev.sh                 # extra arguments go to `gxd dev`
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
exec cargo run --locked -p gxd -- dev "$@"
