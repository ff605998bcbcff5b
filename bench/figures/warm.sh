#!/usr/bin/env bash
# Figure "warm": the everyday path. A one-line change rebuilt on the host and loaded into the
# engine (`mix docker.release`, no flags) vs a bare `MIX_ENV=prod mix release` of the same
# kind of change, for examples/hello and examples/with_deps, in two forms: from `dev` (the
# release built by a separate `mix`, the usual invocation) and `MIX_ENV=prod mix
# docker.release` (the release built in the task's own VM; the copy's docker_release
# dependency is declared for `[:dev, :prod]`, which that needs).
#
#   bench/figures/warm.sh [--raw F] [--log F] [--runs N] [--only hello,with_deps]
#
# Per project: a copy in a temp dir (its docker_release path dependency pointed back at this
# checkout), one untimed round (compiles dev and prod, fills the layer cache, loads a first
# image), then N rounds alternating (A B A B): change one line, time `MIX_ENV=prod mix release
# --overwrite` (bare); change the line again, time `mix docker.release --tag bench/NAME:warm`
# (ours: the same release build, then the image loaded into the engine); change it again, time
# `MIX_ENV=prod mix docker.release --tag bench/NAME:warm` (ours_here). Each timed command
# compiles exactly one changed module. Ours' previous image stays in the engine (a user's does
# when they rebuild). Rows: warm_ms (variant NAME_bare / NAME_ours / NAME_ours_here), warm_check.
set -euo pipefail
# shellcheck source=bench/figures/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# Alone (no --raw): its own raw file, and a summary printed at the end.
STANDALONE_REPORT=1
[[ " $* " != *" --raw "* ]] || STANDALONE_REPORT=0
[ "$STANDALONE_REPORT" = 0 ] || RAW="$RESULTS/warm-raw.tsv"
parse_common_args "$@"
[ "$STANDALONE_REPORT" = 0 ] || : >"$RAW"
parse_only "hello,with_deps"

TAGS=()
cleanup_hook() { [ ${#TAGS[@]} -eq 0 ] || rmi "${TAGS[@]}"; }

# change NAME PROJECT N: the one-line change number N. Mix (1.14) compares mtimes in whole
# seconds: an edit in the second of the previous compile would go unseen, so wait that out.
change() {
  sleep 1.1
  case "$1" in
    hello) sed -i -E "s/^  @recv_timeout [0-9_]+$/  @recv_timeout $((5000 + $3))/" "$2/lib/hello/server.ex" ;;
    with_deps) sed -i -E "s/def text, do: \"[^\"]*\"/def text, do: \"warm$3\"/" "$2/lib/with_deps/greeting.ex" ;;
  esac
}

# measure NAME SOURCE_DIR
measure() {
  local name=$1 proj="$FIGURE_WORK/$1" tag="bench/$1:warm" i n=0 ms off
  TAGS+=("$tag")
  mkdir -p "$proj"
  tar -C "$2" --exclude=./_build --exclude=./deps -c . | tar -C "$proj" -x
  grep -q 'path: "../.."' "$proj/mix.exs" || die "$name/mix.exs no longer has the docker_release path dep"
  sed -i "s|path: \"../..\"|path: \"$ROOT\"|" "$proj/mix.exs"
  grep -q 'only: :dev, runtime: false' "$proj/mix.exs" || die "$name/mix.exs no longer declares docker_release only: :dev"
  sed -i 's/only: :dev, runtime: false/only: [:dev, :prod], runtime: false/' "$proj/mix.exs"
  case "$name" in
    hello) grep -qE '^  @recv_timeout [0-9_]+$' "$proj/lib/hello/server.ex" || die "hello's server.ex changed shape" ;;
    with_deps) grep -q 'def text, do: "hello"' "$proj/lib/with_deps/greeting.ex" || die "with_deps' greeting.ex changed shape" ;;
  esac
  bare() { (cd "$proj" && MIX_ENV=prod mix release --overwrite); }
  ours() { in_project "$proj" mix docker.release --tag "$tag"; }
  ours_here() { (cd "$proj" && MIX_ENV=prod mix docker.release --tag "$tag"); }

  log "warm $name: untimed round (compiles the copy in dev and prod, loads a first image)"
  in_project "$proj" mix compile >>"$LOG" 2>&1 || die "the $name copy does not compile (see $LOG)"
  timed bare >/dev/null || die "mix release failed for $name (see $LOG)"
  timed ours >/dev/null || die "mix docker.release failed for $name (see $LOG)"
  timed ours_here >/dev/null || die "MIX_ENV=prod mix docker.release failed for $name (see $LOG)"
  log "warm $name: $RUNS runs each, alternating"
  for i in $(seq "$RUNS"); do
    n=$((n + 1)) && change "$name" "$proj" "$n"
    off=$(log_size)
    ms=$(timed bare) || die "mix release failed for $name on run $i (see $LOG)"
    record warm_ms "${name}_bare" "$i" "$ms"
    [ "$(tail -c +$((off + 1)) "$LOG" | grep -c '^Compiling 1 file (.ex)')" = 1 ] ||
      note "warm $name run $i" "warm: bare run $i ($name) did not compile exactly one file"
    n=$((n + 1)) && change "$name" "$proj" "$n"
    off=$(log_size)
    ms=$(timed ours) || die "mix docker.release failed for $name on run $i (see $LOG)"
    record warm_ms "${name}_ours" "$i" "$ms"
    [ "$(tail -c +$((off + 1)) "$LOG" | grep -c '^Compiling 1 file (.ex)')" = 1 ] ||
      note "warm $name run $i" "warm: ours run $i ($name) did not compile exactly one file"
    n=$((n + 1)) && change "$name" "$proj" "$n"
    off=$(log_size)
    ms=$(timed ours_here) || die "MIX_ENV=prod mix docker.release failed for $name on run $i (see $LOG)"
    record warm_ms "${name}_ours_here" "$i" "$ms"
    tail -c +$((off + 1)) "$LOG" | grep -q 'in this VM)$' ||
      note "warm $name run $i" "warm: ours_here run $i ($name) did not build the release in its own VM"
    [ "$(tail -c +$((off + 1)) "$LOG" | grep -c '^Compiling 1 file (.ex)')" = 1 ] ||
      note "warm $name run $i" "warm: ours_here run $i ($name) did not compile exactly one file"
    warn "$name run $i/$RUNS done"
  done
  # The last image serves the last change.
  local cid out
  cid=$(docker run -d "$tag" eval 'IO.puts(:ok)' 2>>"$LOG") || die "docker run $tag failed"
  docker wait "$cid" >/dev/null
  out=$(docker logs "$cid" 2>&1 || true)
  docker rm -f "$cid" >/dev/null 2>&1 || true
  record warm_check "$name" 1 "$([ "$out" = ok ] && echo yes || echo "no: ${out:0:160}")"
}

record load1 warm 0 "$(cut -d' ' -f1 /proc/loadavg)"
[[ ",$WHICH," != *",hello,"* ]] || measure hello "$HELLO"
[[ ",$WHICH," != *",with_deps,"* ]] || measure with_deps "$WITH_DEPS"

[ "$STANDALONE_REPORT" = 0 ] || python3 "$BENCH/report_figures.py" "$RAW" warm
