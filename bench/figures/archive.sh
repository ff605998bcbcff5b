#!/usr/bin/env bash
# Figure "archive": compressing a tree into a layer blob with its digests, ours vs the shell.
#
#   bench/figures/archive.sh [--raw F] [--log F] [--runs N] [--level L] [--dir DIR]
#                            [--baseline-bin PATH]
#
# Over the same tree (default: the synthetic release, bench/synthetic_release.py), at the same
# gzip level (default 1, the task's default), alternating in each round:
#   ours       native/image_core/examples/write_layer.rs: layer::write_layer on the tree (sorted
#              normalised tar, gzip, sha256 of both the tar and the blob), blob discarded
#   ours_1cpu  the same pinned to one CPU (taskset -c 0): compression on one thread
#   pigz       tar -c DIR | pigz -L | sha256sum
#   gzip       tar -c DIR | gzip -L | sha256sum
#   before     --baseline-bin: another build of the example (e.g. an older write_layer)
# Wall time of the whole process or pipeline. Output sizes come from one untimed round.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
parse_common_args "$@"
LEVEL=1
DIR=""
BASELINE=""
set -- "${FIGURE_ARGS[@]+"${FIGURE_ARGS[@]}"}"
while [ $# -gt 0 ]; do
  case "$1" in
    --level) LEVEL=$2; shift 2 ;;
    --dir) DIR=$2; shift 2 ;;
    --baseline-bin) BASELINE=$2; shift 2 ;;
    *) die "unknown argument $1" ;;
  esac
done

command -v pigz >/dev/null || die "pigz not found"
command -v taskset >/dev/null || die "taskset not found"
if [ -z "$DIR" ]; then
  ensure_synth
  DIR=$SYNTH
fi

log "archive: building the write_layer example (cargo build --release)"
(cd "$ROOT" && cargo build --release --quiet -p image_core --example write_layer) >>"$LOG" 2>&1 ||
  die "cannot build native/image_core/examples/write_layer.rs (see $LOG)"
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/examples/write_layer"

pipeline() { bash -o pipefail -c "tar -C \"\$1\" -c . | $1 -$LEVEL | sha256sum" _ "$DIR"; }
ours() { "$BIN" "$DIR" "$LEVEL" >"$FIGURE_WORK/ours.json"; }
ours_1cpu() { taskset -c 0 "$BIN" "$DIR" "$LEVEL" >"$FIGURE_WORK/ours_1cpu.json"; }
before() { "$BASELINE" "$DIR" "$LEVEL" >"$FIGURE_WORK/before.json"; }
json() { python3 -c "import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])" "$@"; }

VARIANTS=(ours pigz ours_1cpu gzip)
[ -n "$BASELINE" ] && VARIANTS+=(before)

record archive_input_bytes tree 1 "$(du -sb "$DIR" | cut -f1)" "$DIR"
record archive_input_files tree 1 "$(find "$DIR" -type f | wc -l)"
record archive_level tree 1 "$LEVEL"

log "archive: untimed round (warm page cache; output sizes)"
ours
record archive_out_bytes ours 1 "$(json "$FIGURE_WORK/ours.json" size)"
record archive_tar_bytes ours 1 "$(json "$FIGURE_WORK/ours.json" uncompressed_size)"
ours_1cpu
cmp -s <(json "$FIGURE_WORK/ours.json" digest) <(json "$FIGURE_WORK/ours_1cpu.json" digest) ||
  note "archive" "write_layer gave different digests on one CPU and on all: parallel compression is not deterministic"
for tool in pigz gzip; do
  record archive_out_bytes "$tool" 1 "$(bash -o pipefail -c "tar -C \"\$1\" -c . | $tool -$LEVEL | wc -c" _ "$DIR")"
done
record archive_tar_bytes tar 1 "$(tar -C "$DIR" -c . | wc -c)"
if [ -n "$BASELINE" ]; then
  before
  record archive_out_bytes before 1 "$(json "$FIGURE_WORK/before.json" size)"
fi

log "archive: $RUNS timed rounds, alternating ${VARIANTS[*]}"
for i in $(seq "$RUNS"); do
  for v in "${VARIANTS[@]}"; do
    case "$v" in
      ours | ours_1cpu | before) ms=$(timed "$v") || die "$v failed (see $LOG)" ;;
      *) ms=$(timed pipeline "$v") || die "the $v pipeline failed (see $LOG)" ;;
    esac
    record archive_ms "$v" "$i" "$ms"
  done
  warn "round $i/$RUNS done"
done
