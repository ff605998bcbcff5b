#!/usr/bin/env bash
# Figure "push": `mix docker.release --push` of examples/with_deps to a local registry, a full
# push (empty registry) vs an incremental one after a one-line change.
#
#   bench/figures/push.sh [--raw F] [--log F] [--runs N]
#
# A copy of examples/with_deps (in a temp dir, its docker_release path dependency pointed back
# at this checkout) gives two releases: v1 as is, v2 with lib/with_deps/greeting.ex changed by
# one line. A `docker-registry` on 127.0.0.1 (temp dir, stopped at the end) is emptied and
# restarted before every round; each round pushes v1 (full) then v2 (incremental), with
# `--from-release REL --push --tag 127.0.0.1:PORT/team/with_deps:N --metadata-file F` run in
# the copy. Bytes come from the metadata JSON: `pushed.uploaded_bytes` vs the image's compressed
# size (its layers' sizes + the config blob, whose size is what the full push uploaded beyond
# the layers). Rows: push_ms, push_uploaded_bytes, push_total_bytes, push_blobs.
set -euo pipefail
# shellcheck source=bench/figures/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
parse_common_args "$@"
[ ${#FIGURE_ARGS[@]} -eq 0 ] || die "unknown argument ${FIGURE_ARGS[0]}"
command -v docker-registry >/dev/null || die "docker-registry not found (apt-get install docker-registry)"

REG_DIR="$FIGURE_WORK/registry"
REG_PID=""
stop_registry() {
  if [ -n "$REG_PID" ]; then
    kill "$REG_PID" 2>/dev/null || true
    wait "$REG_PID" 2>/dev/null || true
    REG_PID=""
  fi
}
cleanup_hook() { stop_registry; }

PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
mkdir -p "$REG_DIR"
cat >"$REG_DIR/config.yml" <<EOF
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $REG_DIR/data
  delete:
    enabled: true
http:
  addr: 127.0.0.1:$PORT
EOF

# start_registry: an empty registry on 127.0.0.1:$PORT.
start_registry() {
  stop_registry
  rm -rf "$REG_DIR/data"
  docker-registry serve "$REG_DIR/config.yml" >>"$REG_DIR/log" 2>&1 &
  REG_PID=$!
  for _ in $(seq 100); do
    curl -fsS "http://127.0.0.1:$PORT/v2/" >/dev/null 2>&1 && return 0
    kill -0 "$REG_PID" 2>/dev/null || break
    sleep 0.1
  done
  tail -n 20 "$REG_DIR/log" >&2
  die "docker-registry did not start on 127.0.0.1:$PORT"
}

# The project copy and its two releases.
PROJ="$FIGURE_WORK/with_deps"
mkdir -p "$PROJ"
tar -C "$WITH_DEPS" --exclude=./_build --exclude=./deps -c . | tar -C "$PROJ" -x
grep -q 'path: "../.."' "$PROJ/mix.exs" || die "examples/with_deps/mix.exs no longer has the docker_release path dep"
sed -i "s|path: \"../..\"|path: \"$ROOT\"|" "$PROJ/mix.exs"
GREETING="$PROJ/lib/with_deps/greeting.ex"
grep -q 'def text, do: "hello"' "$GREETING" || die "lib/with_deps/greeting.ex changed shape"

log "push: releases v1 and v2 of a copy of examples/with_deps"
release() {
  (cd "$PROJ" && MIX_ENV=prod mix release --overwrite --quiet) >>"$LOG" 2>&1 ||
    die "mix release failed in the copy of examples/with_deps (see $LOG)"
  rm -rf "$FIGURE_WORK/rel-$1"
  cp -a "$PROJ/_build/prod/rel/with_deps" "$FIGURE_WORK/rel-$1"
}
release v1
sed -i 's|def text, do: "hello"|def text, do: "howdy"|' "$GREETING"
release v2

push() { # push VERSION TAG METADATA
  in_project "$PROJ" mix docker.release --no-cache --from-release "$FIGURE_WORK/rel-$1" \
    --push --tag "127.0.0.1:$PORT/team/with_deps:$2" --metadata-file "$3"
}
meta() { # meta FILE: uploaded_bytes uploaded_blobs skipped_blobs layer_bytes
  python3 - "$1" <<'PY'
import json, sys
m = json.load(open(sys.argv[1]))
p = m["pushed"]
print(p["uploaded_bytes"], p["uploaded_blobs"], p["skipped_blobs"], sum(l["size"] for l in m["layers"]))
PY
}

record load1 push 0 "$(cut -d' ' -f1 /proc/loadavg)"
log "push: untimed round (compiles the copy in dev)"
start_registry
timed push v1 1 "$FIGURE_WORK/m.json" >/dev/null || die "push failed (see $LOG)"
timed push v2 2 "$FIGURE_WORK/m.json" >/dev/null || die "push failed (see $LOG)"

log "push: $RUNS rounds of full (empty registry) then incremental"
for i in $(seq "$RUNS"); do
  start_registry
  for step in full incremental; do
    if [ "$step" = full ]; then v=v1 t=1; else v=v2 t=2; fi
    off=$(log_size)
    ms=$(timed push "$v" "$t" "$FIGURE_WORK/$step.json") || die "$step push failed on run $i (see $LOG)"
    read -r up nup nskip layers < <(meta "$FIGURE_WORK/$step.json")
    # The metadata lists the layers; the config blob's size is what the full push uploaded
    # beyond them (every blob goes up into an empty registry), and v2's config is the same size
    # give or take a few bytes.
    [ "$step" = full ] && config=$((up - layers))
    record push_ms "$step" "$i" "$ms"
    record push_uploaded_bytes "$step" "$i" "$up"
    record push_total_bytes "$step" "$i" "$((layers + config))" "layers $layers, config about $config"
    record push_blobs "$step" "$i" "$nup" "skipped $nskip"
    compiled_since "$off" && note "push run $i" "push: run $i ($step) included compiling (the library changed during the bench)"
  done
  warn "round $i/$RUNS done"
done
stop_registry
