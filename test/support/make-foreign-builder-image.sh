#!/usr/bin/env bash
# Makes a local builder image with Elixir for ANOTHER architecture (arm64 on an amd64 machine),
# without emulation, unless an image with that tag already exists (cached by tag, like
# make-builder-image.sh; `docker rmi TAG` to have it made again). Nothing is pulled.
#
#   test/support/make-foreign-builder-image.sh SUITE ARCH TAG [NATIVE_TAG]
#   test/support/make-foreign-builder-image.sh trixie arm64 \
#       docker-release-test/builder:trixie-arm64-dpkgdb docker-release-test/builder:trixie
#
# How, with nothing of ARCH ever run:
# 1. `debootstrap --foreign --arch=ARCH --variant=minbase --include=INCLUDE SUITE`: the first
#    stage unpacks the Priority:required packages only; the INCLUDE packages (elixir, erlang-*,
#    openssl, ...) and their dependencies are downloaded into var/cache/apt/archives, not
#    unpacked (a full `debootstrap --arch` would run the second stage under QEMU: 10-15 min).
# 2. `dpkg-deb -x` of every downloaded package into the root: their files, no maintainer
#    scripts.
# 3. What those scripts make that a release, its runtime files or a build needs:
#    /usr/bin/awk (update-alternatives: mawk), /usr/bin/cc (gcc, when it is included),
#    /etc/passwd and /etc/group (base-passwd's
#    masters), /etc/ssl/certs/ca-certificates.crt (update-ca-certificates writes the sorted
#    concatenation of /usr/share/ca-certificates/mozilla/*.crt, which gives the same bytes);
#    and dpkg's database as installing the packages leaves it (every real image of ARCH has
#    one; the package records and the SBOM of that platform's image are read from it): in
#    var/lib/dpkg/status each package's control fields with `Status: install ok installed`,
#    and info/NAME.list (NAME:ARCH.list for `Multi-Arch: same`) with the paths it shipped,
#    spelled as dpkg lists them (`/.` first, directories without a trailing slash).
# 4. One layer imported with umoci as ARCH (Engine 20.10 ignores `docker import --platform`)
#    and copied into the engine with skopeo.
#
# With NATIVE_TAG (a builder made by make-builder-image.sh from the same SUITE) the erlang-base
# and elixir package versions must be the same in both, or the script fails: the two images
# must hold the same OTP for the tests that combine them, and they only do when both were made
# from the same state of the Debian archive.
#
# Env: BUILDER_MIRROR (default: the mirror apt already uses for SUITE/main),
#      BUILDER_INCLUDE (default: elixir,erlang-dev,ca-certificates).
# Needs root, debootstrap, dpkg-deb, umoci and skopeo (scripts/setup.sh installs them); about
# 1 min and 190 MB. Exit status 0 when the image exists afterwards; prints the tag on stdout.
set -euo pipefail

log() { printf 'make-foreign-builder-image: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

[ $# -ge 3 ] && [ $# -le 4 ] ||
  die "usage: $0 SUITE ARCH TAG [NATIVE_TAG] (e.g. $0 trixie arm64 docker-release-test/builder:trixie-arm64-dpkgdb docker-release-test/builder:trixie)"
SUITE=$1
ARCH=$2
TAG=$3
NATIVE=${4:-}
INCLUDE=${BUILDER_INCLUDE:-elixir,erlang-dev,ca-certificates}

docker info >/dev/null 2>&1 || die "the Docker daemon is not reachable (is dockerd running?)"
cached() {
  docker image inspect "$TAG" >/dev/null 2>&1 || return 1
  local arch
  arch=$(docker image inspect -f '{{.Architecture}}' "$TAG")
  [ "$arch" = "$ARCH" ] || die "$TAG exists but is for $arch, not $ARCH: remove it (docker rmi $TAG) or use another tag"
}
if cached; then
  log "cached: $TAG"
  echo "$TAG"
  exit 0
fi

# Two test runs may ask for the same tag at once: one makes it, the other waits.
LOCK="${TMPDIR:-/tmp}/make-builder-image.$(printf '%s' "$TAG" | tr -c 'A-Za-z0-9._-' '_').lock"
exec 9>"$LOCK"
command -v flock >/dev/null && flock 9
if cached; then
  log "cached: $TAG (made by another run)"
  echo "$TAG"
  exit 0
fi

[ "$(id -u)" -eq 0 ] || die "debootstrap needs root"
for t in debootstrap dpkg-deb umoci skopeo; do
  command -v "$t" >/dev/null || die "$t is missing: run scripts/setup.sh (as root)"
done
if [ -n "$NATIVE" ]; then
  docker image inspect "$NATIVE" >/dev/null 2>&1 ||
    die "$NATIVE does not exist: make it first (test/support/make-builder-image.sh $SUITE $NATIVE)"
fi

WORK=""
cleanup() {
  [ -n "$WORK" ] && [ -d "$WORK" ] || return 0
  grep -F " $WORK/" /proc/mounts | awk '{print $2}' | sort -r | xargs -r umount -l || true
  rm -rf --one-file-system "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

mirror=${BUILDER_MIRROR:-$(apt-cache policy 2>/dev/null |
  awk -v s="$SUITE/main" '$3 == s {print $2; exit}')}
mirror=${mirror:-http://deb.debian.org/debian}

WORK=$(mktemp -d "${TMPDIR:-/tmp}/foreign-builder-image.XXXXXX")
root="$WORK/rootfs"
log "debootstrap --foreign --arch=$ARCH --variant=minbase --include=$INCLUDE $SUITE from $mirror (no emulation)"
debootstrap --arch="$ARCH" --foreign --variant=minbase --include="$INCLUDE" "$SUITE" "$root" "$mirror" \
  >"$WORK/debootstrap.log" 2>&1 ||
  { tail -n 20 "$WORK/debootstrap.log" >&2; die "debootstrap failed"; }

archives="$root/var/cache/apt/archives"
if [ -n "$NATIVE" ]; then
  for p in erlang-base elixir; do
    deb=$(find "$archives" -maxdepth 1 -name "${p}_*.deb" | head -n 1)
    [ -n "$deb" ] || die "debootstrap did not download $p for $ARCH"
    ours=$(dpkg-deb -f "$deb" Version)
    theirs=$(docker run --rm --entrypoint dpkg-query "$NATIVE" -W -f '${Version}' "$p")
    [ "$ours" = "$theirs" ] ||
      die "$p is $ours for $ARCH but $theirs in $NATIVE: the Debian archive moved on since $NATIVE was made; remake it (docker rmi $NATIVE, then make-builder-image.sh) so both hold the same OTP"
  done
fi

debs=("$archives"/*.deb)
log "extracting ${#debs[@]} packages (dpkg-deb -x: files only, no maintainer scripts)"
for d in "${debs[@]}"; do dpkg-deb -x "$d" "$root"; done
dpkgdb="$root/var/lib/dpkg"
mkdir -p "$dpkgdb/info" "$dpkgdb/updates"
: >"$dpkgdb/status"
[ -e "$dpkgdb/diversions" ] || : >"$dpkgdb/diversions"
for d in "${debs[@]}"; do
  name=$(dpkg-deb -f "$d" Package)
  list=$name
  [ "$(dpkg-deb -f "$d" Multi-Arch)" = same ] && list="$name:$(dpkg-deb -f "$d" Architecture)"
  dpkg-deb --fsys-tarfile "$d" | tar -t |
    sed -e 's|^\./$|/.|' -e 's|^\./|/|' -e 's|/$||' >"$dpkgdb/info/$list.list"
  { dpkg-deb -f "$d" | awk '{ print } /^Package:/ { print "Status: install ok installed" }'
    echo; } >>"$dpkgdb/status"
done
[ -e "$root/usr/bin/awk" ] || ln -s mawk "$root/usr/bin/awk"
# gcc's maintainer script makes the `cc` alternative (make's default $(CC)).
[ -e "$root/usr/bin/cc" ] || [ ! -e "$root/usr/bin/gcc" ] || ln -s gcc "$root/usr/bin/cc"
[ -e "$root/etc/passwd" ] || cp "$root/usr/share/base-passwd/passwd.master" "$root/etc/passwd"
[ -e "$root/etc/group" ] || cp "$root/usr/share/base-passwd/group.master" "$root/etc/group"
if [ -d "$root/usr/share/ca-certificates/mozilla" ]; then
  mkdir -p "$root/etc/ssl/certs"
  (
    export LC_ALL=C
    cat "$root"/usr/share/ca-certificates/mozilla/*.crt
  ) >"$root/etc/ssl/certs/ca-certificates.crt"
fi
# What every Dockerfile does after apt, and debootstrap's own second-stage files.
rm -rf "$root/debootstrap" "$archives"/*.deb "$root"/var/cache/apt/*.bin "$root"/var/lib/apt/lists/*
[ -x "$root/usr/lib/erlang/erts-"*/bin/beam.smp ] || die "no ERTS in the $ARCH root (is erlang-base in $INCLUDE's dependencies?)"

log "importing as linux/$ARCH (umoci + skopeo)"
umoci init --layout "$WORK/oci" >/dev/null
umoci new --image "$WORK/oci:t" >/dev/null
tar --numeric-owner -C "$root" -c . >"$WORK/layer.tar"
umoci raw add-layer --image "$WORK/oci:t" "$WORK/layer.tar"
umoci config --image "$WORK/oci:t" --architecture "$ARCH" --os linux \
  --config.env LANG=C.UTF-8 --config.cmd /bin/bash
skopeo copy --quiet "oci:$WORK/oci:t" "docker-daemon:$TAG"
arch=$(docker image inspect -f '{{.Architecture}}' "$TAG")
[ "$arch" = "$ARCH" ] || die "the engine says $TAG is for $arch, not $ARCH"
log "made $TAG"
echo "$TAG"
