#!/usr/bin/env bash
# Builder builds: a warm rebuild of examples/with_deps after a one-line change in the app,
# in a builder container (`docker-release-test/builder:bookworm`).
#
#   bench/builder.sh [--runs N] [--raw FILE] [--log FILE] [--builder IMAGE]
#
# Four builds per run, alternating ours and docker's (A B A B):
#   ours_cold  mix docker.release --builder IMAGE --no-cache   (fresh cache volumes)
#   df_cold    DOCKER_BUILDKIT=0 docker build --no-cache of a multi-stage Dockerfile of the
#              usual Phoenix shape (deps layer, then lib + config, then mix release)
#   (one line of lib/with_deps/greeting.ex changes)
#   ours_warm  mix docker.release --builder IMAGE              (the cache volumes of ours_cold)
#   df_warm    DOCKER_BUILDKIT=0 docker build                  (the layer cache of df_cold)
# Before a cold build both images are removed, ours' previous one too. Before a warm build the
# final images are removed, but ours' previous image stays under another tag: its layers in the
# engine are ours' engine-side cache, as the build cache is docker's (a user's previous image
# is still there when they rebuild). Wall times (ms) are appended to FILE as
# `builder_ms VARIANT RUN MS` lines in bench/run's raw format (report.py turns them into the
# report's "builder builds" figure); the commands' output goes to the log. Run alone, it writes
# bench/results/builder-raw.tsv and prints the medians.
#
# Images left behind: bench/with_deps:ours, bench/with_deps:df. The temporary project copy,
# its cache volumes, bench/with_deps:ours-prev and the Dockerfile's build-stage images are
# removed at the end.
set -euo pipefail

# record, note, timed, now_ms, log_size, compiled_since, image_size, rmi (bench/common.sh)
# shellcheck source=bench/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BENCH="$ROOT/bench"
RUNS=3
RAW="$BENCH/results/builder-raw.tsv"
LOG="$BENCH/results/builder.log"
BUILDER=docker-release-test/builder:bookworm
RUNTIME_IMAGE=docker-release-bench/minbase-runtime:bookworm
OURS_TAG=bench/with_deps:ours
PREV_TAG=bench/with_deps:ours-prev
DF_TAG=bench/with_deps:df
STAGE_LABEL=docker-release-bench.builder-stage=with_deps
STANDALONE=1

usage() { sed -n '2,/^[^#]/s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"; exit "${1:-0}"; }
while [ $# -gt 0 ]; do
  case "$1" in
    --runs) RUNS=$2; shift 2 ;;
    --raw) RAW=$2; STANDALONE=0; shift 2 ;;
    --log) LOG=$2; shift 2 ;;
    --builder) BUILDER=$2; shift 2 ;;
    -h | --help) usage 0 ;;
    *) echo "bench/builder.sh: unknown argument $1" >&2; usage 2 >&2 ;;
  esac
done
[[ "$RUNS" =~ ^[1-9][0-9]*$ ]] || { echo "bench/builder.sh: --runs must be positive" >&2; exit 2; }

log() { printf '\n==> %s\n' "$*" >&2; }
warn() { printf 'bench/builder.sh: %s\n' "$*" >&2; }
die() { warn "error: $*"; exit 1; }

WORK=""
PROJ=""
cleanup() {
  if [ -n "$PROJ" ]; then
    # The cache volumes of ours for the temporary copy (labelled with its canonical path).
    docker volume ls -q --filter "label=docker_release.cache.project=$PROJ" |
      xargs -r docker volume rm >/dev/null 2>&1 || true
  fi
  # The build stage's last images (untagged, so dangling) and with them their parents.
  docker rmi -f "$PREV_TAG" >/dev/null 2>&1 || true
  docker images -q -f dangling=true -f "label=$STAGE_LABEL" | sort -u |
    xargs -r docker rmi >/dev/null 2>&1 || true
  [ -z "$WORK" ] || rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

mkdir -p "$(dirname "$RAW")" "$(dirname "$LOG")"
[ "$STANDALONE" = 0 ] || : >"$RAW"

since() { tail -c +$(($1 + 1)) "$LOG"; }

ours() { (cd "$PROJ" && env -u MIX_ENV mix docker.release --builder "$BUILDER" --tag "$OURS_TAG" "$@"); }
theirs() { DOCKER_BUILDKIT=0 docker build "$@" -f "$WORK/Dockerfile" -t "$DF_TAG" "$PROJ"; }
# The library may change while the bench runs (others editing it): compile it on the host
# first, untimed, so that a timed run of ours measures the build, not the host's compile.
settle() { (cd "$PROJ" && env -u MIX_ENV mix compile) >>"$LOG" 2>&1 || die "the with_deps copy does not compile on the host (see $LOG)"; }
greeting() { sed -i -E "s/def text, do: \"[^\"]*\"/def text, do: \"$1\"/" "$PROJ/lib/with_deps/greeting.ex"; }

# check_host_compile OFFSET WHAT: the host must not have compiled anything during a timed run of ours
# (someone editing the library meanwhile); the builder's lines are indented, the host's not.
check_host_compile() {
  if since "$1" | grep -qE '^Compiling [0-9]+ files? \(|building native code'; then
    note "builder $2" "$2 included compiling docker_release on the host (the library changed during the bench)"
  fi
}

# answers IMAGE TEXT: does a container of IMAGE answer GET / with TEXT at its start?
answers() {
  local cid addr body=""
  cid=$(docker run -d -e PORT=4000 -p 127.0.0.1::4000 "$1" 2>>"$LOG") || { echo "no: docker run failed"; return; }
  addr=$(docker port "$cid" 4000/tcp | grep -m1 '^127\.0\.0\.1:' || true)
  for _ in $(seq 60); do
    body=$(curl -fsS --max-time 2 "http://$addr/" 2>/dev/null || true)
    [ -z "$body" ] || break
    sleep 0.5
  done
  docker rm -f "$cid" >/dev/null 2>&1 || true
  if [[ "$body" == "$2 from with_deps "* ]]; then echo yes; else echo "no: GET / answered: ${body:0:160}"; fi
}

main() {
  { command -v docker >/dev/null && docker info >/dev/null 2>&1; } || die "docker daemon not reachable"
  for tool in mix curl python3; do command -v $tool >/dev/null || die "$tool not found"; done

  log "builder builds: images"
  bash "$ROOT/test/support/make-builder-image.sh" bookworm docker-release-test/builder:bookworm >/dev/null ||
    die "could not make the builder image"
  docker image inspect "$BUILDER" >/dev/null 2>&1 || die "no builder image $BUILDER"
  "$BENCH/images.sh" >&2

  WORK=$(mktemp -d "${TMPDIR:-/tmp}/bench-builder.XXXXXX")
  PROJ=$(realpath "$WORK")/with_deps
  mkdir -p "$PROJ"
  (cd "$ROOT/examples/with_deps" && tar --exclude=./_build --exclude=./deps -cf - .) | tar -C "$PROJ" -xf -
  sed -i "s|path: \"../..\"|path: \"$ROOT\"|" "$PROJ/mix.exs"
  grep -qF "path: \"$ROOT\"" "$PROJ/mix.exs" || die "could not point the copy's docker_release dep at $ROOT"
  # What `mix phx.gen.release --docker` puts in .dockerignore (ours leaves these out anyway).
  printf '_build/\ndeps/\n.git/\n' >"$PROJ/.dockerignore"
  cat >"$WORK/Dockerfile" <<EOF
FROM $BUILDER AS build
LABEL $STAGE_LABEL
ENV MIX_ENV=prod LANG=C.UTF-8
WORKDIR /src
COPY mix.exs mix.lock* ./
COPY local_deps local_deps
RUN mix deps.get --only prod && mix deps.compile
COPY config config
COPY lib lib
RUN mix compile && mix release

FROM $RUNTIME_IMAGE
ENV LANG=C.UTF-8
WORKDIR /app
COPY --from=build --chown=nobody:root /src/_build/prod/rel/with_deps /app
USER nobody
ENTRYPOINT ["/app/bin/with_deps"]
CMD ["start"]
EOF

  log "builder builds: compiling docker_release for the copy on the host (untimed)"
  settle

  log "builder builds: $RUNS runs of ours cold, docker cold, one-line change, ours warm, docker warm"
  local i ms off text ok_ours=1
  for i in $(seq "$RUNS"); do
    # Other work on the machine skews the times: keep the 1-minute load average of each run.
    record load1 builder "$i" "$(cut -d' ' -f1 /proc/loadavg)"
    greeting "cold$i"
    rmi "$OURS_TAG" "$PREV_TAG" "$DF_TAG"
    settle
    off=$(log_size)
    ms=$(timed ours --no-cache) || die "ours cold failed on run $i (see $LOG)"
    record builder_ms ours_cold "$i" "$ms"
    check_host_compile "$off" "ours cold, run $i"
    ms=$(timed theirs --no-cache) || die "docker build cold failed on run $i (see $LOG)"
    record builder_ms df_cold "$i" "$ms"

    text="warm$i"
    greeting "$text"
    docker tag "$OURS_TAG" "$PREV_TAG"
    rmi "$OURS_TAG" "$DF_TAG"
    settle
    off=$(log_size)
    ms=$(timed ours) || die "ours warm failed on run $i (see $LOG)"
    record builder_ms ours_warm "$i" "$ms"
    check_host_compile "$off" "ours warm, run $i"
    # Only the changed module compiles in the builder: its one "Compiling" line, no dep's.
    if [ "$(since "$off" | grep -cE '^    (Compiling [0-9]+ files? \(|==> )')" != 1 ] ||
      ! since "$off" | grep -qx '    Compiling 1 file (.ex)'; then
      note "builder run $i" "ours warm, run $i, compiled more than the one changed module in the builder"
      ok_ours=0
    fi
    ms=$(timed theirs) || die "docker build warm failed on run $i (see $LOG)"
    record builder_ms df_warm "$i" "$ms"
    record builder_image_bytes ours "$i" "$(docker image inspect -f '{{.Size}}' "$OURS_TAG")"
    record builder_image_bytes df "$i" "$(docker image inspect -f '{{.Size}}' "$DF_TAG")"
    warn "builder run $i/$RUNS done"
  done
  record builder_check ours_warm_compiles_one 1 "$([ "$ok_ours" = 1 ] && echo yes || echo no)"
  # A cold build of ours is only cold if no other image in the engine holds its layers
  # (the engine then imports them again): name any that does.
  local runtime_layer listing sharing
  runtime_layer=$(docker image inspect -f '{{index .RootFS.Layers 0}}' "$OURS_TAG")
  if listing=$(docker images -q --no-trunc | sort -u | xargs -r docker image inspect \
    -f '{{.Id}} tags={{range .RepoTags}}{{.}},{{end}} {{range .RootFS.Layers}}{{.}} {{end}}' 2>&1); then
    sharing=$(printf '%s\n' "$listing" |
      awk -v l="$runtime_layer" -v ours="$(docker image inspect -f '{{.Id}}' "$OURS_TAG")" \
        -v prev="$(docker image inspect -f '{{.Id}}' "$PREV_TAG")" \
        '$1 != ours && $1 != prev && index($0, l) { t = substr($2, 6); print (t == "" ? $1 : t) }' |
      paste -sd ' ')
    record builder_check other_images_with_ours_layers 1 "${sharing:-none}"
  else
    record builder_check other_images_with_ours_layers 1 "not checked: ${listing:0:200}"
  fi
  # Both last images serve the last change.
  record builder_check ours 1 "$(answers "$OURS_TAG" "$text")"
  record builder_check df 1 "$(answers "$DF_TAG" "$text")"

  if [ "$STANDALONE" = 1 ]; then
    python3 - "$RAW" <<'EOF'
import collections, statistics, sys
ms = collections.defaultdict(list)
for line in open(sys.argv[1]):
    f = line.rstrip("\n").split("\t")
    if f[0] == "builder_ms":
        ms[f[1]].append(float(f[3]))
    elif f[0] in ("builder_check", "note"):
        print(f"{f[0]} {f[1]}: {f[3] if f[0] == 'builder_check' else f[4]}")
med = {k: statistics.median(v) for k, v in ms.items()}
for k in ("ours_cold", "ours_warm", "df_cold", "df_warm"):
    print(f"{k:10} median {med[k] / 1000:6.2f} s  runs: {', '.join(f'{v / 1000:.2f}' for v in ms[k])}")
print(f"ours warm / ours cold:   {med['ours_warm'] / med['ours_cold']:.2f}")
print(f"ours warm / docker warm: {med['ours_warm'] / med['df_warm']:.2f}")
print(f"ours cold / docker cold: {med['ours_cold'] / med['df_cold']:.2f}")
EOF
  fi
}

main
