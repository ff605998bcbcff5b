defmodule DockerRelease.E2E.ProgressTest do
  # What people (and scripts) see while `mix docker.release` works: a self-updating byte
  # progress line on a terminal (the task run under `script`, which gives it a pty), plain
  # lines off one, and one line with `--quiet`.
  use ExUnit.Case, async: false
  @moduletag :engine

  import DockerRelease.E2E

  setup do
    repo = unique_repo("dr-e2e-progress")

    on_exit(fn ->
      rm_images(["#{repo}/hello:tty", "#{repo}/hello:plain", "#{repo}/hello:quiet"])
    end)

    # Incompressible bytes in the runtime layer, so that writing it at level 9 lasts seconds.
    dir = tmp_dir!("dr-e2e-progress")
    big = Path.join(dir, "big.bin")
    File.write!(big, :rand.bytes(48_000_000))
    # Warm: Mix has compiled what it needs, so the runs below print only the task's output.
    {out, status} = cmd("mix", ["compile"], cd: hello_dir(), env: [{"MIX_ENV", nil}])
    assert status == 0, out
    %{repo: repo, big: big}
  end

  defp args(tag, big),
    do: ["--tag", tag, "--extra-file", big, "--compression-level", "9", "--no-cache"]

  test "on a terminal: one progress line that rewrites itself, ended before the next step", ctx do
    command = Enum.join(["mix", "docker.release" | args("#{ctx.repo}/hello:tty", ctx.big)], " ")

    {out, status} =
      cmd("script", ["-qec", command, "/dev/null"],
        cd: hello_dir(),
        env: [{"MIX_ENV", nil}],
        timeout: 300
      )

    assert status == 0, out

    updates = Regex.scan(~r/\r\e\[2K    runtime layer: ([\d.]+) MB, [\d.]+ MB\/s/, out)
    assert length(updates) >= 2, out
    # The line grows, and the next step starts on a line of its own.
    [first | _] = sizes = Enum.map(updates, fn [_, mb] -> String.to_float(mb) end)
    assert List.last(sizes) > first, out
    assert out =~ ~r/MB\/s\r?\n==> writing layer 2\/3: erts/, out
  end

  test "off a terminal: a plain line every interval while a step lasts longer", ctx do
    {out, status} =
      mix_release(args("#{ctx.repo}/hello:plain", ctx.big),
        env: [{"DOCKER_RELEASE_PROGRESS_EVERY", "1"}]
      )

    assert status == 0, out
    refute out =~ "\r"
    assert out =~ ~r/^    runtime layer: [\d.]+ MB, [\d.]+ [kM]B\/s$/m, out
  end

  test "--quiet prints the image's tag and ID, nothing else", ctx do
    tag = "#{ctx.repo}/hello:quiet"

    {out, status} =
      cmd("mix", ["docker.release", "--quiet", "--tag", tag],
        cd: hello_dir(),
        env: [{"MIX_ENV", nil}],
        stderr: false,
        timeout: 300
      )

    assert status == 0, out
    assert [line] = String.split(out, "\n", trim: true), out
    assert line == "#{tag} #{image_inspect!(tag, "{{.Id}}")}"
  end
end
