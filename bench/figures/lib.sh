# shellcheck shell=bash disable=SC2034 # variables used by the scripts that source this
# Shared by the figure scripts in bench/figures/ (source it; not run on its own).
#
# Each figure script runs alone or from bench/run, takes
#   --raw FILE   append raw rows here (bench/run's raw.tsv: metric variant run value detail)
#   --log FILE   append the output of every measured command here
#   --runs N     timed runs per variant (alternating A B A B after one untimed warm-up round)
# and exits non-zero when it could not measure (bench/run then reports it as not run).
# Rows, notes and timings come from bench/common.sh, as in bench/run, so they read the same.

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BENCH="$ROOT/bench"
HELLO="$ROOT/examples/hello"
WITH_DEPS="$ROOT/examples/with_deps"
RESULTS="$BENCH/results"
RAW="$RESULTS/raw.tsv"
LOG="$RESULTS/run.log"
RUNS=5
MINBASE_IMAGE=docker-release-bench/minbase:bookworm
SYNTH="$RESULTS/synthetic/rel" # the large synthetic release, cached (bench/synthetic_release.py)
FIGURE_ARGS=()                 # arguments a figure script did not recognise

parse_common_args() {
  while [ $# -gt 0 ]; do
    case "$1" in
      --raw) RAW=$2; shift 2 ;;
      --log) LOG=$2; shift 2 ;;
      --runs) RUNS=$2; shift 2 ;;
      *) FIGURE_ARGS+=("$1"); shift ;;
    esac
  done
  [[ "$RUNS" =~ ^[1-9][0-9]*$ ]] || die "--runs must be a positive integer"
  mkdir -p "$(dirname "$RAW")" "$(dirname "$LOG")"
  touch "$RAW" "$LOG"
}

# parse_only DEFAULT: WHICH (the parts a figure measures) from --only in FIGURE_ARGS, else
# DEFAULT; any other argument left is an error.
parse_only() {
  WHICH=$1
  set -- "${FIGURE_ARGS[@]+"${FIGURE_ARGS[@]}"}"
  while [ $# -gt 0 ]; do
    case "$1" in
      --only) WHICH=$2; shift 2 ;;
      *) die "unknown argument $1" ;;
    esac
  done
}

# shellcheck source=bench/common.sh
. "$BENCH/common.sh"

# in_project DIR CMD... : run a Mix command in DIR the way a user would (dev env).
in_project() {
  local dir=$1
  shift
  (cd "$dir" && env -u MIX_ENV "$@")
}

# ensure_synth: make (or reuse) the synthetic release at $SYNTH.
ensure_synth() {
  local info
  info=$(python3 "$BENCH/synthetic_release.py" "$SYNTH" 2>>"$LOG") ||
    die "bench/synthetic_release.py failed (see $LOG)"
  SYNTH_BYTES=$(python3 -c 'import json,sys; print(json.load(sys.stdin)["bytes"])' <<<"$info")
  SYNTH_FILES=$(python3 -c 'import json,sys; print(json.load(sys.stdin)["files"])' <<<"$info")
}

# FIGURE_WORK: a temporary directory removed on exit (plus whatever cleanup_hook does).
FIGURE_WORK=$(mktemp -d "${TMPDIR:-/tmp}/bench-figure.XXXXXX")
cleanup_hook() { :; }
figure_cleanup() {
  cleanup_hook || true
  rm -rf "$FIGURE_WORK"
}
trap figure_cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
