#!/usr/bin/env bash
# Figure "responsiveness": how late a 10 ms timer fires in the VM that runs the build.
#
#   bench/figures/responsiveness.sh [--raw F] [--log F] [--runs N]
#
# `mix run --no-start` in examples/hello starts a process that loops on
# `Process.send_after(self(), :tick, 10)` and records, with :erlang.monotonic_time, how late
# each tick arrives; meanwhile the same VM calls `DockerRelease.Config.new!/3` and
# `DockerRelease.build/2` to assemble the synthetic release (bench/synthetic_release.py) into an
# archive (`output:`), as `mix docker.release --no-cache --from-release SYNTH --output X.tar` does.
# Two baselines with the same loop: "beside", the same build run meanwhile as a separate
# `mix docker.release` OS process (the CPU contention alone, no work in this VM), and "idle",
# 3 s with no build. Rounds alternate build, beside, idle.
# Rows: resp_max_ms, resp_p99_ms, resp_ticks, resp_build_ms (variants build, beside, idle).
set -euo pipefail
# shellcheck source=bench/figures/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
parse_common_args "$@"
[ ${#FIGURE_ARGS[@]} -eq 0 ] || die "unknown argument ${FIGURE_ARGS[0]}"

ensure_synth
SCRIPT="$FIGURE_WORK/lateness.exs"
cat >"$SCRIPT" <<'EOF'
# Env: RESP_MODE (build | idle), RESP_RELEASE, RESP_OUTPUT.
defmodule Lateness do
  @period 10

  def start do
    parent = self()
    spawn_link(fn -> loop(parent, []) end)
  end

  defp loop(parent, lates) do
    t0 = :erlang.monotonic_time(:microsecond)
    ref = Process.send_after(self(), :tick, @period)

    receive do
      :tick ->
        late = :erlang.monotonic_time(:microsecond) - t0 - @period * 1000
        loop(parent, [late | lates])

      :stop ->
        Process.cancel_timer(ref)
        send(parent, {:lateness, lates})
    end
  end

  def stop(pid) do
    send(pid, :stop)

    receive do
      {:lateness, lates} -> lates
    end
  end
end

mode = System.fetch_env!("RESP_MODE")
ticker = Lateness.start()
t0 = System.monotonic_time(:millisecond)

case mode do
  "build" ->
    project = Mix.Project.config()

    config =
      DockerRelease.Config.new!(
        project,
        [from_release: System.fetch_env!("RESP_RELEASE"), output: System.fetch_env!("RESP_OUTPUT")],
        File.cwd!()
      )

    {:ok, _} = DockerRelease.build(config, project)

  "beside" ->
    # The same build in another OS process (its own VM): what a busy machine alone does.
    {_, 0} =
      System.cmd(
        "mix",
        ~w(docker.release --no-cache --from-release #{System.fetch_env!("RESP_RELEASE")} --output #{System.fetch_env!("RESP_OUTPUT")}),
        env: [{"MIX_ENV", nil}],
        stderr_to_stdout: true
      )

  "idle" ->
    Process.sleep(3000)
end

elapsed = System.monotonic_time(:millisecond) - t0
lates = ticker |> Lateness.stop() |> Enum.sort()
n = length(lates)
p99 = Enum.at(lates, min(n - 1, trunc(n * 0.99)))

IO.puts(
  "LATENESS mode=#{mode} max_us=#{List.last(lates)} p99_us=#{p99} ticks=#{n} elapsed_ms=#{elapsed}"
)
EOF

out="$FIGURE_WORK/x.tar"
result="$FIGURE_WORK/result"
round() { # round MODE: one VM, one measurement; leaves the LATENESS line in $result
  rm -f "$out"
  (cd "$HELLO" && env -u MIX_ENV RESP_MODE="$1" RESP_RELEASE="$SYNTH" RESP_OUTPUT="$out" \
    mix run --no-start "$SCRIPT") >"$result" 2>&1
  local rc=$?
  cat "$result"
  return $rc
}
field() { grep -m1 '^LATENESS ' "$result" | tr ' ' '\n' | sed -n "s/^$1=//p"; }

record load1 responsiveness 0 "$(cut -d' ' -f1 /proc/loadavg)"
log "responsiveness: untimed round (compiles if needed)"
timed round build >/dev/null || die "the build in mix run failed (see $LOG)"
log "responsiveness: $RUNS rounds alternating build, beside and idle"
for i in $(seq "$RUNS"); do
  for mode in build beside idle; do
    off=$(log_size)
    timed round "$mode" >/dev/null || die "the $mode round failed on run $i (see $LOG)"
    record resp_max_ms "$mode" "$i" "$(awk "BEGIN {print $(field max_us) / 1000}")"
    record resp_p99_ms "$mode" "$i" "$(awk "BEGIN {print $(field p99_us) / 1000}")"
    record resp_ticks "$mode" "$i" "$(field ticks)"
    record resp_build_ms "$mode" "$i" "$(field elapsed_ms)"
    compiled_since "$off" && note "responsiveness run $i" "responsiveness: run $i ($mode) included compiling (the library changed during the bench)"
  done
  warn "round $i/$RUNS done"
done
rm -f "$out"
