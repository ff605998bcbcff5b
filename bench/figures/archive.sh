#!/usr/bin/env bash
# Figure "archive": compressing a tree into a layer blob with its digests, ours vs the shell.
#
#   bench/figures/archive.sh [--raw F] [--log F] [--runs N] [--level L] [--dir DIR]
#                            [--compare-bin PATH]
#
# Over the same tree (default: the synthetic release, bench/synthetic_release.py), at the same
# gzip level (default 1, the task's default), alternating in each round:
#   ours       native/image_core/examples/write_layer.rs: layer::write_layer on the tree (sorted
#              normalised tar, gzip, sha256 of both the tar and the blob), blob discarded
#   pigz       tar -c DIR | pigz -L | sha256sum
#   gzip       tar -c DIR | gzip -L | sha256sum
#   compare    with --compare-bin: another build of the example (e.g. with a patched
#              layer.rs: copy the crate, build it, pass its target/release/examples/write_layer)
# Wall time of the whole process or pipeline. Output sizes come from one untimed round.
set -euo pipefail
# shellcheck source=bench/figures/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
parse_common_args "$@"
LEVEL=1
DIR=""
COMPARE=""
set -- "${FIGURE_ARGS[@]+"${FIGURE_ARGS[@]}"}"
while [ $# -gt 0 ]; do
  case "$1" in
    --level) LEVEL=$2; shift 2 ;;
    --dir) DIR=$2; shift 2 ;;
    --compare-bin) COMPARE=$2; shift 2 ;;
    *) die "unknown argument $1" ;;
  esac
done

command -v pigz >/dev/null || die "pigz not found"
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
compare() { "$COMPARE" "$DIR" "$LEVEL" >"$FIGURE_WORK/compare.json"; }
json() { python3 -c "import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])" "$@"; }

VARIANTS=(ours pigz gzip)
[ -z "$COMPARE" ] || VARIANTS+=(compare)

record archive_input_bytes tree 1 "$(du -sb "$DIR" | cut -f1)" "$DIR"
record archive_input_files tree 1 "$(find "$DIR" -type f | wc -l)"
record archive_level tree 1 "$LEVEL"
record load1 archive 0 "$(cut -d' ' -f1 /proc/loadavg)"

log "archive: untimed round (warm page cache; output sizes)"
ours
record archive_out_bytes ours 1 "$(json "$FIGURE_WORK/ours.json" size)"
record archive_tar_bytes ours 1 "$(json "$FIGURE_WORK/ours.json" uncompressed_size)"
digest=$(json "$FIGURE_WORK/ours.json" digest)
ours
[ "$(json "$FIGURE_WORK/ours.json" digest)" = "$digest" ] ||
  note "archive" "write_layer gave two different digests for the same tree"
for tool in pigz gzip; do
  record archive_out_bytes "$tool" 1 "$(bash -o pipefail -c "tar -C \"\$1\" -c . | $tool -$LEVEL | wc -c" _ "$DIR")"
done
record archive_tar_bytes tar 1 "$(tar -C "$DIR" -c . | wc -c)"
if [ -n "$COMPARE" ]; then
  compare
  record archive_out_bytes compare 1 "$(json "$FIGURE_WORK/compare.json" size)" "$COMPARE"
fi

log "archive: $RUNS timed rounds, alternating ${VARIANTS[*]}"
for i in $(seq "$RUNS"); do
  for v in "${VARIANTS[@]}"; do
    case "$v" in
      ours | compare) ms=$(timed "$v") || die "$v failed (see $LOG)" ;;
      *) ms=$(timed pipeline "$v") || die "the $v pipeline failed (see $LOG)" ;;
    esac
    record archive_ms "$v" "$i" "$ms"
  done
  warn "round $i/$RUNS done"
done
