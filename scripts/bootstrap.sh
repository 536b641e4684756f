#!/usr/bin/env bash
# Installs the system packages gxd's build and tests need on Debian/Ubuntu, then checks
# that the machine can do what the build needs (capabilities, not commands).
#
# The package list is installed by name every time: apt does nothing (and is quick) when
# all of it is there, and a package that is missing is installed whatever commands happen
# to be on PATH. (Probing for commands once let a machine with `protoc` but without
# protoc's well-known types pass, and fabric-sdk's build failed on it.)
#
#   build-essential     a C/C++ compiler for RocksDB's C++ (librocksdb-sys)
#   libclang-dev        libclang for bindgen (librocksdb-sys)
#   protobuf-compiler   protoc, for Fabric's protos (fabric-sdk and gxd-fabric build scripts)
#   libprotobuf-dev     protoc's well-known types (google/protobuf/*.proto)
#   postgresql          initdb/postgres/pg_ctl for throwaway test and `gxd dev` clusters
#   nodejs (+ npm)      the interoperability test with the official Fabric Gateway Node SDK
#   python3             small helpers in the scripts (free ports)
#   ca-certificates     TLS to the package registries (cargo, npm)
#   pkg-config          -sys crates' discovery of system libraries
#
# Env knobs: GXD_BOOTSTRAP_SKIP_INSTALL=1 only runs the checks.
set -euo pipefail

packages=(build-essential libclang-dev protobuf-compiler libprotobuf-dev postgresql nodejs
  python3 ca-certificates pkg-config)

SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }

if [ "${GXD_BOOTSTRAP_SKIP_INSTALL:-0}" != 1 ]; then
  missing=()
  for p in "${packages[@]}"; do installed "$p" || missing+=("$p"); done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "bootstrap: installing ${missing[*]}" >&2
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
  fi
  # Debian's nodejs ships npm as its own package; NodeSource's nodejs provides (and conflicts
  # with) it. Install it only where the installed nodejs does not provide it.
  if ! dpkg-query -W -f='${Provides}' nodejs 2>/dev/null | grep -qw npm && ! installed npm; then
    echo "bootstrap: installing npm" >&2
    $SUDO apt-get install -y -qq --no-install-recommends npm >/dev/null
  fi
fi

# Throwaway clusters run as the unprivileged `postgres` user when we are root (initdb and
# postgres refuse to run as root). The postgresql package creates it; make sure.
if [ "$(id -u)" -eq 0 ] && ! id postgres >/dev/null 2>&1; then
  useradd --system --home-dir /var/lib/postgresql --shell /bin/sh postgres
fi

# ---- capability checks: each failure names the package that fixes it ----------------------
failed=0
# One line per failure, whatever the tool's log said (a multi-line protoc or initdb log would
# otherwise put the fix far from the FAILED), so a CI log grep shows cause and fix together.
fail() { echo "bootstrap: FAILED: $(printf '%s' "$1" | tr -s '\n\t' '  ') (fix: apt-get install $2)" >&2; failed=1; }
work=$(mktemp -d /tmp/gxd-bootstrap.XXXXXX)
chmod 0755 "$work"
trap 'rm -rf "$work"' EXIT

# A C++ compiler that builds and links a C++17 program (RocksDB needs C++17).
printf '#include <optional>\nint main(){std::optional<int> o{1};return *o-1;}\n' >"$work/t.cc"
if ! c++ -std=c++17 -o "$work/t" "$work/t.cc" 2>"$work/cc.log" || ! "$work/t"; then
  fail "no working C++17 compiler: $(head -c 300 "$work/cc.log")" build-essential
fi

# protoc compiles a proto that imports a well-known type.
cat >"$work/wkt.proto" <<'EOF'
syntax = "proto3";
package gxd.bootstrap;
import "google/protobuf/timestamp.proto";
import "google/protobuf/empty.proto";
message Probe { google.protobuf.Timestamp at = 1; }
EOF
if ! command -v protoc >/dev/null 2>&1; then
  fail "protoc not found" protobuf-compiler
elif ! protoc -I"$work" --descriptor_set_out="$work/wkt.pb" "$work/wkt.proto" 2>"$work/protoc.log"; then
  fail "protoc cannot import google/protobuf/timestamp.proto: $(head -c 300 "$work/protoc.log")" libprotobuf-dev
fi

# libclang, found the way bindgen (clang-sys) finds it: $LIBCLANG_PATH, `llvm-config
# --libdir`, then the usual system directories; a versioned libclang-N.so also counts.
libclang=""
dirs=()
[ -n "${LIBCLANG_PATH:-}" ] && dirs+=("$LIBCLANG_PATH")
command -v llvm-config >/dev/null 2>&1 && dirs+=("$(llvm-config --libdir)")
dirs+=(/usr/lib/llvm-*/lib /usr/lib/x86_64-linux-gnu /usr/lib/aarch64-linux-gnu /usr/lib64 /usr/lib /usr/local/lib)
for d in "${dirs[@]}"; do
  for f in "$d"/libclang.so "$d"/libclang-*.so "$d"/libclang.so.*; do
    [ -e "$f" ] && { libclang="$f"; break 2; }
  done
done
if [ -z "$libclang" ]; then
  fail "libclang.so not found where bindgen looks (LIBCLANG_PATH, llvm-config --libdir, /usr/lib/llvm-*/lib)" libclang-dev
elif ! ls /usr/lib/llvm-*/lib/clang/*/include/stddef.h >/dev/null 2>&1 \
  && ! ls /usr/lib/clang/*/include/stddef.h >/dev/null 2>&1; then
  fail "clang's builtin headers (stddef.h) are missing, bindgen cannot parse RocksDB's C API" libclang-dev
fi

# initdb runs as the unprivileged user and the server starts.
pgbin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
if [ -z "$pgbin" ] || [ ! -x "$pgbin/initdb" ]; then
  fail "PostgreSQL server binaries (initdb) not found under /usr/lib/postgresql/*/bin" postgresql
else
  as_pg=()
  if [ "$(id -u)" -eq 0 ]; then chown postgres: "$work"; as_pg=(runuser -u postgres --); fi
  if ! "${as_pg[@]}" "$pgbin/initdb" -D "$work/pg" -U gxd -A trust -N >"$work/initdb.log" 2>&1; then
    fail "initdb failed as $(id -un 2>/dev/null; [ ${#as_pg[@]} -gt 0 ] && echo '-> postgres'): $(tail -n 3 "$work/initdb.log")" postgresql
  elif ! "${as_pg[@]}" "$pgbin/postgres" -D "$work/pg" -C server_version >/dev/null 2>&1; then
    fail "postgres cannot read the new cluster" postgresql
  fi
fi

# node runs a program, and npm answers.
if ! node -e 'if (!process.versions.node) process.exit(1)' >/dev/null 2>&1; then
  fail "node cannot run a program" nodejs
elif ! npm --version >/dev/null 2>&1; then
  fail "npm not found" npm
fi

if ! python3 -c 'import socket' >/dev/null 2>&1; then fail "python3 cannot run" python3; fi

if [ "$failed" -ne 0 ]; then
  echo "bootstrap: some checks failed; see above" >&2
  exit 1
fi
echo "bootstrap: ok (c++ $(c++ -dumpversion), $(protoc --version), $(basename "$libclang"), postgres $("$pgbin/postgres" --version | awk '{print $3}'), node $(node --version), npm $(npm --version))" >&2
