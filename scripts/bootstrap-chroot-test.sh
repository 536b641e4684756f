#!/usr/bin/env bash
# Tests scripts/bootstrap.sh where nothing was installed by hand: in a minimal Debian 12
# (bookworm) root made by mmdebstrap. A fresh Debian 12 machine once failed to build gxd
# because a package had only ever been installed by hand on the developers' machines; this
# is the check that the bootstrap alone brings a bare Debian to a machine that can build.
#
#   bash scripts/bootstrap-chroot-test.sh        (as root; re-execs itself under sudo if not)
#
# What it does, in order (each step is timed and listed in the summary at the end):
#   1. installs the host tools it needs from Debian's packages, by name, when missing
#      (mmdebstrap; as root nothing else: no uidmap/fakechroot);
#   2. makes a minimal bookworm root (mmdebstrap --variant=minbase --mode=root) with the
#      host's own Debian sources (/etc/apt/sources.list.d/debian.sources when it is a
#      bookworm one, so bookworm-updates and bookworm-security come along exactly as the
#      host has them; otherwise deb.debian.org with those three suites);
#   3. copies scripts/bootstrap.sh into it and runs it there as root, so apt installs
#      everything from scratch; asserts exit 0 and its `bootstrap: ok` line, and that npm
#      came from Debian's own npm package (bookworm's nodejs 18 does not provide npm);
#   4. runs it a second time in the same root: it must pass again, install nothing, and be
#      quick (both durations are printed);
#   5. negative check: removes libprotobuf-dev and runs the bootstrap with
#      GXD_BOOTSTRAP_SKIP_INSTALL=1: it must FAIL and name libprotobuf-dev, which proves the
#      check can fail; then runs it normally once more: it must put the package back by name
#      and pass;
#   6. cleans up (the root is removed unless GXD_KEEP_CHROOT=1), prints a summary, and exits
#      non-zero if any step failed.
#
# How the root is entered: every command runs through `unshare --mount --pid --fork`, which
# mounts /proc, /sys, /dev/pts and /dev/shm inside a private mount namespace and then
# chroots. Those mounts live only in that namespace: they vanish when the command ends, even
# if this script is killed, and never show up on (or propagate to) the host. Nothing from the
# host is bind-mounted (the root has its own /dev nodes from mmdebstrap), so removing the
# root can never reach into the host's /dev. The EXIT trap still checks for mounts under the
# root before removing it, and refuses to remove it if one is left. The new PID namespace also
# means no process started inside (say, a postgres a package script started) outlives the
# command. A policy-rc.d that answers 101 keeps package scripts from starting services, and
# the host's /etc/resolv.conf is copied in for DNS. The bootstrap runs with a clean
# environment (env -i), so nothing from the host's environment (LIBCLANG_PATH, PATH to a
# toolchain, ...) helps it.
#
# Cache: mmdebstrap's output is kept as a tarball under $GXD_CHROOT_CACHE (default
# /var/cache/gxd/chroot), named by the UTC date and a hash of the sources used
# (bookworm-minbase-YYYYMMDD-HASH.tar), and reused by reruns on the same day, so a rerun
# skips the ~1 minute build. Every run still unpacks a fresh, untouched root from it; older
# tarballs are deleted when a new one is made. The cached tarball is mmdebstrap's pristine
# output: nothing the bootstrap installs ever goes back into it.
#
# Env knobs:
#   GXD_KEEP_CHROOT=1      keep the work directory (root and logs) and print its path
#   GXD_CHROOT_REBUILD=1   ignore a cached tarball and build the root anew
#   GXD_CHROOT_CACHE=DIR   where the tarballs are cached (default /var/cache/gxd/chroot)
set -euo pipefail

self=$(readlink -f "${BASH_SOURCE[0]}")
here=$(dirname "$self")

# The environment the bootstrap gets inside the root: that of a fresh root login, no more.
clean_env=(PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root
  LANG=C.UTF-8 TERM=dumb DEBIAN_FRONTEND=noninteractive)

# ---- inner mode: runs inside the private mount + PID namespace, mounts, then chroots ------
# `bash bootstrap-chroot-test.sh --enter-root ROOT [VAR=value ...] CMD [ARG ...]`; only this
# script calls it (through unshare, see in_root below).
if [ "${1:-}" = --enter-root ]; then
  root=$2
  shift 2
  mount -t proc proc "$root/proc"
  mount -t sysfs sysfs "$root/sys"
  # A devpts instance of its own, with the root's /dev/ptmx pointing at it.
  mount -t devpts -o newinstance,ptmxmode=0666,mode=0620 devpts "$root/dev/pts"
  mount --bind "$root/dev/pts/ptmx" "$root/dev/ptmx"
  # POSIX shared memory (initdb probes it).
  mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs "$root/dev/shm"
  exec chroot "$root" /usr/bin/env -i "${clean_env[@]}" "$@"
fi

# ---- root, or sudo --------------------------------------------------------------------------
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then
    echo "bootstrap-chroot-test: not root; re-running under sudo" >&2
    exec sudo --preserve-env=GXD_KEEP_CHROOT,GXD_CHROOT_REBUILD,GXD_CHROOT_CACHE \
      bash "$self" "$@"
  fi
  echo "bootstrap-chroot-test: must run as root (mmdebstrap --mode=root, mount, chroot), and sudo is not available" >&2
  exit 1
fi
if ! command -v dpkg-query >/dev/null 2>&1 || ! command -v apt-get >/dev/null 2>&1; then
  echo "bootstrap-chroot-test: needs a Debian/Ubuntu host (dpkg, apt-get) to make a Debian root" >&2
  exit 1
fi

say() { echo "bootstrap-chroot-test: $*" >&2; }
now() { echo "$EPOCHREALTIME"; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }

# Results, one line per step, printed by the EXIT trap whatever happens.
results=()
failures=0
record() { # record NAME PASS|FAIL SECONDS [NOTE]
  results+=("$(printf '%-34s %-4s %7ss  %s' "$1" "$2" "$3" "${4:-}")")
  [ "$2" = PASS ] || failures=$((failures + 1))
}

work=""
root=""
cleanup() {
  local rc=$? m left=0
  set +e
  if [ -n "$root" ] && [ "$root" != / ] && [ -d "$root" ]; then
    # Mounts are made in a private namespace and should never be here; unmount any anyway,
    # deepest first, and never remove a root that still has a mount under it.
    while read -r m; do
      umount -l "$m" 2>/dev/null || true
    done < <(awk -v r="$root" '$2 == r || index($2, r "/") == 1 { print $2 }' /proc/self/mounts | sort -r)
    if awk -v r="$root" '$2 == r || index($2, r "/") == 1 { found = 1 } END { exit !found }' /proc/self/mounts; then
      say "WARNING: mounts remain under $root; not removing it"
      left=1
    fi
  fi
  if [ -n "$work" ] && [ -d "$work" ]; then
    if [ "${GXD_KEEP_CHROOT:-0}" = 1 ] || [ "$left" -ne 0 ]; then
      say "kept $work (root: $root, logs: $work/*.log)"
    else
      rm -rf --one-file-system "$work"
    fi
  fi
  echo
  echo "bootstrap-chroot-test: summary"
  local r
  for r in "${results[@]}"; do echo "  $r"; done
  if [ "$rc" -eq 0 ] && [ "$failures" -eq 0 ]; then
    echo "bootstrap-chroot-test: ok"
  else
    [ "$rc" -ne 0 ] || rc=1
    echo "bootstrap-chroot-test: FAILED (exit $rc; $failures step(s) failed$([ "$rc" -ge 130 ] && echo ', interrupted'))"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---- 1. host tools ---------------------------------------------------------------------------
# By name, like the bootstrap: mmdebstrap, the archive keyring it verifies bookworm with, and
# the essentials this script calls (unshare/mount/chroot/tar), which a Debian host has anyway.
t0=$(now)
host_pkgs=(mmdebstrap debian-archive-keyring util-linux mount coreutils tar)
installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }
missing=()
for p in "${host_pkgs[@]}"; do installed "$p" || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  say "installing host tools: ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${host_pkgs[@]}" >/dev/null
fi
record "host tools (${host_pkgs[0]}, ...)" PASS "$(secs "$t0" "$(now)")" \
  "$([ ${#missing[@]} -gt 0 ] && echo "installed ${missing[*]}" || echo "already there")"

# ---- 2. the minimal bookworm root ------------------------------------------------------------
work=$(mktemp -d /var/tmp/gxd-chroot-test.XXXXXX)
root="$work/root"
mkdir -m 0755 "$root"

# The host's Debian sources when they are bookworm's (they carry the host's mirror and its
# bookworm-updates/bookworm-security lines); otherwise deb.debian.org with the same suites.
sources="$work/debian.sources"
host_sources=/etc/apt/sources.list.d/debian.sources
if [ -r "$host_sources" ] && grep -Eq '^Suites:.*\bbookworm\b' "$host_sources"; then
  cp "$host_sources" "$sources"
  sources_from=$host_sources
else
  cat >"$sources" <<'EOF'
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
  sources_from="deb.debian.org (bookworm, bookworm-updates, bookworm-security)"
fi
say "Debian sources for the root: $sources_from"

cache=${GXD_CHROOT_CACHE:-/var/cache/gxd/chroot}
mkdir -p "$cache"
key="bookworm-minbase-$(date -u +%Y%m%d)-$(sha256sum "$sources" | cut -c1-12)"
tarball="$cache/$key.tar"

t0=$(now)
if [ -s "$tarball" ] && [ "${GXD_CHROOT_REBUILD:-0}" != 1 ]; then
  how="cached $tarball"
  say "reusing $tarball (GXD_CHROOT_REBUILD=1 builds anew)"
else
  how="mmdebstrap, cached as $tarball"
  say "building a minimal bookworm root with mmdebstrap (about a minute)"
  # Into a temporary name, then renamed: a build that is interrupted leaves no tarball that a
  # later run would take for a good one.
  tmp_tar="$cache/.$key.$$.tar"
  if ! mmdebstrap --mode=root --variant=minbase --quiet bookworm "$tmp_tar" "$sources" \
    >"$work/mmdebstrap.log" 2>&1; then
    tail -n 30 "$work/mmdebstrap.log" >&2
    rm -f "$tmp_tar"
    record "minimal bookworm root" FAIL "$(secs "$t0" "$(now)")" "mmdebstrap failed"
    exit 1
  fi
  mv -f "$tmp_tar" "$tarball"
  # Older days' (or other sources') tarballs are of no further use.
  find "$cache" -maxdepth 1 -name 'bookworm-minbase-*.tar' ! -name "$key.tar" -delete
fi
tar -C "$root" --numeric-owner -xpf "$tarball"
t_root=$(secs "$t0" "$(now)")
record "minimal bookworm root" PASS "$t_root" "$how; $(du -sh "$root" | cut -f1) unpacked"

# Services must not start inside the root (postgresql's postinst would try to start a
# cluster): invoke-rc.d asks policy-rc.d, and 101 means "action not allowed".
printf '#!/bin/sh\n# gxd bootstrap-chroot-test: no services in this chroot\nexit 101\n' \
  >"$root/usr/sbin/policy-rc.d"
chmod 0755 "$root/usr/sbin/policy-rc.d"
# DNS, as the host resolves.
rm -f "$root/etc/resolv.conf"
cp -L /etc/resolv.conf "$root/etc/resolv.conf"
# The script under test, as it is in this work tree.
install -m 0755 "$here/bootstrap.sh" "$root/root/bootstrap.sh"

# in_root [VAR=value ...] CMD [ARG ...]: runs a command inside the root (see the header).
in_root() {
  unshare --mount --pid --fork --propagation private -- bash "$self" --enter-root "$root" "$@" \
    </dev/null
}

# run_bootstrap NAME [VAR=value ...]: runs the bootstrap in the root, its output shown and kept
# in $work/NAME.log; sets rc and took (seconds).
run_bootstrap() {
  local name=$1 t
  shift
  say "---- $name: bash /root/bootstrap.sh${*:+ (with $*)}"
  t=$(now)
  set +e
  in_root "$@" bash /root/bootstrap.sh 2>&1 | tee "$work/$name.log"
  rc=${PIPESTATUS[0]}
  set -e
  took=$(secs "$t" "$(now)")
  say "---- $name: exit $rc after ${took}s"
}

# ---- 3. first bootstrap: everything from scratch ------------------------------------------
run_bootstrap first
t_first=$took
if [ "$rc" -eq 0 ] && grep -q '^bootstrap: ok' "$work/first.log"; then
  record "first bootstrap (from scratch)" PASS "$t_first" "$(grep '^bootstrap: ok' "$work/first.log")"
else
  record "first bootstrap (from scratch)" FAIL "$t_first" "exit $rc, no 'bootstrap: ok' line"
  exit 1
fi
# bookworm's nodejs (18) does not provide npm: the bootstrap must have installed Debian's npm.
t0=$(now)
# (dpkg-query's ${Field} formats are dpkg's, not the shell's.)
node_pkg=$(in_root dpkg-query -W -f="nodejs \${Version} (Provides: \${Provides})" nodejs 2>&1 || true)
if in_root dpkg-query -W -f="\${Status}" npm 2>/dev/null | grep -q "install ok installed"; then
  record "npm from Debian's npm package" PASS "$(secs "$t0" "$(now)")" \
    "$node_pkg; npm $(in_root dpkg-query -W -f="\${Version}" npm)"
else
  record "npm from Debian's npm package" FAIL "$(secs "$t0" "$(now)")" "$node_pkg; npm package not installed"
fi

# ---- 4. second bootstrap: idempotent and quick -------------------------------------------
run_bootstrap second
t_second=$took
if [ "$rc" -ne 0 ] || ! grep -q '^bootstrap: ok' "$work/second.log"; then
  record "second bootstrap (idempotent)" FAIL "$t_second" "exit $rc, no 'bootstrap: ok' line"
elif grep -q '^bootstrap: installing' "$work/second.log"; then
  record "second bootstrap (idempotent)" FAIL "$t_second" "installed again: $(grep '^bootstrap: installing' "$work/second.log" | tr '\n' ' ')"
else
  record "second bootstrap (idempotent)" PASS "$t_second" "ok, installed nothing"
fi

# ---- 5. negative check: the check can fail, and names the package --------------------------
t0=$(now)
if ! in_root apt-get remove -y -qq libprotobuf-dev >"$work/remove.log" 2>&1; then
  cat "$work/remove.log" >&2
  record "remove libprotobuf-dev" FAIL "$(secs "$t0" "$(now)")" "apt-get remove failed"
  exit 1
fi
record "remove libprotobuf-dev" PASS "$(secs "$t0" "$(now)")" \
  "removed: $(grep -Eo '^Removing [^ ]+' "$work/remove.log" | cut -d' ' -f2 | tr '\n' ' ')"

run_bootstrap negative GXD_BOOTSTRAP_SKIP_INSTALL=1
t_neg=$took
neg_line=$(grep -m1 'FAILED.*libprotobuf-dev' "$work/negative.log" || true)
if [ "$rc" -ne 0 ] && [ -n "$neg_line" ] && ! grep -q '^bootstrap: ok' "$work/negative.log"; then
  record "negative check (must fail)" PASS "$t_neg" "exit $rc: $neg_line"
else
  record "negative check (must fail)" FAIL "$t_neg" "exit $rc; expected non-zero and a FAILED line naming libprotobuf-dev"
fi

# And a normal run puts the package back by name (the check was on the package list, not on
# what commands happen to be on PATH) and passes.
run_bootstrap repair
t_repair=$took
if [ "$rc" -eq 0 ] && grep -q '^bootstrap: ok' "$work/repair.log" \
  && grep -q '^bootstrap: installing.*libprotobuf-dev' "$work/repair.log"; then
  record "repair bootstrap (reinstalls it)" PASS "$t_repair" "$(grep -m1 '^bootstrap: installing' "$work/repair.log")"
else
  record "repair bootstrap (reinstalls it)" FAIL "$t_repair" "exit $rc; expected it to install libprotobuf-dev and pass"
fi

# ---- 6. the EXIT trap cleans up and prints the summary --------------------------------------
say "times: root ${t_root}s, first bootstrap ${t_first}s, second bootstrap ${t_second}s"
