#!/usr/bin/env bash
# Installs, when missing, the system packages gxd's build and tests need on
# Debian/Ubuntu. Idempotent: does nothing when everything is already there.
#
#   libclang-dev        bindgen for librocksdb-sys (RocksDB's C++ is built from source)
#   protobuf-compiler   protoc, for Fabric's protos (fabric-sdk build script)
#   postgresql          initdb/postgres/pg_ctl for throwaway test and `gxd dev` clusters
#   nodejs, npm         the interoperability test with the official Fabric Gateway Node SDK
#   build-essential     a C++ compiler for RocksDB
set -euo pipefail

need=()
have_pkg() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }
pg_bindir() {
  local d
  for d in /usr/lib/postgresql/*/bin; do
    [ -x "$d/initdb" ] && { echo "$d"; return 0; }
  done
  return 1
}

command -v c++ >/dev/null 2>&1 || need+=(build-essential)
have_pkg libclang-dev || need+=(libclang-dev)
command -v protoc >/dev/null 2>&1 || need+=(protobuf-compiler)
pg_bindir >/dev/null || need+=(postgresql)
command -v node >/dev/null 2>&1 || need+=(nodejs)
command -v npm >/dev/null 2>&1 || need+=(npm)

if [ ${#need[@]} -gt 0 ]; then
  echo "bootstrap: installing ${need[*]}" >&2
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# The Debian postgresql package may start a system cluster; gxd never uses it.
# Throwaway clusters run as the unprivileged `postgres` user when we are root.
if [ "$(id -u)" -eq 0 ] && ! id postgres >/dev/null 2>&1; then
  useradd --system --home-dir /var/lib/postgresql --shell /bin/sh postgres
fi
echo "bootstrap: ok (protoc $(protoc --version | cut -d' ' -f2), postgres $("$(pg_bindir)"/postgres --version | awk '{print $3}'), node $(node --version))" >&2
