# shellcheck shell=bash
# Helpers shared by bench/run, bench/builder.sh and bench/figures/*.sh (source it; not run on
# its own). Defines functions only; the sourcing script sets RAW (raw rows: metric variant run
# value detail) and LOG (output of every measured command), and may redefine log/warn/die.

log() { printf '\n==> %s\n' "$*" >&2; }
warn() { printf '%s: %s\n' "$(basename "$0")" "$*" >&2; }
die() { warn "error: $*"; exit 1; }

# record METRIC VARIANT RUN VALUE [DETAIL]
record() {
  local detail=${5:-}
  detail=${detail//$'\t'/ }
  printf '%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" "${detail//$'\n'/ }" >>"$RAW"
}
note() { record note "$1" 0 - "$2"; warn "note: $2"; }
now_ms() { echo $(($(date +%s%N) / 1000000)); }

# timed CMD... : runs CMD (output to the log), prints its wall time in ms; fails as CMD does.
timed() {
  local t0 t1
  { printf '\n$'; printf ' %q' "$@"; printf '\n'; } >>"$LOG"
  t0=$(now_ms)
  "$@" >>"$LOG" 2>&1 || return $?
  t1=$(now_ms)
  echo $((t1 - t0))
}

log_size() { stat -c %s "$LOG"; }
compiled_since() { tail -c +$(($1 + 1)) "$LOG" | grep -qE '^Compiling [0-9]+ file|building native code|^ +Compiling '; }

rmi() { docker rmi -f "$@" >/dev/null 2>&1 || true; }
image_size() { docker image inspect -f '{{.Size}}' "$1"; }
