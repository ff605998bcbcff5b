#!/usr/bin/env bash
# Figure "platforms": what adding arm64 costs. examples/with_deps built in the amd64 Debian 13
# builder, warm (one-line change, cache volumes and layer cache filled), written to an archive:
# one platform vs two (`--platform linux/amd64,linux/arm64`, the arm64 files read from the
# arm64 Debian 13 builder image, test/support/make-foreign-builder-image.sh) vs two with the
# arm64 release built in that image under QEMU (`--emulate`) vs the arm64 image alone
# (`--platform linux/arm64 --emulate`: the release built under QEMU only).
#
#   bench/figures/platforms.sh [--raw F] [--log F] [--runs N]
#
# A copy of with_deps in a temp dir, one untimed round of each (fills the builders' cache
# volumes, the layer cache and the kept unpacked arm64 image), then N rounds alternating
# (A B C D A B C D), each after its own one-line change. Rows: platforms_ms (variant one / two /
# emu / arm),
# platforms_check (the arm64 image of the last two-platform archive says aarch64 under QEMU,
# or why not), platforms_buildx (why docker buildx under QEMU is not compared, if it is not).
set -euo pipefail
# shellcheck source=bench/figures/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
STANDALONE_REPORT=1
[[ " $* " != *" --raw "* ]] || STANDALONE_REPORT=0
[ "$STANDALONE_REPORT" = 0 ] || RAW="$RESULTS/platforms-raw.tsv"
parse_common_args "$@"
[ "$STANDALONE_REPORT" = 0 ] || : >"$RAW"
parse_only "with_deps"

BUILDER=docker-release-test/builder:trixie
ARM64=docker-release-test/builder:trixie-arm64-dpkgdb
for suite in trixie; do
  bash "$ROOT/test/support/make-builder-image.sh" "$suite" "$BUILDER" >>"$LOG" 2>&1 ||
    die "could not make $BUILDER (see $LOG)"
done
bash "$ROOT/test/support/make-foreign-builder-image.sh" trixie arm64 "$ARM64" "$BUILDER" >>"$LOG" 2>&1 ||
  die "could not make $ARM64 (see $LOG)"

TAG="bench/with_deps:platforms"
TAGS=()
cleanup_hook() {
  [ ${#TAGS[@]} -eq 0 ] || rmi "${TAGS[@]}"
  [ -z "${PROJ:-}" ] || docker volume ls -q --filter "label=docker_release.cache.project=$PROJ" |
    xargs -r docker volume rm >/dev/null 2>&1 || true
}

change() {
  sleep 1.1
  sed -i -E "s/def text, do: \"[^\"]*\"/def text, do: \"plat$2\"/" "$1/lib/with_deps/greeting.ex"
}

PROJ="$FIGURE_WORK/with_deps"
mkdir -p "$PROJ"
tar -C "$WITH_DEPS" --exclude=./_build --exclude=./deps -c . | tar -C "$PROJ" -x
grep -q 'path: "../.."' "$PROJ/mix.exs" || die "with_deps/mix.exs no longer has the docker_release path dep"
sed -i "s|path: \"../..\"|path: \"$ROOT\"|" "$PROJ/mix.exs"
grep -q 'def text, do: "hello"' "$PROJ/lib/with_deps/greeting.ex" || die "with_deps' greeting.ex changed shape"
PROJ=$(cd "$PROJ" && pwd -P)

one() { in_project "$PROJ" mix docker.release --builder "$BUILDER" --tag "$TAG" --output "$FIGURE_WORK/one.tar"; }
two() {
  in_project "$PROJ" mix docker.release --builder "$BUILDER" --tag "$TAG" --output "$FIGURE_WORK/two.tar" \
    --platform linux/amd64,linux/arm64 --platform-image "linux/arm64=$ARM64"
}
emu() {
  in_project "$PROJ" mix docker.release --builder "$BUILDER" --tag "$TAG" --output "$FIGURE_WORK/emu.tar" \
    --platform linux/amd64,linux/arm64 --platform-image "linux/arm64=$ARM64" --emulate
}
arm() {
  in_project "$PROJ" mix docker.release --builder "$BUILDER" --tag "$TAG" --output "$FIGURE_WORK/arm.tar" \
    --platform linux/arm64 --platform-image "linux/arm64=$ARM64" --emulate
}

record load1 platforms 0 "$(cut -d' ' -f1 /proc/loadavg)"
log "platforms: untimed round (builder cache volumes, layer cache, the unpacked arm64 image)"
in_project "$PROJ" mix compile >>"$LOG" 2>&1 || die "the with_deps copy does not compile (see $LOG)"
timed one >/dev/null || die "the one-platform build failed (see $LOG)"
timed two >/dev/null || die "the two-platform build failed (see $LOG)"
timed emu >/dev/null || die "the two-platform build under emulation failed (see $LOG)"
timed arm >/dev/null || die "the arm64 build under emulation failed (see $LOG)"
log "platforms: $RUNS runs each, alternating"
n=0
for i in $(seq "$RUNS"); do
  n=$((n + 1)) && change "$PROJ" "$n"
  ms=$(timed one) || die "the one-platform build failed on run $i (see $LOG)"
  record platforms_ms one "$i" "$ms"
  n=$((n + 1)) && change "$PROJ" "$n"
  ms=$(timed two) || die "the two-platform build failed on run $i (see $LOG)"
  record platforms_ms two "$i" "$ms"
  n=$((n + 1)) && change "$PROJ" "$n"
  ms=$(timed emu) || die "the two-platform build under emulation failed on run $i (see $LOG)"
  record platforms_ms emu "$i" "$ms"
  n=$((n + 1)) && change "$PROJ" "$n"
  ms=$(timed arm) || die "the arm64 build under emulation failed on run $i (see $LOG)"
  record platforms_ms arm "$i" "$ms"
  warn "run $i/$RUNS done"
done

# The last two-platform archive's arm64 image runs under QEMU and says so.
TAGS+=("$TAG-arm64")
check="no"
if skopeo copy --override-arch arm64 "oci-archive:$FIGURE_WORK/two.tar:platforms" \
  "docker-daemon:$TAG-arm64" >>"$LOG" 2>&1; then
  out=$(docker run --rm --platform linux/arm64 "$TAG-arm64" eval \
    'IO.puts(:erlang.system_info(:system_architecture))' 2>>"$LOG" | tail -1 || true)
  check=$([ "$out" = aarch64-unknown-linux-gnu ] && echo yes || echo "no: ${out:0:160}")
fi
record platforms_check arm64 1 "$check"

# docker buildx, the usual way, under QEMU: only where the engine can build several platforms.
if ! docker buildx version >/dev/null 2>&1; then
  record platforms_buildx why 1 "no docker buildx plugin on this machine (Debian 12 has no docker-buildx package)"
else
  record platforms_buildx why 1 "$(docker buildx inspect 2>&1 | grep -m1 -i driver || echo 'buildx present')"
fi

[ "$STANDALONE_REPORT" = 0 ] || python3 "$BENCH/report_figures.py" "$RAW" platforms
