defmodule DockerRelease.E2E.ConcurrentBuildsTest do
  # Two `mix docker.release` runs in the same project at the same time (CI jobs building two
  # variants, a developer building while a test suite runs) must not break each other.
  use ExUnit.Case, async: false
  import DockerRelease.E2E

  @moduletag :engine

  setup_all do
    tmp = tmp_dir!()
    small = release_copy!(Path.join(tmp, "small"))
    big = Path.join(tmp, "big")
    {_, 0} = cmd("cp", ["-a", small, big])
    priv = Path.join(big, "lib/hello-0.1.0/priv")
    File.mkdir_p!(priv)
    {bytes, 0} = cmd("head", ["-c", "200M", "/dev/urandom"], stderr: false, timeout: 60)
    File.write!(Path.join(priv, "random.bin"), bytes)
    %{tmp: tmp, small: small, big: big}
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
