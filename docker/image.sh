#!/usr/bin/env bash
# Build the pgwarden image without a Docker engine or a registry: podman (buildah inside) with
# runc, and a Debian base image made from the Debian archive. Used by `make image` and
# `make test-containers`; needs root on a Debian 12 machine (it installs packages and writes
# the containers configuration).
#
#   docker/image.sh setup           Debian packages + the containers configuration drop-in
#   docker/image.sh base            the base image, unless it is already in local storage
#   docker/image.sh build [IMAGE]   setup, base, then the Dockerfile (default pgwarden:0.1.0)
#
# The base image: `mmdebstrap --variant=minbase` of bookworm from the Debian archive (with its
# -updates and security suites), shaped like Debian's official `debian:bookworm-slim` (merged
# /usr, documentation, manuals and locales excluded from every later package install too,
# apt's clean and gzip-index settings), imported as docker.io/library/debian:bookworm-slim,
# the name the Dockerfile's FROM means, so the build pulls nothing. Build it again with
# `docker/image.sh base --force` (a newer point release, security updates).
#
# The host's CA trust reaches the build's pip step as a build secret (`--secret`): mounted
# read-only during that one RUN step only, nothing of it in any layer (tests/containers
# checks). Where pip needs no extra CA, it does no harm.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
BASE_IMAGE=docker.io/library/debian:bookworm-slim
PACKAGES=(podman runc mmdebstrap netavark aardvark-dns)
CONF_DROPIN=/etc/containers/containers.conf.d/50-pgwarden.conf
CA_BUNDLE=${PGW_BUILD_CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}

log() { echo "image.sh: $*" >&2; }

# The containers configuration these machines need (no systemd, a hybrid cgroup v1 layout,
# a hard `nofile` limit of 20000 that even root cannot raise):
# - runc: crun 1.8 refuses the hybrid cgroup layout;
# - cgroupfs and file events: there is no systemd to manage cgroups or keep a journal;
# - default_ulimits within this machine's hard limits: podman's default (nofile 1048576)
#   makes every container fail to start with "setrlimit ... operation not permitted".
write_conf() {
  local nofile nproc
  nofile=$(ulimit -Hn)
  nproc=$(ulimit -Hu)
  [ "$nofile" = unlimited ] && nofile=1048576
  [ "$nproc" = unlimited ] && nproc=32768
  [ "$nofile" -gt 1048576 ] && nofile=1048576
  [ "$nproc" -gt 32768 ] && nproc=32768
  mkdir -p "$(dirname "$CONF_DROPIN")"
  local tmp
  tmp=$(mktemp "$CONF_DROPIN.XXXXXX")
  cat >"$tmp" <<EOF
# Written by pgwarden's docker/image.sh setup (see there why).
[containers]
default_ulimits = ["nofile=$nofile:$nofile", "nproc=$nproc:$nproc"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
EOF
  chmod 0644 "$tmp"
  mv -f "$tmp" "$CONF_DROPIN"
}

cmd_setup() {
  bash "$here/install-deps.sh" "${PACKAGES[@]}"
  write_conf
}

# The shape of Debian's official slim image (debuerreotype): dpkg path excludes that also
# apply to every package the Dockerfile installs, and apt settings that keep no caches.
DPKG_EXCLUDES=(
  'path-exclude=/usr/share/doc/*'
  'path-include=/usr/share/doc/*/copyright'
  'path-exclude=/usr/share/groff/*'
  'path-exclude=/usr/share/info/*'
  'path-exclude=/usr/share/linda/*'
  'path-exclude=/usr/share/lintian/overrides/*'
  'path-exclude=/usr/share/locale/*'
  'path-exclude=/usr/share/man/*'
)

cmd_base() {
  if [ "${1:-}" != --force ] && podman image exists "$BASE_IMAGE"; then
    return 0
  fi
  log "building $BASE_IMAGE from the Debian archive (mmdebstrap, minbase)"
  local args=(--variant=minbase --format=tar --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr)
  local opt
  for opt in "${DPKG_EXCLUDES[@]}"; do args+=(--dpkgopt="$opt"); done
  args+=(
    --aptopt='Acquire::Languages "none"'
    --aptopt='Acquire::GzipIndexes "true"'
    --aptopt='Apt::AutoRemove::SuggestsImportant "false"'
    --aptopt='Dir::Cache::pkgcache ""'
    --aptopt='Dir::Cache::srcpkgcache ""'
    --dpkgopt='force-unsafe-io'
    # What the official image leaves out or empties: the build host's name and resolver,
    # machine-id (made at first boot), apt's lists and caches, logs.
    --customize-hook='rm -f "$1/etc/hostname" "$1/etc/resolv.conf"'
    --customize-hook=': > "$1/etc/machine-id"'
    --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*.bin "$1"/var/cache/ldconfig/aux-cache'
    --customize-hook='find "$1/var/log" -type f -delete'
  )
  local started=$SECONDS
  mmdebstrap "${args[@]}" bookworm - | podman import --change 'CMD ["bash"]' - "$BASE_IMAGE" >/dev/null
  log "$BASE_IMAGE built in $((SECONDS - started)) s"
}

cmd_build() {
  local image=${1:-pgwarden:0.1.0}
  cmd_setup
  cmd_base
  local args=(--pull=never --layers --network=host -f "$root/Dockerfile")
  [ -r "$CA_BUNDLE" ] && args+=(--secret "id=ca-certificates,src=$CA_BUNDLE")
  [ -n "${POSTGRES_JIT:-}" ] && args+=(--build-arg "POSTGRES_JIT=$POSTGRES_JIT")
  args+=(--build-arg "REVISION=$(git -C "$root" rev-parse HEAD 2>/dev/null || echo unknown)")
  local tags=(-t "$image")
  # A bare name is also tagged as Kubernetes resolves it (docker.io/library/NAME), so that an
  # archive made with `podman save` of that name matches the manifests' `image: pgwarden:...`
  # once imported into containerd (docs/kubernetes.md).
  case "$image" in */*) ;; *) tags+=(-t "docker.io/library/$image") ;; esac
  log "building $image"
  local started=$SECONDS
  podman build "${args[@]}" "${tags[@]}" "$root"
  log "$image built in $((SECONDS - started)) s"
  # The build stage under a name of its own (all of it from the layer cache, at once), so
  # that tests/containers can check its layers too: it saw the CA secret.
  local stage
  case "${image##*/}" in
    *:*) stage="${image%:*}-build-stage:${image##*:}" ;;
    *) stage="$image-build-stage" ;;
  esac
  podman build "${args[@]}" --target build -t "$stage" "$root" >/dev/null
}

case "${1:-}" in
  setup) cmd_setup ;;
  base) shift; cmd_base "$@" ;;
  build) shift; cmd_build "$@" ;;
  *)
    echo "usage: $0 setup | base [--force] | build [IMAGE]" >&2
    exit 2
    ;;
esac
