#!/usr/bin/env bash
# Makes a local builder image with Elixir, unless one with that tag already exists
# (images are cached by tag; `docker rmi TAG` to have it made again). No registry is
# reachable, so nothing is pulled: the image is made from Debian packages.
#
#   test/support/make-builder-image.sh SUITE TAG
#   test/support/make-builder-image.sh bookworm docker-release-test/builder:bookworm
#
# The image is `debootstrap --variant=minbase --include=elixir,erlang-dev,ca-certificates SUITE`
# imported with `docker import` (about 30-60 s, ~280 MB). It holds sh, flock (util-linux),
# erl, elixir and mix, runs as root and has no Hex (hex.pm is unreachable anyway).
#
# Env: BUILDER_MIRROR (default: the mirror apt already uses for SUITE/main),
#      BUILDER_INCLUDE (default: elixir,erlang-dev,ca-certificates).
# Exit status: 0 when the image exists afterwards; prints the tag on stdout.
set -euo pipefail

log() { printf 'make-builder-image: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

[ $# -eq 2 ] || die "usage: $0 SUITE TAG (e.g. $0 bookworm docker-release-test/builder:bookworm)"
SUITE=$1
TAG=$2
INCLUDE=${BUILDER_INCLUDE:-elixir,erlang-dev,ca-certificates}

docker info >/dev/null 2>&1 || die "the Docker daemon is not reachable (is dockerd running?)"
if docker image inspect "$TAG" >/dev/null 2>&1; then
  log "cached: $TAG"
  echo "$TAG"
  exit 0
fi

# Two test runs may ask for the same tag at once: one makes it, the other waits.
LOCK="${TMPDIR:-/tmp}/make-builder-image.$(printf '%s' "$TAG" | tr -c 'A-Za-z0-9._-' '_').lock"
exec 9>"$LOCK"
command -v flock >/dev/null && flock 9
if docker image inspect "$TAG" >/dev/null 2>&1; then
  log "cached: $TAG (made by another run)"
  echo "$TAG"
  exit 0
fi

WORK=""
cleanup() {
  [ -n "$WORK" ] && [ -d "$WORK" ] || return 0
  # debootstrap mounts /proc and /sys in the target; a failed run may leave them.
  grep -F " $WORK/" /proc/mounts | awk '{print $2}' | sort -r | xargs -r umount -l || true
  rm -rf --one-file-system "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

if ! command -v debootstrap >/dev/null; then
  [ "$(id -u)" -eq 0 ] || die "debootstrap is missing and installing it needs root"
  log "installing debootstrap"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
fi
[ "$(id -u)" -eq 0 ] || die "debootstrap needs root"

mirror=${BUILDER_MIRROR:-$(apt-cache policy 2>/dev/null |
  awk -v s="$SUITE/main" '$3 == s {print $2; exit}')}
mirror=${mirror:-http://deb.debian.org/debian}

WORK=$(mktemp -d "${TMPDIR:-/tmp}/builder-image.XXXXXX")
root="$WORK/rootfs"
log "debootstrap --variant=minbase --include=$INCLUDE $SUITE from $mirror (about 30-60 s)"
debootstrap --variant=minbase --include="$INCLUDE" "$SUITE" "$root" "$mirror" \
  >"$WORK/debootstrap.log" 2>&1 ||
  { tail -n 20 "$WORK/debootstrap.log" >&2; die "debootstrap failed"; }
# What every Dockerfile does after apt: drop the package caches and lists.
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/cache/apt/*.bin "$root"/var/lib/apt/lists/*
tar --numeric-owner -C "$root" -c . |
  docker import --change 'ENV LANG=C.UTF-8' --change 'CMD ["/bin/bash"]' - "$TAG" >/dev/null
log "made $TAG"
echo "$TAG"
