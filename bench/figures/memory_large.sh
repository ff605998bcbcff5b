#!/usr/bin/env bash
# Figure "memory-large": peak memory of `mix docker.release --no-cache --from-release SYNTH --output X.tar`
# (run in examples/hello) over the large synthetic release (bench/synthetic_release.py):
# thousands of files rather than bench/run's one big file. Peak of the summed VmRSS of the whole
# process tree (bench/memsample.py, every 20 ms); baseline `mix help docker.release`.
#
#   bench/figures/memory_large.sh [--raw F] [--log F] [--runs N]
#
# Rows: mem_large_peak_mb (ours, baseline), mem_large_ms, mem_large_out_bytes, mem_large_input_*.
set -euo pipefail
# shellcheck source=bench/figures/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
parse_common_args "$@"
[ ${#FIGURE_ARGS[@]} -eq 0 ] || die "unknown argument ${FIGURE_ARGS[0]}"

ensure_synth
record load1 memory_large 0 "$(cut -d' ' -f1 /proc/loadavg)"
record mem_large_input_bytes synth 1 "$SYNTH_BYTES"
record mem_large_input_files synth 1 "$SYNTH_FILES"
out="$FIGURE_WORK/x.tar"
peak="$FIGURE_WORK/peak"
build() {
  "$BENCH/memsample.py" -o "$peak" -- bash -c \
    "cd '$HELLO' && env -u MIX_ENV mix docker.release --no-cache --from-release '$SYNTH' --output '$out'"
}

log "memory-large: untimed run (compiles if needed)"
timed build >/dev/null || die "mix docker.release --output failed (see $LOG)"
rm -f "$out"
"$BENCH/memsample.py" -o "$peak" -- bash -c "cd '$HELLO' && env -u MIX_ENV mix help docker.release" >>"$LOG" 2>&1 &&
  record mem_large_peak_mb baseline 1 "$(cat "$peak")"
log "memory-large: $RUNS runs"
for i in $(seq "$RUNS"); do
  rm -f "$out"
  off=$(log_size)
  ms=$(timed build) || die "mix docker.release --output failed on run $i (see $LOG)"
  record mem_large_peak_mb ours "$i" "$(cat "$peak")"
  record mem_large_ms ours "$i" "$ms"
  record mem_large_out_bytes ours "$i" "$(stat -c %s "$out")"
  compiled_since "$off" && note "memory-large run $i" "memory-large: run $i included compiling (the library changed during the bench)"
  warn "run $i/$RUNS done"
done
