#!/usr/bin/env bash
# Makes the local base images the benchmarks need, unless they already exist
# (they are cached by tag between runs; `docker rmi` one to have it made again).
# No registry is reachable, so nothing is pulled: the images are made from
# Debian packages with debootstrap and `docker import`.
#
#   docker-release-bench/minbase:bookworm          debootstrap --variant=minbase bookworm
#   docker-release-bench/minbase-runtime:bookworm  the same plus libssl3 and ca-certificates
#                                                  (what a release using :crypto needs on it)
#   docker-release-bench/busybox:latest            static /bin/busybox, /bin/sh -> busybox
#
# Env: BENCH_MIRROR (default: the machine's apt mirror for bookworm/main).
set -euo pipefail

MINBASE_TAG=docker-release-bench/minbase:bookworm
RUNTIME_TAG=docker-release-bench/minbase-runtime:bookworm
RUNTIME_INCLUDE=libssl3,ca-certificates
BUSYBOX_TAG=docker-release-bench/busybox:latest

log() { printf 'images: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
have_image() { docker image inspect "$1" >/dev/null 2>&1; }

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

ensure_packages() {
  local missing=()
  command -v debootstrap >/dev/null || missing+=(debootstrap)
  dpkg-query -W -f='${Status}' busybox-static 2>/dev/null | grep -q 'ok installed' ||
    missing+=(busybox-static)
  [ ${#missing[@]} -eq 0 ] && return 0
  log "installing ${missing[*]}"
  [ "$(id -u)" -eq 0 ] || die "need root to apt-get install ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
}

# The mirror apt already uses for bookworm/main (works for sources.list and deb822).
apt_mirror() {
  if [ -n "${BENCH_MIRROR:-}" ]; then echo "$BENCH_MIRROR"; return; fi
  local url
  url=$(apt-cache policy 2>/dev/null | awk '$3 == "bookworm/main" {print $2; exit}')
  echo "${url:-http://deb.debian.org/debian}"
}

# make_minbase TAG [--include=PKGS]
make_minbase() {
  local tag=$1 mirror root
  shift
  mirror=$(apt_mirror)
  root=$(mktemp -d "$WORK/rootfs.XXXXXX")
  log "debootstrap --variant=minbase${*:+ $*} bookworm from $mirror (about 30 s)"
  debootstrap --variant=minbase "$@" bookworm "$root" "$mirror" >"$WORK/debootstrap.log" 2>&1 ||
    { tail -n 20 "$WORK/debootstrap.log" >&2; die "debootstrap failed"; }
  # What every Dockerfile does after apt: drop the package caches and lists.
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/cache/apt/*.bin \
    "$root"/var/lib/apt/lists/*
  tar --numeric-owner -C "$root" -c . |
    docker import --change 'CMD ["/bin/bash"]' - "$tag" >/dev/null
  rm -rf --one-file-system "$root"
  log "made $tag"
}

make_busybox() {
  local busybox root
  busybox=$(dpkg -L busybox-static | grep -E '/bin/busybox$' | head -n 1)
  [ -n "$busybox" ] || die "busybox-static has no bin/busybox"
  case "$(ldd "$busybox" 2>&1 || true)" in
    *"not a dynamic executable"*) ;;
    *) die "$busybox is not a static executable" ;;
  esac
  root="$WORK/busybox"
  mkdir -p "$root/bin" "$root/tmp"
  chmod 1777 "$root/tmp"
  cp "$busybox" "$root/bin/busybox"
  ln -s busybox "$root/bin/sh"
  tar --numeric-owner --owner=0 --group=0 -C "$root" -c . |
    docker import --change 'CMD ["/bin/sh"]' - "$BUSYBOX_TAG" >/dev/null
  log "made $BUSYBOX_TAG"
}

main() {
  docker info >/dev/null 2>&1 || die "docker daemon not reachable (is dockerd running?)"
  local missing=()
  for tag in "$MINBASE_TAG" "$RUNTIME_TAG" "$BUSYBOX_TAG"; do
    if have_image "$tag"; then log "cached: $tag"; else missing+=("$tag"); fi
  done
  [ ${#missing[@]} -eq 0 ] && return 0

  ensure_packages
  WORK=$(mktemp -d "${TMPDIR:-/tmp}/bench-images.XXXXXX")
  for tag in "${missing[@]}"; do
    case "$tag" in
      "$MINBASE_TAG") make_minbase "$tag" ;;
      "$RUNTIME_TAG") make_minbase "$tag" --include="$RUNTIME_INCLUDE" ;;
      "$BUSYBOX_TAG") make_busybox ;;
    esac
  done
}

main "$@"
