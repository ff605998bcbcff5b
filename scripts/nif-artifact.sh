#!/usr/bin/env bash
# Builds docker_release's prebuilt NIF artifact and writes the checksum file.
#
#   scripts/nif-artifact.sh build OUT_DIR [--target TRIPLE]
#       cargo build --release of the NIF (for TRIPLE, default: this machine's Rust host), then
#       OUT_DIR/libdocker_release_nif-vVERSION-nif-NIF-TRIPLE.so.tar.gz (one file inside, the
#       same name without .tar.gz; RustlerPrecompiled's layout), then the checksum file.
#   scripts/nif-artifact.sh checksums DIR [FILE]
#       FILE (default DIR/checksum-Elixir.DockerRelease.Native.exs): the sha256 of every
#       libdocker_release_nif-*.tar.gz in DIR, as the map the package ships at its root.
#
# The release workflow (.github/workflows/release.yml) runs `build` on each target and
# `checksums` over all the artifacts; the test suite runs `build` on this machine and installs
# the result as a user would (test/e2e/package_test.exs). Tarballs are reproducible: sorted,
# owner 0, mtime 0, gzip without name or time.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CHECKSUM_NAME=checksum-Elixir.DockerRelease.Native.exs

usage() { sed -n '2,/^[^#]/s/^# \{0,1\}//p' "${BASH_SOURCE[0]}" | sed '$d'; exit "${1:-0}"; }
die() { echo "scripts/nif-artifact.sh: $*" >&2; exit 1; }

sha256() {
  if command -v sha256sum >/dev/null 2>&1; then sha256sum "$1" | cut -d' ' -f1
  else shasum -a 256 "$1" | cut -d' ' -f1; fi
}

checksums() {
  local dir=$1 file=${2:-$1/$CHECKSUM_NAME} f tmp
  tmp=$(mktemp)
  chmod 0644 "$tmp"
  {
    echo "%{"
    for f in "$dir"/libdocker_release_nif-*.tar.gz; do
      [ -e "$f" ] || continue
      printf '  "%s" => "sha256:%s",\n' "$(basename "$f")" "$(sha256 "$f")"
    done
    echo "}"
  } >"$tmp"
  mv "$tmp" "$file"
  echo "$file"
}

build() {
  local out=$1 target=${2:-} version nif lib_dir so name stage gnutar=tar
  version=$(sed -n 's/^  @version "\(.*\)"$/\1/p' "$ROOT/mix.exs")
  [ -n "$version" ] || die "no @version in mix.exs"
  # The NIF version is the crate's rustler feature (nif_version_2_16 -> 2.16).
  nif=$(grep -o 'nif_version_[0-9]*_[0-9]*' "$ROOT/native/docker_release_nif/Cargo.toml" | head -1 |
    sed 's/nif_version_\([0-9]*\)_\([0-9]*\)/\1.\2/')
  [ -n "$nif" ] || die "no nif_version_* feature in native/docker_release_nif/Cargo.toml"
  local args=(build --release --locked -p docker_release_nif)
  lib_dir="${CARGO_TARGET_DIR:-$ROOT/target}/release"
  if [ -n "$target" ]; then
    # Named: built for it (also with CARGO=cross), into target/TRIPLE/release.
    args+=(--target "$target")
    lib_dir="${CARGO_TARGET_DIR:-$ROOT/target}/$target/release"
  else
    target=$(rustc -vV | sed -n 's/^host: //p')
    [ -n "$target" ] || die "cannot tell the Rust host target (rustc -vV)"
  fi
  # musl targets link the C runtime statically by default, which a cdylib cannot do.
  case "$target" in
    *-musl*) export RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=-crt-static" ;;
  esac
  # As the Mix compiler does: variables that cannot change the library are not passed on.
  (cd "$ROOT" && env -u SOURCE_DATE_EPOCH -u CC_ENABLE_DEBUG_OUTPUT -u LIBC_BUILD_VERBOSE \
    "${CARGO:-cargo}" "${args[@]}") >&2
  case "$target" in
    *apple-darwin) so="$lib_dir/libdocker_release_nif.dylib" ;;
    *) so="$lib_dir/libdocker_release_nif.so" ;;
  esac
  [ -f "$so" ] || die "cargo built no $so"

  name="libdocker_release_nif-v$version-nif-$nif-$target.so"
  mkdir -p "$out"
  stage=$(mktemp -d)
  trap 'rm -rf "$stage"' RETURN
  cp "$so" "$stage/$name"
  chmod 0755 "$stage/$name"
  command -v gtar >/dev/null 2>&1 && gnutar=gtar
  "$gnutar" --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 -C "$stage" -cf - "$name" |
    gzip -9n >"$out/$name.tar.gz.tmp"
  mv "$out/$name.tar.gz.tmp" "$out/$name.tar.gz"
  echo "$out/$name.tar.gz"
  checksums "$out"
}

case "${1:-}" in
  build)
    [ $# -ge 2 ] || usage 2 >&2
    out=$2; shift 2; target=""
    while [ $# -gt 0 ]; do
      case "$1" in
        --target) target=$2; shift 2 ;;
        *) die "unknown argument $1" ;;
      esac
    done
    build "$out" "$target"
    ;;
  checksums)
    [ $# -ge 2 ] || usage 2 >&2
    checksums "$2" "${3:-}"
    ;;
  -h | --help) usage 0 ;;
  *) usage 2 >&2 ;;
esac
