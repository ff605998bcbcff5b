defmodule DockerRelease.E2E.BuilderInterruptTest do
  # A `mix docker.release --builder` killed in the middle of the build must leave no temporary
  # container behind, whatever the signal, without any later run of the task to sweep it:
  # the container lives only as long as the task's attach to its stdin (builder.rs, step 4).
  #
  # The task runs with stdin at end-of-file, as under CI: on SIGINT the BEAM's break handler
  # reads EOF and halts at once. (With an open stdin pipe it would wait in the BREAK menu.)
  use ExUnit.Case, async: false
  @moduletag :engine

  import DockerRelease.E2E
  import DockerRelease.E2E.Builder

  # How long the engine may take to remove the container once the task is gone.
  @gone_within_ms 15_000

  # The builder's own compile lines: indented by the task, unlike the host's.
  @compiling ~r/^    (==> (alpha|beta|gamma|delta|with_deps)|Compiling \d+ files? \(\.ex\))$/

  setup_all do
    %{builder: ensure_builder!("bookworm")}
  end

  # Starts a --no-cache build of a with_deps copy (the whole project compiles, so the signal
  # lands during compilation), sends SIG`signal` to the BEAM running mix once the builder
  # compiles, and waits until no container of that process is left.
  defp interrupt!(builder, signal) do
    dir = example_copy!("with_deps", "dr-e2e-interrupt")
    tag = "#{unique_repo("dr-e2e-interrupt")}/with_deps:t"
    on_exit(fn -> rm_images([tag]) end)

    handle =
      start_mix_release_no_stdin(["--builder", builder, "--no-cache", "--tag", tag], cd: dir)

    pid = beam_pid!(handle)
    owner = owner(pid)
    out = await_output(handle, @compiling, 180_000)

    # The build is under way in a container of ours: that is what must go away.
    assert [_container] = owned_containers(owner), out
    signal!(pid, signal)
    signalled = System.monotonic_time(:millisecond)

    wait_until("no container owned by #{owner} after SIG#{signal}", @gone_within_ms, fn ->
      owned_containers(owner) == []
    end)

    gone_ms = System.monotonic_time(:millisecond) - signalled
    {out, status} = await_exit(handle, 60_000)

    refute out =~ "==> reading the release from the builder",
           "the build got past compiling before the signal arrived; the test proves nothing:\n#{out}"

    refute image_exists?(tag)
    # No process of the task is left either.
    refute File.exists?("/proc/#{pid}")
    %{out: out, status: status, gone_ms: gone_ms}
  end

  for signal <- ~w(INT TERM KILL) do
    @tag signal: signal
    test "SIG#{signal} to mix while the builder compiles leaves no container", ctx do
      %{gone_ms: ms, status: status} = interrupt!(ctx.builder, ctx.signal)

      IO.puts(
        "\n  SIG#{ctx.signal}: container gone #{ms} ms after the signal; mix exited #{status}"
      )
    end
  end

  # SIGTERM (a CI cancellation) must not look like success: the task halts with 143.
  test "SIGTERM during the build makes mix exit with a failure status", ctx do
    %{status: status, out: out} = interrupt!(ctx.builder, "TERM")
    assert status != 0, "mix exited 0 after SIGTERM, with no image built:\n#{out}"
  end
end
