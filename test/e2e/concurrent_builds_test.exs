defmodule DockerRelease.E2E.ConcurrentBuildsTest do
  # `mix docker.release` runs in the same project at the same time (CI jobs building two
  # variants, a developer building while a test suite runs) must not break each other.
  use ExUnit.Case, async: false
  import DockerRelease.E2E
  import DockerRelease.E2E.Builder, only: [beam_pid!: 1, serve_and_get!: 1]

  @moduletag :engine

  setup_all do
    tmp = tmp_dir!()
    small = release_copy!(Path.join(tmp, "small"))
    big = big_release_copy!(small, Path.join(tmp, "big"))
    %{tmp: tmp, small: small, big: big}
  end

  # Several runs in one project, each building different code (a value compiled in from the
  # environment, as a CI matrix or an editor hook would): they build one at a time, the later
  # ones saying whose lock they wait for, and every image serves what its own run built.
  test "parallel host builds in one project wait for each other; each image is its own", ctx do
    project = project_copy!(Path.join(ctx.tmp, "project"))
    repo = unique_repo()
    runs = for i <- 1..3, do: {i, "#{repo}/hello:run#{i}"}
    on_exit(fn -> rm_images(Enum.map(runs, &elem(&1, 1))) end)

    started =
      for {i, tag} <- runs do
        handle =
          start_mix_release(["--tag", tag],
            cd: project,
            env: [{"HELLO_BUILD", "run#{i}"}]
          )

        {i, tag, handle, beam_pid!(handle)}
      end

    pids = Enum.map(started, &elem(&1, 3))

    finished =
      for {i, tag, handle, pid} <- started do
        {out, status} = await_exit(handle, 600_000)
        assert status == 0, "run #{i} failed:\n#{out}"
        {i, tag, out, pid}
      end

    waits =
      for {_i, _tag, out, pid} <- finished,
          [_, holder] <-
            Regex.scan(~r/waiting for another mix docker.release \(OS pid (\d+)\)/, out) do
        holder = String.to_integer(holder)
        assert holder in pids and holder != pid, "waited for #{holder}, runs are #{inspect(pids)}"
        holder
      end

    assert length(waits) >= 2, "the later runs say whose lock they wait for"

    for {i, tag, _out, _pid} <- finished do
      assert serve_and_get!(tag) =~ "(build run#{i})"
    end
  end

  # A copy of examples/hello whose greeting carries a value compiled in from HELLO_BUILD,
  # compiled once (the task itself) so the runs start from a ready project.
  defp project_copy!(dir) do
    File.mkdir_p!(dir)

    for entry <- ["config", "lib", "mix.exs"],
        do: File.cp_r!(Path.join(hello_dir(), entry), Path.join(dir, entry))

    edit!(Path.join(dir, "mix.exs"), ~s(path: "../.."), ~s(path: #{inspect(root())}))

    # A value compiled in; Mix recompiles the module when HELLO_BUILD differs from it.
    server = Path.join(dir, "lib/hello/server.ex")

    edit!(
      server,
      "  @recv_timeout 5_000\n",
      """
        @recv_timeout 5_000
        @build System.get_env("HELLO_BUILD", "none")
        def __mix_recompile__?, do: System.get_env("HELLO_BUILD", "none") != @build
      """
    )

    edit!(server, ~S|hello from hello #{vsn}|, ~S|hello from hello #{vsn} (build #{@build})|)

    {out, status} = cmd("mix", ["compile"], cd: dir, env: [{"MIX_ENV", nil}], timeout: 600)
    assert status == 0, out
    dir
  end

  defp edit!(file, from, to) do
    text = File.read!(file)
    assert text =~ from, "#{file} no longer contains #{inspect(from)}"
    File.write!(file, String.replace(text, from, to))
  end

  # Each run has its own scratch directory (lib/docker_release.ex, scratch_dir!/2).
  test "a second build started while the first writes its layers: both succeed", ctx do
    a_out = Path.join(ctx.tmp, "a.tar")
    b_out = Path.join(ctx.tmp, "b.tar")

    # A: the big release, its 200 MB app layer compressed at level 6 (seconds of work).
    a =
      start_mix_release([
        "--from-release",
        ctx.big,
        "--output",
        a_out,
        "--tag",
        "dr-e2e/hello:a",
        "--compression-level",
        "6"
      ])

    await_output(a, ~r/writing layer (\d+)\/\1: app/)

    # B starts while A writes its last layer.
    {b_log, b_status} =
      mix_release(["--from-release", ctx.small, "--output", b_out, "--tag", "dr-e2e/hello:b"])

    {a_log, a_status} = await_exit(a)
    assert b_status == 0, b_log
    assert a_status == 0, "the first build failed while the second ran:\n#{a_log}"
    assert printed_id!(a_log) != printed_id!(b_log)
    assert File.stat!(a_out).size > 200 * 1024 * 1024
    assert File.exists?(b_out)
  end
end
