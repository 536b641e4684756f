#!/usr/bin/env bash
# Builds gxd's .deb and exercises it in a minimal Debian 12 (bookworm) root, the way an
# operator's machine would see it: install, run the installed binary, upgrade over a
# non-empty /var/lib/gxd, remove, purge. Also checks the installed systemd unit
# (`systemd-analyze verify`, and `systemd-analyze security` against the limit 2.0).
#
#   scripts/package-test.sh             the .deb from the dev-profile binary the test run
#                                       built (cargo build --workspace: a no-op when warm)
#   scripts/package-test.sh --release   a real package: cargo deb builds --release
#                                       (~15+ min cold for RocksDB on 2 cores)
#
# As root (mmdebstrap --mode=root, chroot); re-execs itself under sudo if not.
#
# Steps (each timed, listed in the summary at the end; non-zero exit if any failed):
#   1. cargo-deb: used if installed, else `cargo install --locked cargo-deb` (~2-3 min once);
#   2. the .deb (version V-1), and a second one of the same build as V-2 for the upgrade;
#   3. a minimal bookworm root (mmdebstrap --variant=minbase; it has adduser, the one
#      dependency beyond libc), the very tarball scripts/bootstrap-chroot-test.sh caches under
#      $GXD_CHROOT_CACHE (default /var/cache/gxd/chroot, bookworm-minbase-YYYYMMDD-HASH.tar;
#      made once a day, ~1-4 min), unpacked fresh each run;
#   4. dpkg -i V-1: /usr/bin/gxd, the gxd system user, /var/lib/gxd (gxd:gxd 0750),
#      /etc/gxd/gxd.toml a conffile (root:gxd 0640), the unit in /usr/lib/systemd/system;
#   5. the installed gxd, as the gxd user: `gxd version`, `gxd config check
#      /etc/gxd/gxd.toml` (the shipped config), and its shared libraries all resolve;
#   6. the unit: systemd-analyze verify, and systemd-analyze security --offline (<= 2.0);
#   7. state in /var/lib/gxd (an outbox and checkpoint-log stand-in owned by gxd) and an
#      operator's edit of /etc/gxd/gxd.toml; dpkg -i V-2 (an upgrade: preinst/postinst with
#      the old version): both kept byte for byte (sha256 of the tree), without a conffile
#      prompt (stdin is /dev/null), owner and mode kept;
#   8. dpkg -r: the binary is gone; state, config and user kept;
#   9. dpkg -P: /var/lib/gxd and /etc/gxd/gxd.toml are gone.
#
# Env knobs:
#   GXD_PKG_KEEP=1          keep the work directory (root, .debs, logs) and print its path
#   GXD_CHROOT_CACHE=DIR    where the root tarball is cached (default /var/cache/gxd/chroot)
#   GXD_CHROOT_REBUILD=1    build the root tarball anew
#   CARGO_TARGET_DIR        the target dir whose binary is packaged (default
#                           /var/cache/gxd/target, as .ci/run)
# dpkg-query's ${Field} formats are dpkg's, not the shell's:
# shellcheck disable=SC2016
set -euo pipefail

self=$(readlink -f "${BASH_SOURCE[0]}")
here=$(dirname "$self")
repo=$(dirname "$here")

# ---- inner mode: in a private mount + PID namespace, mount /proc, then chroot -------------
if [ "${1:-}" = --enter-root ]; then
  root=$2
  shift 2
  mount -t proc proc "$root/proc"
  exec chroot "$root" /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    HOME=/root LANG=C.UTF-8 DEBIAN_FRONTEND=noninteractive "$@"
fi

if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then
    echo "package-test: not root; re-running under sudo" >&2
    exec sudo --preserve-env=GXD_PKG_KEEP,GXD_CHROOT_CACHE,GXD_CHROOT_REBUILD,CARGO_TARGET_DIR,PATH \
      bash "$self" "$@"
  fi
  echo "package-test: must run as root (mmdebstrap --mode=root, chroot)" >&2
  exit 1
fi

mode=dev
case "${1:-}" in
  "") ;;
  --release) mode=release ;;
  *) echo "usage: $0 [--release]" >&2; exit 2 ;;
esac

say() { echo "package-test: $*" >&2; }
now() { echo "$EPOCHREALTIME"; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }
started=$(now)

results=()
failures=0
record() { # record NAME PASS|FAIL SECONDS [NOTE]
  results+=("$(printf '%-40s %-4s %7ss  %s' "$1" "$2" "$3" "${4:-}")")
  [ "$2" = PASS ] || failures=$((failures + 1))
}
# check NAME T0 CONDITION-COMMAND... : records PASS/FAIL by the command's status.
check() {
  local name=$1 t0=$2 note=$3
  shift 3
  if "$@"; then record "$name" PASS "$(secs "$t0" "$(now)")" "$note"; else
    record "$name" FAIL "$(secs "$t0" "$(now)")" "$note"; fi
}

work=""
root=""
cleanup() {
  local rc=$? left=0
  set +e
  if [ -n "$root" ] && [ -d "$root" ]; then
    while read -r m; do umount -l "$m" 2>/dev/null; done < <(awk -v r="$root" \
      '$2 == r || index($2, r "/") == 1 { print $2 }' /proc/self/mounts | sort -r)
    if awk -v r="$root" '$2 == r || index($2, r "/") == 1 { f = 1 } END { exit !f }' /proc/self/mounts; then
      say "WARNING: mounts remain under $root; not removing it"
      left=1
    fi
  fi
  if [ -n "$work" ] && [ -d "$work" ]; then
    if [ "${GXD_PKG_KEEP:-0}" = 1 ] || [ "$left" -ne 0 ]; then
      say "kept $work"
    else
      rm -rf --one-file-system "$work"
    fi
  fi
  echo
  echo "package-test: summary ($mode; $(secs "$started" "$(now)")s in all)"
  local r
  for r in "${results[@]}"; do echo "  $r"; done
  if [ "$rc" -eq 0 ] && [ "$failures" -eq 0 ]; then
    echo "package-test: ok"
  else
    [ "$rc" -ne 0 ] || rc=1
    echo "package-test: FAILED (exit $rc; $failures step(s) failed)"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

work=$(mktemp -d /var/tmp/gxd-package-test.XXXXXX)
root="$work/root"

# in_root CMD [ARG ...]: runs a command inside the root (private mount and PID namespace:
# /proc vanishes with the command, and no process it started outlives it).
in_root() {
  unshare --mount --pid --fork --propagation private -- bash "$self" --enter-root "$root" "$@" \
    </dev/null
}

# ---- 1. cargo-deb ---------------------------------------------------------------------------
t0=$(now)
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/gxd/target}"
if ! cargo deb --version >/dev/null 2>&1; then
  say "installing cargo-deb (cargo install --locked cargo-deb, a few minutes once)"
  cargo install --locked cargo-deb >"$work/cargo-install.log" 2>&1 || {
    tail -n 20 "$work/cargo-install.log" >&2
    record "cargo-deb" FAIL "$(secs "$t0" "$(now)")" "cargo install failed"
    exit 1
  }
  how="installed now"
else
  how="already installed"
fi
record "cargo-deb" PASS "$(secs "$t0" "$(now)")" "$(cargo deb --version 2>&1 | head -n1), $how"

# ---- 2. the .debs ---------------------------------------------------------------------------
t0=$(now)
cd "$repo"
debs="$work/debs"
mkdir -p "$debs"
if [ "$mode" = release ]; then
  # A real package: cargo deb runs `cargo build --release` itself. --workspace is not a
  # cargo-deb flag; its build of -p gxd resolves features like the workspace here (gxd
  # enables no optional feature), and the release dir is apart from the dev one.
  cargo deb -p gxd --locked --output "$debs/gxd-1.deb" >"$work/deb1.log" 2>&1 \
    || { tail -n 30 "$work/deb1.log" >&2; record ".deb (release)" FAIL "$(secs "$t0" "$(now)")"; exit 1; }
  profile_args=(--profile release)
else
  # The dev-profile binary of the test run (a no-op build when it is warm); cargo-deb 3
  # warns that it means dev profiles for development only, which this is. --fast: gzip-like
  # compression, the package is thrown away after the test.
  cargo build --workspace --locked >"$work/build.log" 2>&1 \
    || { tail -n 30 "$work/build.log" >&2; record ".deb (dev)" FAIL "$(secs "$t0" "$(now)")" "cargo build failed"; exit 1; }
  profile_args=(--profile dev --fast)
  cargo deb -p gxd --no-build "${profile_args[@]}" --output "$debs/gxd-1.deb" >"$work/deb1.log" 2>&1 \
    || { cat "$work/deb1.log" >&2; record ".deb (dev)" FAIL "$(secs "$t0" "$(now)")"; exit 1; }
fi
# The same package as revision 2 (an upgrade in dpkg's eyes): repacked with dpkg-deb, the
# Version field the one change, rather than a second cargo-deb run (strip + compress).
v1=$(dpkg-deb -f "$debs/gxd-1.deb" Version)
v2="${v1%-*}-2"
dpkg-deb -R "$debs/gxd-1.deb" "$work/repack"
sed -i "s/^Version: .*/Version: $v2/" "$work/repack/DEBIAN/control"
dpkg-deb -Zgzip -b "$work/repack" "$debs/gxd-2.deb" >/dev/null
rm -rf "$work/repack"
size=$(stat -c %s "$debs/gxd-1.deb")
installed_kb=$(dpkg-deb -f "$debs/gxd-1.deb" Installed-Size)
record ".deb ($mode)" PASS "$(secs "$t0" "$(now)")" \
  "gxd $v1 and $v2: $((size / 1024 / 1024)) MiB ($size bytes), installed $((installed_kb / 1024)) MiB; Depends: $(dpkg-deb -f "$debs/gxd-1.deb" Depends)"
dpkg-deb --contents "$debs/gxd-1.deb" >"$work/contents.txt"

# ---- 3. the minimal root --------------------------------------------------------------------
t0=$(now)
for p in mmdebstrap debian-archive-keyring; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || {
    say "installing $p"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$p" >/dev/null
  }
done
sources="$work/debian.sources"
host_sources=/etc/apt/sources.list.d/debian.sources
if [ -r "$host_sources" ] && grep -Eq '^Suites:.*\bbookworm\b' "$host_sources"; then
  cp "$host_sources" "$sources"
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
fi
cache=${GXD_CHROOT_CACHE:-/var/cache/gxd/chroot}
mkdir -p "$cache"
key="bookworm-minbase-$(date -u +%Y%m%d)-$(sha256sum "$sources" | cut -c1-12)"
tarball="$cache/$key.tar"
if [ -s "$tarball" ] && [ "${GXD_CHROOT_REBUILD:-0}" != 1 ]; then
  how="cached $tarball"
else
  say "building a minimal bookworm root with mmdebstrap (about a minute)"
  tmp_tar="$cache/.$key.$$.tar"
  if ! mmdebstrap --mode=root --variant=minbase --quiet bookworm "$tmp_tar" "$sources" \
    >"$work/mmdebstrap.log" 2>&1; then
    tail -n 30 "$work/mmdebstrap.log" >&2
    rm -f "$tmp_tar"
    record "minimal bookworm root" FAIL "$(secs "$t0" "$(now)")" "mmdebstrap failed"
    exit 1
  fi
  mv -f "$tmp_tar" "$tarball"
  find "$cache" -maxdepth 1 -name 'bookworm-minbase-*.tar' ! -name "$key.tar" -delete
  how="mmdebstrap, cached as $tarball"
fi
mkdir -m 0755 "$root"
tar -C "$root" --numeric-owner -xpf "$tarball"
# No service starts in the root (there is no systemd in it anyway).
printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"
chmod 0755 "$root/usr/sbin/policy-rc.d"
cp "$debs"/gxd-*.deb "$root/tmp/"
record "minimal bookworm root" PASS "$(secs "$t0" "$(now)")" "$how; $(du -sh "$root" | cut -f1) unpacked"

# ---- 4. install -----------------------------------------------------------------------------
t0=$(now)
if ! in_root dpkg -i /tmp/gxd-1.deb >"$work/install.log" 2>&1; then
  cat "$work/install.log" >&2
  record "install $v1" FAIL "$(secs "$t0" "$(now)")" "dpkg -i failed"
  exit 1
fi
stat_of() { in_root stat -c '%U:%G %a' "$1"; }
problems=()
[ -x "$root/usr/bin/gxd" ] || problems+=("no /usr/bin/gxd")
in_root getent passwd gxd >/dev/null || problems+=("no gxd user")
[ "$(stat_of /var/lib/gxd)" = "gxd:gxd 750" ] || problems+=("/var/lib/gxd is $(stat_of /var/lib/gxd)")
[ "$(stat_of /etc/gxd/gxd.toml)" = "root:gxd 640" ] || problems+=("/etc/gxd/gxd.toml is $(stat_of /etc/gxd/gxd.toml)")
in_root dpkg-query -W -f='${Conffiles}\n' gxd | grep -q '^ /etc/gxd/gxd.toml ' || problems+=("gxd.toml is not a conffile")
[ -f "$root/usr/lib/systemd/system/gxd.service" ] || problems+=("no /usr/lib/systemd/system/gxd.service")
cmp -s "$root/etc/gxd/gxd.toml" "$repo/packaging/gxd.example.toml" || problems+=("gxd.toml is not the example config")
check "install $v1" "$t0" "${problems[*]:-user gxd, /var/lib/gxd gxd:gxd 750, conffile /etc/gxd/gxd.toml root:gxd 640, unit}" \
  test ${#problems[@]} -eq 0

# ---- 5. the installed gxd -------------------------------------------------------------------
t0=$(now)
out=$(in_root runuser -u gxd -- /usr/bin/gxd version 2>&1) && ok=1 || ok=0
say "gxd version: $out"
check "gxd version (as gxd)" "$t0" "$(echo "$out" | head -n1)" test "$ok" = 1
t0=$(now)
out=$(in_root runuser -u gxd -- /usr/bin/gxd config check /etc/gxd/gxd.toml 2>&1) && ok=1 || ok=0
say "gxd config check: $out"
check "gxd config check /etc/gxd/gxd.toml" "$t0" "$(echo "$out" | tail -n1)" test "$ok" = 1
t0=$(now)
unresolved=$(in_root ldd /usr/bin/gxd | grep 'not found' || true)
check "shared libraries resolve" "$t0" "$(in_root ldd /usr/bin/gxd | awk '{print $1}' | tr '\n' ' ')" test -z "$unresolved"

# ---- 6. the unit ----------------------------------------------------------------------------
t0=$(now)
# The minimal root has no systemd: verify against the host's systemd units (the targets
# the unit orders itself against), copied into a throwaway copy of the root's unit dir.
vroot="$work/verify-root"
mkdir -p "$vroot/usr/lib/systemd" "$vroot/usr/bin" "$vroot/etc"
cp -a /usr/lib/systemd/system "$vroot/usr/lib/systemd/"
cp "$root/usr/lib/systemd/system/gxd.service" "$vroot/usr/lib/systemd/system/gxd.service"
ln "$root/usr/bin/gxd" "$vroot/usr/bin/gxd"
cp -a "$root/etc/passwd" "$root/etc/group" "$vroot/etc/"
if out=$(systemd-analyze verify --root="$vroot" /usr/lib/systemd/system/gxd.service 2>&1) && [ -z "$out" ]; then
  record "systemd-analyze verify" PASS "$(secs "$t0" "$(now)")" "clean ($(systemd-analyze --version | head -n1))"
else
  say "systemd-analyze verify: $out"
  record "systemd-analyze verify" FAIL "$(secs "$t0" "$(now)")" "$(echo "$out" | head -n1)"
fi
# The check can fail: a unit with a misspelt directive must not verify clean.
t0=$(now)
sed 's/^WatchdogSec=/WatchdogSecs=/' "$root/usr/lib/systemd/system/gxd.service" \
  >"$vroot/usr/lib/systemd/system/gxd.service"
bad=$(systemd-analyze verify --root="$vroot" /usr/lib/systemd/system/gxd.service 2>&1 || true)
check "systemd-analyze verify (negative)" "$t0" "a misspelt copy: $(echo "$bad" | head -n1)" test -n "$bad"
rm -rf "$vroot"
t0=$(now)
score=$(systemd-analyze security --offline=yes --root="$root" gxd.service 2>/dev/null \
  | sed -n 's/.*Overall exposure level for gxd.service: \([0-9.]*\).*/\1/p')
check "systemd-analyze security <= 2.0" "$t0" "exposure ${score:-?}" \
  awk -v s="${score:-99}" 'BEGIN { exit !(s <= 2.0) }'

# ---- 7. upgrade over state ------------------------------------------------------------------
t0=$(now)
# The outbox and checkpoint log live in /var/lib/gxd/rocksdb; stand-ins owned by gxd, as the
# daemon leaves them (dpkg never owned them, and no maintainer script may touch them).
in_root runuser -u gxd -- sh -c 'umask 077; mkdir -p /var/lib/gxd/rocksdb &&
  head -c 1048576 /dev/urandom >/var/lib/gxd/rocksdb/000012.sst &&
  head -c 65536 /dev/urandom >/var/lib/gxd/rocksdb/000013.log &&
  echo MANIFEST-000011 >/var/lib/gxd/rocksdb/CURRENT'
sed -i 's/^listen = "127.0.0.1:8080"/listen = "127.0.0.1:9180"  # operator edit/' "$root/etc/gxd/gxd.toml"
tree_sum() { in_root sh -c 'cd /var/lib/gxd && find . -type f | sort | xargs sha256sum; find . -printf "%p %u:%g %m\n" | sort' | sha256sum | cut -c1-16; }
before=$(tree_sum)
conf_before=$(sha256sum <"$root/etc/gxd/gxd.toml")
if ! in_root dpkg -i /tmp/gxd-2.deb >"$work/upgrade.log" 2>&1; then
  cat "$work/upgrade.log" >&2
  record "upgrade $v1 -> $v2" FAIL "$(secs "$t0" "$(now)")" "dpkg -i failed"
  exit 1
fi
after=$(tree_sum)
problems=()
[ "$(in_root dpkg-query -W -f='${Version}' gxd)" = "$v2" ] || problems+=("version not $v2")
[ "$before" = "$after" ] || problems+=("/var/lib/gxd changed ($before -> $after)")
[ "$(sha256sum <"$root/etc/gxd/gxd.toml")" = "$conf_before" ] || problems+=("gxd.toml changed")
[ "$(stat_of /etc/gxd/gxd.toml)" = "root:gxd 640" ] || problems+=("gxd.toml now $(stat_of /etc/gxd/gxd.toml)")
[ "$(stat_of /var/lib/gxd)" = "gxd:gxd 750" ] || problems+=("/var/lib/gxd now $(stat_of /var/lib/gxd)")
out=$(in_root runuser -u gxd -- /usr/bin/gxd config check /etc/gxd/gxd.toml 2>&1) || problems+=("config check after upgrade: $out")
check "upgrade $v1 -> $v2 keeps state" "$t0" \
  "${problems[*]:-/var/lib/gxd tree $after unchanged ($(du -sh "$root/var/lib/gxd" | cut -f1)), edited conffile kept, no prompt}" \
  test ${#problems[@]} -eq 0

# ---- 8. remove ------------------------------------------------------------------------------
t0=$(now)
in_root dpkg -r gxd >"$work/remove.log" 2>&1 || { cat "$work/remove.log" >&2; }
problems=()
[ ! -e "$root/usr/bin/gxd" ] || problems+=("/usr/bin/gxd still there")
[ "$(tree_sum)" = "$before" ] || problems+=("/var/lib/gxd changed")
[ "$(sha256sum <"$root/etc/gxd/gxd.toml" 2>/dev/null)" = "$conf_before" ] || problems+=("gxd.toml changed or gone")
in_root getent passwd gxd >/dev/null || problems+=("gxd user gone")
st=$(in_root dpkg-query -W -f='${db:Status-Status}' gxd 2>/dev/null || true)
[ "$st" = config-files ] || problems+=("status $st")
check "remove keeps state and config" "$t0" "${problems[*]:-binary gone; /var/lib/gxd, gxd.toml, user kept; status $st}" \
  test ${#problems[@]} -eq 0

# ---- 9. purge -------------------------------------------------------------------------------
t0=$(now)
in_root dpkg -P gxd >"$work/purge.log" 2>&1 || { cat "$work/purge.log" >&2; }
problems=()
[ ! -e "$root/var/lib/gxd" ] || problems+=("/var/lib/gxd still there")
[ ! -e "$root/etc/gxd/gxd.toml" ] || problems+=("/etc/gxd/gxd.toml still there")
st=$(in_root dpkg-query -W -f='${db:Status-Status}' gxd 2>/dev/null || true)
[ "$st" = not-installed ] || [ -z "$st" ] || problems+=("status $st")
check "purge deletes state and config" "$t0" "${problems[*]:-/var/lib/gxd and /etc/gxd/gxd.toml gone}" \
  test ${#problems[@]} -eq 0
