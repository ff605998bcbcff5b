#!/usr/bin/env bash
# Figure "from-release": `mix docker.release --no-cache --from-release DIR` vs `docker build --no-cache`
# of `FROM docker-release-bench/minbase:bookworm` / `COPY rel /app` over the same release.
#
#   bench/figures/from_release.sh [--raw F] [--log F] [--runs N] [--only with_deps,synth]
#
# Releases: examples/with_deps (`MIX_ENV=prod mix release --overwrite`, ours run in
# examples/with_deps) and the large synthetic release (bench/synthetic_release.py, ours run in
# examples/hello). examples/hello itself is bench/run's figure 2 (not repeated here).
# Per release: one untimed round, then N rounds alternating ours and docker (A B A B), both
# images removed (`docker rmi -f`) before every build. Rows: fr_ms, fr_image_bytes,
# fr_release_bytes, fr_release_files (variant RELEASE_ours / RELEASE_docker).
set -euo pipefail
# shellcheck source=bench/figures/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
parse_common_args "$@"
parse_only "with_deps,synth"

TAGS=()
cleanup_hook() { [ ${#TAGS[@]} -eq 0 ] || rmi "${TAGS[@]}"; }

# measure NAME PROJECT_DIR RELEASE_DIR
measure() {
  local name=$1 project=$2 rel=$3 ctx="$FIGURE_WORK/ctx-$1" i ms off
  local ours_tag="bench/$name:ours" df_tag="bench/$name:minbase"
  TAGS+=("$ours_tag" "$df_tag")
  # The docker context holds the release as rel/ (hard links when possible: no copy of 300 MB).
  mkdir -p "$ctx"
  cp -al "$rel" "$ctx/rel" 2>/dev/null || cp -a "$rel" "$ctx/rel"
  local script entry=""
  for script in "$rel"/bin/*; do [[ "$script" == *.bat ]] || entry=$(basename "$script"); done
  printf 'FROM %s\nCOPY rel /app\nENTRYPOINT ["/app/bin/%s"]\nCMD ["start"]\n' \
    "$MINBASE_IMAGE" "$entry" >"$ctx/Dockerfile"
  record fr_release_bytes "$name" 1 "$(du -sb "$rel" | cut -f1)"
  record fr_release_files "$name" 1 "$(find "$rel" -type f | wc -l)"
  ours() { in_project "$project" mix docker.release --no-cache --from-release "$ctx/rel" --tag "$ours_tag"; }
  df() { DOCKER_BUILDKIT=0 docker build --no-cache -q -t "$df_tag" "$ctx"; }

  log "from-release $name: untimed round"
  rmi "$ours_tag" "$df_tag"
  timed ours >/dev/null || die "mix docker.release failed for $name (see $LOG)"
  timed df >/dev/null || die "docker build failed for $name (see $LOG)"
  log "from-release $name: $RUNS runs each, alternating"
  for i in $(seq "$RUNS"); do
    rmi "$ours_tag" "$df_tag"
    off=$(log_size)
    ms=$(timed ours) || die "mix docker.release failed for $name on run $i (see $LOG)"
    record fr_ms "${name}_ours" "$i" "$ms"
    record fr_image_bytes "${name}_ours" "$i" "$(image_size "$ours_tag")"
    compiled_since "$off" && note "from-release $name run $i" "from-release: run $i of ours ($name) included compiling (the library changed during the bench)"
    rmi "$ours_tag" "$df_tag"
    ms=$(timed df) || die "docker build failed for $name on run $i (see $LOG)"
    record fr_ms "${name}_docker" "$i" "$ms"
    record fr_image_bytes "${name}_docker" "$i" "$(image_size "$df_tag")"
    warn "$name run $i/$RUNS done"
  done
  rmi "$ours_tag" "$df_tag"
}

record load1 from_release 0 "$(cut -d' ' -f1 /proc/loadavg)"
if [[ ",$WHICH," == *",with_deps,"* ]]; then
  log "examples/with_deps release (MIX_ENV=prod mix release --overwrite)"
  (cd "$WITH_DEPS" && MIX_ENV=prod mix release --overwrite --quiet) >>"$LOG" 2>&1 ||
    die "could not build the examples/with_deps release (see $LOG)"
  measure with_deps "$WITH_DEPS" "$WITH_DEPS/_build/prod/rel/with_deps"
fi
if [[ ",$WHICH," == *",synth,"* ]]; then
  ensure_synth
  measure synth "$HELLO" "$SYNTH"
fi
