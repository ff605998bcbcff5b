#!/usr/bin/env bash
# Figure "install": what adopting docker_release costs before the first image.
#
#   bench/figures/install.sh [--raw F] [--log F] [--runs N] [--only prebuilt,source]
#
# prebuilt: the package as Hex would ship it (exactly mix.exs's `files:`, its checksum file
#   listing the artifact scripts/nif-artifact.sh builds here), served by a local HTTP server
#   (python3 -m http.server; DOCKER_RELEASE_NIF_BASE_URL points at it). Per run: a fresh copy
#   of examples/hello using that package, an empty HOME and XDG cache, a PATH without cargo,
#   rustc or a C compiler; time the first `mix docker.release` (compiles the project and the
#   library, fetches and verifies the NIF, builds the release and the image) and then the
#   second (nothing to fetch). Target: first <= second + 15 s.
# source: DOCKER_RELEASE_BUILD=1 in another fresh copy of the package (so cargo's target
#   directory is empty; CARGO_TARGET_DIR unset): time `mix compile` of a fresh project, which
#   builds the NIF from the package's sources; count the crates cargo compiled (its
#   `Compiling` lines) and the crates in the NIF's dependency tree (`cargo tree -e normal`).
#   One run (minutes on two cores).
# Rows: install_ms (first/second), install_check, source_ms, source_crates (compiled/tree).
set -euo pipefail
# shellcheck source=bench/figures/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
STANDALONE_REPORT=1
[[ " $* " != *" --raw "* ]] || STANDALONE_REPORT=0
[ "$STANDALONE_REPORT" = 0 ] || RAW="$RESULTS/install-raw.tsv"
parse_common_args "$@"
# Absolute: the commands below run in other directories.
RAW=$(realpath "$RAW") LOG=$(realpath "$LOG")
[ "$STANDALONE_REPORT" = 0 ] || : >"$RAW"
parse_only "prebuilt,source"

TAGS=()
SERVER_PID=
cleanup_hook() {
  [ -z "$SERVER_PID" ] || kill "$SERVER_PID" 2>/dev/null || true
  [ ${#TAGS[@]} -eq 0 ] || rmi "${TAGS[@]}"
}

CHECKSUM=checksum-Elixir.DockerRelease.Native.exs

# unpack_package DEST: every file mix.exs's `files:` lists, copied from this checkout.
unpack_package() {
  local dest=$1 files
  files=$(cd "$ROOT" && mix run --no-start -e \
    'IO.puts(Enum.join(Mix.Project.config()[:package][:files], " "))' 2>>"$LOG" | tail -1)
  [ -n "$files" ] || die "could not read package files from mix.exs (see $LOG)"
  mkdir -p "$dest"
  # shellcheck disable=SC2086 # a list of paths without spaces
  (cd "$ROOT" && cp -a --parents $files "$dest")
}

# app_using PKG DIR: a fresh copy of examples/hello whose docker_release dependency is PKG.
app_using() {
  mkdir -p "$2"
  tar -C "$HELLO" --exclude=./_build --exclude=./deps -c . | tar -C "$2" -x
  grep -q 'path: "../.."' "$2/mix.exs" || die "examples/hello/mix.exs no longer has the path dep"
  sed -i "s|path: \"../..\"|path: \"$1\"|" "$2/mix.exs"
}

# toolless_bin DIR: links to every program on PATH except compilers and Rust.
toolless_bin() {
  local dir=$1 d f name
  mkdir -p "$dir"
  for d in /usr/local/sbin /usr/local/bin /usr/sbin /usr/bin /sbin /bin; do
    [ -d "$d" ] || continue
    for f in "$d"/*; do
      name=$(basename "$f")
      [[ "$name" =~ ^(cc|c\+\+|c89|c99|gcc|g\+\+|cpp|clang|clang\+\+|cargo|rustc|rustup|rustdoc)(-[0-9.]+)?$ ||
        "$name" == *-gcc* || "$name" == *-g++* || "$name" == *-cc ]] && continue
      [ -e "$dir/$name" ] || ln -s "$f" "$dir/$name"
    done
  done
  ! PATH=$dir command -v cargo >/dev/null && ! PATH=$dir command -v cc >/dev/null ||
    die "the tool-less PATH still has cargo or cc"
}

prebuilt() {
  local artifacts="$FIGURE_WORK/artifacts" pkg="$FIGURE_WORK/pkg/docker_release" bin="$FIGURE_WORK/bin"
  local port i app home tag ms1 ms2 off check
  log "install: the NIF artifact (scripts/nif-artifact.sh build) and the package"
  "$ROOT/scripts/nif-artifact.sh" build "$artifacts" >>"$LOG" 2>&1 ||
    die "scripts/nif-artifact.sh build failed (see $LOG)"
  unpack_package "$pkg"
  cp "$artifacts/$CHECKSUM" "$pkg/$CHECKSUM"
  toolless_bin "$bin"
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  python3 -m http.server --bind 127.0.0.1 --directory "$artifacts" "$port" >>"$LOG" 2>&1 &
  SERVER_PID=$!
  for _ in $(seq 50); do curl -fs "http://127.0.0.1:$port/" >/dev/null && break || sleep 0.2; done
  log "install: $RUNS runs of a fresh project without Rust (first and second mix docker.release)"
  for i in $(seq "$RUNS"); do
    app="$FIGURE_WORK/app$i" home="$FIGURE_WORK/home$i" tag="bench/install:run$i"
    TAGS+=("$tag")
    app_using "$pkg" "$app"
    mkdir -p "$home"
    run() {
      (cd "$app" && env -u MIX_ENV -u CARGO_TARGET_DIR -u DOCKER_RELEASE_BUILD PATH="$bin" \
        HOME="$home" XDG_CACHE_HOME="$home/.cache" \
        DOCKER_RELEASE_NIF_BASE_URL="http://127.0.0.1:$port/" mix docker.release --tag "$tag")
    }
    off=$(log_size)
    ms1=$(timed run) || die "the first mix docker.release failed on run $i (see $LOG)"
    check=yes
    tail -c +$((off + 1)) "$LOG" | grep -q 'installed the prebuilt NIF .*sha256 verified' ||
      check="no: run $i did not install the prebuilt NIF"
    ! tail -c +$((off + 1)) "$LOG" | grep -qE '^ +Compiling [a-z_-]+ v[0-9]' ||
      check="no: run $i ran cargo"
    off=$(log_size)
    ms2=$(timed run) || die "the second mix docker.release failed on run $i (see $LOG)"
    ! tail -c +$((off + 1)) "$LOG" | grep -q 'fetching its prebuilt NIF' ||
      check="no: run $i fetched the NIF twice"
    record install_ms first "$i" "$ms1"
    record install_ms second "$i" "$ms2"
    record install_check prebuilt "$i" "$check"
    warn "install run $i/$RUNS: first ${ms1} ms, second ${ms2} ms"
  done
  kill "$SERVER_PID" 2>/dev/null || true
  SERVER_PID=
}

source_build() {
  local pkg="$FIGURE_WORK/pkg-src/docker_release" app="$FIGURE_WORK/app-src" ms off crates tree
  log "install: the NIF built from the package's sources (DOCKER_RELEASE_BUILD=1, empty target dir)"
  unpack_package "$pkg"
  rm -rf "$pkg/target"
  app_using "$pkg" "$app"
  build() { (cd "$app" && env -u MIX_ENV -u CARGO_TARGET_DIR DOCKER_RELEASE_BUILD=1 mix compile); }
  off=$(log_size)
  ms=$(timed build) || die "the source build failed (see $LOG)"
  crates=$(tail -c +$((off + 1)) "$LOG" | grep -cE '^ +Compiling [A-Za-z0-9_-]+ v[0-9]')
  tree=$(cargo tree --manifest-path "$pkg/Cargo.toml" --locked -p docker_release_nif --prefix none \
    -e normal 2>>"$LOG" |
    sed 's/ (\*)$//; s/ (proc-macro)$//' | sort -u | wc -l)
  record source_ms nif 1 "$ms"
  record source_crates compiled 1 "$crates"
  record source_crates tree 1 "$tree"
  warn "source build: ${ms} ms, $crates crates compiled, $tree in the normal dependency tree"
}

# The load when each part starts (other work on the machine slows the source build most).
[[ ",$WHICH," != *",prebuilt,"* ]] || { record load1 install 0 "$(cut -d' ' -f1 /proc/loadavg)" && prebuilt; }
[[ ",$WHICH," != *",source,"* ]] || { record load1 install_source 0 "$(cut -d' ' -f1 /proc/loadavg)" && source_build; }

[ "$STANDALONE_REPORT" = 0 ] || python3 "$BENCH/report_figures.py" "$RAW" install
