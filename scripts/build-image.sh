#!/usr/bin/env bash
# Builds the container image from ./Dockerfile with buildah: no Docker engine, no registry.
#
#   scripts/build-image.sh            # -> localhost/email-service:dev
#   IMAGE=localhost/email-service:1.2 scripts/build-image.sh
#
# Idempotent. Two steps:
#  1. The base image. Without a registry, a Debian bookworm root filesystem (python3 3.11,
#     python3-venv, ca-certificates) is made once with debootstrap from the apt mirror this machine
#     already uses, cached as a tarball in $IMAGE_CACHE, and imported into buildah's storage as
#     $BASE_TAG (skipped when buildah already has it). BASE_IMAGE=python:3.11-slim-bookworm skips
#     all of this on machines that can pull from a registry.
#  2. buildah bud --build-arg BASE_IMAGE=... -t $IMAGE . — pip inside the build gets this
#     machine's CA bundle, resolver and package index (mounted read-only for the build only;
#     nothing of them ends up in the image).
#
# Environment: IMAGE, BASE_IMAGE, BASE_TAG, IMAGE_CACHE, DEBIAN_MIRROR, BUILDAH_ISOLATION.
# Needs root (debootstrap and buildah's storage); installs buildah/debootstrap with apt if missing.
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGE=${IMAGE:-localhost/email-service:dev}
BASE_TAG=${BASE_TAG:-localhost/email-service-base:bookworm}
IMAGE_CACHE=${IMAGE_CACHE:-/var/tmp/email-service-image}
SUITE=bookworm
BASE_PACKAGES=python3,python3-venv,ca-certificates
export BUILDAH_ISOLATION=${BUILDAH_ISOLATION:-chroot}

log() { echo "build-image: $*" >&2; }

# Whatever a failed run leaves half-made goes on exit: a working container, a temp dir.
cleanup_container="" build_dir=""
cleanup() {
  if [ -n "$cleanup_container" ]; then buildah rm "$cleanup_container" >/dev/null 2>&1 || true; fi
  if [ -n "$build_dir" ]; then rm -rf "$build_dir"; fi
}
trap cleanup EXIT

if [ "$(id -u)" != 0 ]; then
  log "needs root (debootstrap, buildah storage); run it with sudo"
  exit 1
fi

need=()
command -v buildah >/dev/null || need+=(buildah)
if [ -z "${BASE_IMAGE:-}" ]; then
  command -v debootstrap >/dev/null || need+=(debootstrap)
  [ -e /usr/share/keyrings/debian-archive-keyring.gpg ] || need+=(debian-archive-keyring)
fi
if [ ${#need[@]} -gt 0 ]; then
  log "installing ${need[*]} with apt-get"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# The Debian mirror apt on this machine uses (only configured mirrors may be reachable).
debian_mirror() {
  if [ -n "${DEBIAN_MIRROR:-}" ]; then echo "$DEBIAN_MIRROR"; return; fi
  local found
  found=$(
    {
      # deb822 stanzas: a URIs line in a stanza whose Suites name $SUITE.
      for f in /etc/apt/sources.list.d/*.sources; do
        [ -e "$f" ] && awk -v suite="$SUITE" '
          /^[[:space:]]*$/ { if (uri && ok) print uri; uri = ""; ok = 0; next }
          tolower($1) == "uris:" { uri = $2 }
          tolower($1) == "suites:" { for (i = 2; i <= NF; i++) if ($i == suite) ok = 1 }
          END { if (uri && ok) print uri }' "$f"
      done
      # one-line style: deb [options] URI SUITE COMPONENTS...
      cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null |
        sed -E 's/\[[^]]*\]//' |
        awk -v suite="$SUITE" '$1 == "deb" && $3 == suite { print $2 }'
    } | grep -v -- '-security' | head -n 1
  ) || true
  echo "${found:-http://deb.debian.org/debian}"
}

# A rootfs left by an interrupted debootstrap may still have /proc or /sys mounted in it.
remove_rootfs() {
  local mounts
  mounts=$(awk -v root="$1" 'index($2, root "/") == 1 { print $2 }' /proc/mounts | sort -r)
  for mount in $mounts; do umount -l "$mount" 2>/dev/null || true; done
  rm -rf --one-file-system "$1"
}

make_rootfs_tarball() {
  local tarball=$1 mirror root
  mirror=$(debian_mirror)
  root="$IMAGE_CACHE/rootfs.tmp"
  log "debootstrap $SUITE ($BASE_PACKAGES) from $mirror"
  remove_rootfs "$root"
  mkdir -p "$root"
  debootstrap --variant=minbase --include="$BASE_PACKAGES" \
    --keyring=/usr/share/keyrings/debian-archive-keyring.gpg \
    "$SUITE" "$root" "$mirror" >"$IMAGE_CACHE/debootstrap.log" 2>&1 || {
    tail -n 30 "$IMAGE_CACHE/debootstrap.log" >&2
    exit 1
  }
  # What a container does not need: package caches and lists, docs, logs.
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* \
    "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/* \
    "$root"/var/log/* "$root"/var/cache/debconf/*-old "$root"/var/lib/dpkg/*-old
  printf 'deb %s %s main\n' "$mirror" "$SUITE" >"$root/etc/apt/sources.list"
  tar --numeric-owner --xattrs -C "$root" \
    --exclude=./dev/* --exclude=./proc/* --exclude=./sys/* --exclude=./run/* \
    -cf "$tarball.tmp" .
  mv "$tarball.tmp" "$tarball"
  remove_rootfs "$root"
}

import_base() {
  local tarball="$IMAGE_CACHE/$SUITE-rootfs.tar" ctr mnt
  mkdir -p "$IMAGE_CACHE"
  if [ ! -s "$tarball" ]; then
    make_rootfs_tarball "$tarball"
  else
    log "reusing $tarball"
  fi
  log "importing $tarball as $BASE_TAG"
  ctr=$(buildah from scratch)
  cleanup_container=$ctr
  mnt=$(buildah mount "$ctr")
  tar --numeric-owner --xattrs -C "$mnt" -xf "$tarball"
  buildah umount "$ctr" >/dev/null
  buildah config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --env LANG=C.UTF-8 --cmd /bin/bash \
    --label org.opencontainers.image.description="Debian $SUITE minbase + $BASE_PACKAGES" \
    "$ctr"
  buildah commit --quiet --rm "$ctr" "$BASE_TAG" >/dev/null
  cleanup_container=""
}

if [ -z "${BASE_IMAGE:-}" ]; then
  BASE_IMAGE=$BASE_TAG
  if buildah inspect --type image "$BASE_TAG" >/dev/null 2>&1; then
    log "base image $BASE_TAG present"
  else
    started=$SECONDS
    import_base
    log "base image $BASE_TAG made in $((SECONDS - started))s"
  fi
fi

# pip inside the build: this machine's CA bundle (a TLS-intercepting proxy may sit in between)
# and its package index, if one is configured; file:// indexes are not reachable in the build.
build_dir=$(mktemp -d)
ca_bundle=""
for candidate in "${PIP_CERT:-}" "${SSL_CERT_FILE:-}" /etc/ssl/certs/ca-certificates.crt \
  /etc/pki/tls/certs/ca-bundle.crt; do
  if [ -n "$candidate" ] && [ -s "$candidate" ]; then ca_bundle=$candidate; break; fi
done
host_pip() { python3 -m pip config get "$1" 2>/dev/null | grep -E '^https?://' || true; }
{
  echo "[global]"
  if [ -n "$ca_bundle" ]; then echo "cert = /etc/ssl/certs/build-ca.crt"; fi
  index=${PIP_INDEX_URL:-$(host_pip global.index-url)}
  if [ -n "$index" ]; then echo "index-url = $index"; fi
  echo "timeout = 120"
} >"$build_dir/pip.conf"
volumes=(-v "$build_dir/pip.conf:/etc/pip.conf:ro" -v /etc/resolv.conf:/etc/resolv.conf:ro)
if [ -n "$ca_bundle" ]; then volumes+=(-v "$ca_bundle:/etc/ssl/certs/build-ca.crt:ro"); fi

version=$(python3 -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')
revision=$(git rev-parse HEAD 2>/dev/null || echo unknown)
source_url=$(git config --get remote.origin.url 2>/dev/null || echo unknown)
log "building $IMAGE from Dockerfile (BASE_IMAGE=$BASE_IMAGE)"
previous=$(buildah images --noheading --no-trunc --format '{{.ID}}' "$IMAGE" 2>/dev/null || true)
started=$SECONDS
# --format docker: the OCI image config has no HEALTHCHECK field.
buildah bud --isolation "$BUILDAH_ISOLATION" --layers --format docker \
  --build-arg BASE_IMAGE="$BASE_IMAGE" --build-arg VERSION="$version" \
  --build-arg REVISION="$revision" --build-arg SOURCE="$source_url" \
  "${volumes[@]}" -t "$IMAGE" -f Dockerfile .
log "built $IMAGE in $((SECONDS - started))s"
# The image this tag named before, now untagged, goes (the layer cache stays: it is what makes
# a rebuild after a code change take seconds; `buildah rmi --prune` drops it all).
current=$(buildah images --noheading --no-trunc --format '{{.ID}}' "$IMAGE")
if [ -n "$previous" ] && [ "$previous" != "$current" ]; then
  buildah rmi "$previous" >/dev/null 2>&1 || true
fi
