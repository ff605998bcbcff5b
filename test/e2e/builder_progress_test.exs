defmodule DockerRelease.E2E.BuilderProgressTest do
  # The transfers of a `--builder` build show byte progress like the other long steps: the
  # project's upload into the builder container and the reads of the release (and the runtime
  # files) from it. On a terminal (the task under `script`) a line that rewrites itself; off one
  # a plain line per interval. The project carries 200 MB of incompressible bytes in `priv/`,
  # so both transfers last a while (about 0.6 s each here).
  use ExUnit.Case, async: false
  @moduletag :engine

  import DockerRelease.E2E
  import DockerRelease.E2E.Builder

  setup_all do
    %{builder: ensure_builder!("bookworm")}
  end

  setup ctx do
    repo = unique_repo("dr-e2e-bprogress")
    on_exit(fn -> rm_images(["#{repo}/hello:tty", "#{repo}/hello:plain"]) end)
    dir = example_copy!("hello", "dr-e2e-bprogress")
    File.mkdir_p!(Path.join(dir, "priv"))

    File.open!(Path.join(dir, "priv/big.bin"), [:write, :binary], fn f ->
      for _ <- 1..20, do: IO.binwrite(f, :rand.bytes(10_000_000))
    end)

    %{repo: repo, dir: dir, builder: ctx.builder}
  end

  defp args(ctx, tag),
    do: [
      "--builder",
      ctx.builder,
      "--tag",
      "#{ctx.repo}/hello:#{tag}",
      "--compression-level",
      "1"
    ]

  test "on a terminal: the upload and the reads update one line each", ctx do
    command = Enum.join(["mix", "docker.release" | args(ctx, "tty")], " ")

    {out, status} =
      cmd("script", ["-qec", command, "/dev/null"],
        cd: ctx.dir,
        env: [{"MIX_ENV", nil}],
        timeout: 600
      )

    assert status == 0, out

    for step <- ["upload to the builder", "read from the builder"] do
      updates = Regex.scan(~r/\r\e\[2K    #{step}: ([\d.]+) ([kM]B)/, out)
      assert length(updates) >= 2, "#{step}: #{inspect(updates)}\n#{out}"
      mb = Enum.map(updates, fn [_, n, unit] -> mb(n, unit) end)
      assert List.last(mb) > hd(mb), out
      # Most of priv/big.bin shown going through (the last messages may fall to the NIF's
      # ten-a-second limit).
      assert List.last(mb) >= 100, out
    end

    # The upload's line is ended before the builder's next line.
    assert out =~ ~r/upload to the builder: [^\r\n]*\r?\n==> /, out
  end

  test "off a terminal: plain lines while a transfer lasts longer than the interval", ctx do
    {out, status} =
      mix_release(args(ctx, "plain"),
        cd: ctx.dir,
        env: [{"DOCKER_RELEASE_PROGRESS_EVERY", "0.2"}],
        timeout: 600
      )

    assert status == 0, out
    refute out =~ "\r"

    for step <- ["upload to the builder", "read from the builder"] do
      # (The rate shows from 0.5 s into a step.)
      assert out =~ ~r/^    #{step}: [\d.]+ [kM]B(, [\d.]+ [kM]B\/s)?$/m, "#{step}:\n#{out}"
    end
  end

  defp mb(n, "MB"), do: String.to_float(n)
  defp mb(n, "kB"), do: String.to_float(n) / 1000
end
