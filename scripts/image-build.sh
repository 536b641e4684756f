#!/usr/bin/env bash
# Builds gxd's container image without a registry or a Docker engine, from Debian's
# packages, then runs it and probes it.
#
#   scripts/image-build.sh              image of the dev-profile binary (cargo build
#                                       --workspace: a no-op when the test run built it)
#   scripts/image-build.sh --release    image of the release binary (cargo build --release
#                                       --workspace; ~15+ min cold for RocksDB on 2 cores)
#
# The image is distroless-style: /usr/bin/gxd (stripped), the shared libraries it links
# (libc6, libgcc-s1, libstdc++6, as the host's Debian packages ship them), busybox from
# Debian's busybox-static (for the health check's HTTP GET and the Kubernetes init
# container that copies secrets with mode 0600), /etc/passwd with the gxd user (uid 10001),
# /var/lib/gxd (a volume, owned by gxd), /tmp. No shell or package manager beyond busybox.
# Config: environment (GXD_<SECTION>__<FIELD>) or a mounted /etc/gxd/gxd.toml.
#
# buildah assembles it (from scratch, vfs storage under a private directory that is removed
# afterwards), sets user, entrypoint, volume, port and the health check on /livez, and writes:
#   $GXD_IMAGE_OUT/gxd-VERSION.oci.tar     OCI archive (podman load, skopeo copy to a registry)
#   $GXD_IMAGE_OUT/gxd-VERSION.docker.tar  docker-archive (docker load); carries HEALTHCHECK,
#                                          which the OCI image format has no field for
# GXD_IMAGE_OUT defaults to /var/tmp/gxd-image.
#
# Then it runs the image as it would run in a container engine, without one: the OCI
# archive is unpacked by umoci into a runtime bundle (rootfs + config.json), and the
# entrypoint runs in that rootfs under unshare (mount, PID, UTS, IPC namespaces) + chroot,
# as uid 10001, with the image's environment: `gxd version`, then `gxd run` against a
# throwaway PostgreSQL on 127.0.0.1, probed with the image's own health check command
# (busybox wget /livez), /readyz, then SIGTERM and its exit code. (No container engine
# runs here: podman/crun want cgroup and network namespace setup that this sandbox does
# not give; the bundle is the one `crun run -b BUNDLE` takes where they work.)
set -euo pipefail
self=$(readlink -f "${BASH_SOURCE[0]}")
repo=$(dirname "$(dirname "$self")")
cd "$repo"

mode=dev
case "${1:-}" in
  "") ;;
  --release) mode=release ;;
  *) echo "usage: $0 [--release]" >&2; exit 2 ;;
esac
say() { echo "image-build: $*" >&2; }
now() { echo "$EPOCHREALTIME"; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }
started=$(now)
[ "$(id -u)" -eq 0 ] || { say "must run as root (buildah vfs storage, chroot)"; exit 1; }

need=()
for t in buildah:buildah umoci:umoci skopeo:skopeo busybox:busybox-static; do
  command -v "${t%%:*}" >/dev/null || need+=("${t#*:}")
done
if [ ${#need[@]} -gt 0 ]; then
  say "installing ${need[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/gxd/target}"
if [ "$mode" = release ]; then
  cargo build --workspace --locked --release
  bin="$CARGO_TARGET_DIR/release/gxd"
else
  cargo build --workspace --locked
  bin="$CARGO_TARGET_DIR/debug/gxd"
fi
version=$("$bin" version | awk '{print $2}')
out=${GXD_IMAGE_OUT:-/var/tmp/gxd-image}
mkdir -p "$out"
work=$(mktemp -d /var/tmp/gxd-image-build.XXXXXX)
pgdir=""
pgbin=""
cleanup() {
  local rc=$?
  set +e
  if [ -n "$pgdir" ] && [ -d "$pgdir/data" ]; then
    runuser -u postgres -- "$pgbin/pg_ctl" -D "$pgdir/data" -m fast -w stop >/dev/null 2>&1
  fi
  [ -n "$pgdir" ] && rm -rf "$pgdir"
  if [ -n "${ctr:-}" ]; then buildah "${storage[@]}" rm "$ctr" >/dev/null 2>&1; fi
  rm -rf --one-file-system "$work"
  exit "$rc"
}
trap cleanup EXIT

# ---- the root filesystem --------------------------------------------------------------------
t0=$(now)
rootfs="$work/rootfs"
mkdir -p "$rootfs"/{usr/bin,etc,tmp,var/lib/gxd,etc/gxd,bin}
chmod 1777 "$rootfs/tmp"
objcopy --strip-all "$bin" "$rootfs/usr/bin/gxd"
cp /usr/bin/busybox "$rootfs/bin/busybox"
# gxd's shared libraries (and the dynamic loader), at their paths; noted with their packages.
libs=()
while read -r lib; do
  [ -n "$lib" ] || continue
  real=$(readlink -f "$lib")
  mkdir -p "$rootfs$(dirname "$lib")"
  cp "$real" "$rootfs$lib"
  libs+=("$(dpkg -S "*/$(basename "$real")" 2>/dev/null | cut -d: -f1 | head -n1 || echo "?")")
done < <(ldd "$bin" | awk '/=>/ { print $3 } /^\t\/lib/ { print $1 }')
cat >"$rootfs/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/usr/sbin/nologin
gxd:x:10001:10001:gxd daemon:/var/lib/gxd:/usr/sbin/nologin
EOF
cat >"$rootfs/etc/group" <<'EOF'
root:x:0:
gxd:x:10001:
EOF
chown 10001:10001 "$rootfs/var/lib/gxd"
chmod 0750 "$rootfs/var/lib/gxd"
install -D -m 0644 packaging/gxd.example.toml "$rootfs/usr/share/doc/gxd/examples/gxd.example.toml"
pkgs=$(printf '%s\n' "${libs[@]}" | sort -u | tr '\n' ' ')
say "root filesystem: $(du -sh "$rootfs" | cut -f1) (gxd, busybox-static $(dpkg-query -W -f='${Version}' busybox-static), libraries from: $pkgs)"

# ---- the image --------------------------------------------------------------------------------
storage=(--root "$work/storage" --runroot "$work/run" --storage-driver vfs)
ctr=$(buildah "${storage[@]}" from --format docker scratch)
# Copied through a mount (cp -a), not `buildah copy`, so owners and modes stay as made
# above (/var/lib/gxd gxd:gxd 0750, /tmp 1777).
mnt=$(buildah "${storage[@]}" mount "$ctr")
cp -a "$rootfs/." "$mnt/"
buildah "${storage[@]}" umount "$ctr" >/dev/null
# To stdout (engines keep a health check's output); the image has no /dev of its own.
health='/bin/busybox wget -q -O - http://127.0.0.1:8080/livez'
buildah "${storage[@]}" config \
  --user 10001:10001 \
  --workingdir /var/lib/gxd \
  --entrypoint '["/usr/bin/gxd"]' --cmd run \
  --env GXD_API__LISTEN=0.0.0.0:8080 \
  --env GXD_STORAGE__DATA_DIR=/var/lib/gxd \
  --env GXD_LOG__FORMAT=json \
  --volume /var/lib/gxd \
  --port 8080/tcp \
  --stop-signal SIGTERM \
  --healthcheck "CMD $health" --healthcheck-interval 10s --healthcheck-timeout 3s \
  --healthcheck-start-period 30s --healthcheck-retries 3 \
  --label org.opencontainers.image.title=gxd \
  --label org.opencontainers.image.version="$version" \
  --label org.opencontainers.image.description="gxd: Hyperledger Fabric sidecar (REST API, command outbox, projector)" \
  "$ctr"
oci="$out/gxd-$version.oci.tar"
dock="$out/gxd-$version.docker.tar"
rm -f "$oci" "$dock"
buildah "${storage[@]}" commit --quiet --disable-compression=false --format oci "$ctr" "oci-archive:$oci:gxd:$version" >/dev/null
buildah "${storage[@]}" commit --quiet --disable-compression=false --format docker "$ctr" "docker-archive:$dock:gxd:$version" >/dev/null
t_build=$(secs "$t0" "$(now)")
inspect=$(skopeo inspect "oci-archive:$oci")
layer_bytes=$(skopeo inspect --raw "oci-archive:$oci" | python3 -c 'import json,sys; m=json.load(sys.stdin); print(sum(l["size"] for l in m["layers"]))')
say "image gxd:$version: $(du -h "$oci" | cut -f1) OCI archive ($layer_bytes bytes compressed layer), $(du -h "$dock" | cut -f1) docker-archive; built in ${t_build}s"
hc=$(skopeo inspect --config --raw "docker-archive:$dock" | python3 -c 'import json,sys; c=json.load(sys.stdin)["config"]; print(c.get("Healthcheck",{}).get("Test"))')
say "docker-archive health check: $hc"
echo "$inspect" | python3 -c 'import json,sys; i=json.load(sys.stdin); print("image-build: user/env/labels:", i.get("Env"), i.get("Labels",{}).get("org.opencontainers.image.version"))' >&2

# ---- run it -------------------------------------------------------------------------------
t0=$(now)
skopeo copy --quiet "oci-archive:$oci" "oci:$work/layout:gxd"
umoci unpack --image "$work/layout:gxd" "$work/bundle" >/dev/null
bundle_root="$work/bundle/rootfs"
# The image's process as the runtime spec umoci wrote says: user, env, cwd, args.
spec="$work/bundle/config.json"
read -r uid gid cwd < <(python3 -c 'import json,sys; p=json.load(open(sys.argv[1]))["process"]; print(p["user"]["uid"], p["user"]["gid"], p["cwd"])' "$spec")
mapfile -t envs < <(python3 -c 'import json,sys; print("\n".join(json.load(open(sys.argv[1]))["process"]["env"]))' "$spec")
say "runtime bundle: uid $uid gid $gid cwd $cwd env ${envs[*]}"
# in_image [VAR=value ...] CMD...: the rootfs under private namespaces, as the image's user.
in_image() {
  unshare --mount --pid --uts --ipc --fork --propagation private -- \
    chroot --userspec="$uid:$gid" "$bundle_root" /bin/busybox env -i "${envs[@]}" "$@"
}
ver=$(in_image /usr/bin/gxd version)
say "in the image: gxd version -> $ver"

# A throwaway PostgreSQL on loopback for `gxd run`.
pgbin=$(find /usr/lib/postgresql -mindepth 2 -maxdepth 2 -name bin | sort -V | tail -n 1)
pgdir=$(mktemp -d /tmp/gxd-image-pg.XXXXXX)
chown postgres: "$pgdir"
pgport=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
runuser -u postgres -- "$pgbin/initdb" -D "$pgdir/data" -U gxd -A trust -N -E UTF8 >/dev/null
runuser -u postgres -- "$pgbin/pg_ctl" -D "$pgdir/data" -l "$pgdir/log" -w -t 60 \
  -o "-c listen_addresses=127.0.0.1 -p $pgport -k $pgdir" start >/dev/null
runuser -u postgres -- "$pgbin/createdb" -h 127.0.0.1 -p "$pgport" -U gxd gxd
apiport=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
# The image listens on 0.0.0.0:8080 in its own network namespace; here the host's network is
# shared, so bind loopback on a free port instead (the one override).
unshare --mount --pid --uts --ipc --fork --propagation private -- \
  chroot --userspec="$uid:$gid" "$bundle_root" /bin/busybox env -i "${envs[@]}" \
  GXD_API__LISTEN="127.0.0.1:$apiport" GXD_DATABASE__HOST=127.0.0.1 GXD_DATABASE__PORT="$pgport" \
  GXD_DATABASE__USER=gxd GXD_DATABASE__DBNAME=gxd /usr/bin/gxd run >"$work/run.log" 2>&1 &
runpid=$!
health_ok=0
for _ in $(seq 1 100); do
  if in_image /bin/busybox wget -q -O - "http://127.0.0.1:$apiport/livez" >/dev/null 2>&1; then
    health_ok=1
    break
  fi
  kill -0 "$runpid" 2>/dev/null || break
  sleep 0.2
done
livez=$(in_image /bin/busybox wget -q -O - "http://127.0.0.1:$apiport/livez" 2>&1 || true)
readyz=$(in_image /bin/busybox wget -q -O - "http://127.0.0.1:$apiport/readyz" 2>&1 || true)
# SIGTERM to gxd itself (unshare does not forward signals): the child unshare forked, which
# chroot and busybox env exec'd into gxd (same PID).
gxdpid=$(pgrep -P "$runpid" | head -n1 || true)
if [ -n "$gxdpid" ]; then kill -TERM "$gxdpid" 2>/dev/null || true; fi
rc=0
wait "$runpid" || rc=$?
owner=$(stat -c '%u:%g' "$bundle_root/var/lib/gxd/rocksdb" 2>/dev/null || echo none)
t_run=$(secs "$t0" "$(now)")
say "in the image: /livez -> $livez"
say "in the image: /readyz -> $readyz"
say "gxd run exited $rc after SIGTERM; /var/lib/gxd/rocksdb owned by $owner; run phase ${t_run}s"
if [ "$health_ok" = 1 ] && [ "$rc" -eq 0 ] && [ "$owner" = "10001:10001" ] && [[ "$readyz" == *'"status":"ready"'* ]]; then
  echo "image-build: ok (gxd:$version; $(du -h "$oci" | cut -f1) OCI archive; $(secs "$started" "$(now)")s in all) -> $oci, $dock"
else
  tail -n 30 "$work/run.log" >&2
  echo "image-build: FAILED (health $health_ok, exit $rc, owner $owner)"
  exit 1
fi
