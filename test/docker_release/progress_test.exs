defmodule DockerRelease.ProgressTest do
  use ExUnit.Case, async: true
  doctest DockerRelease.Progress

  alias DockerRelease.Progress

  defp text({out, state}), do: {IO.iodata_to_binary(out), state}

  test "on a terminal each update rewrites the line; another line first ends it" do
    s = Progress.new(:tty)
    {out, s} = text(Progress.bytes(s, "app layer", 1_000, 0))
    assert out == "\r\e[2K    app layer: 1.0 kB"
    {out, s} = text(Progress.bytes(s, "app layer", 2_000_000, 1_000))
    assert out == "\r\e[2K    app layer: 2.0 MB, 2.0 MB/s"
    {out, s} = text(Progress.interrupt(s))
    assert out == "\n"
    assert {"", _} = text(Progress.interrupt(s))
    # A new step ends the previous one's line first.
    {_, s} = Progress.bytes(s, "app layer", 1, 0)
    {out, _} = text(Progress.bytes(s, "load", 5, 10))
    assert out == "\n\r\e[2K    load: 5 B"
  end

  test "off a terminal a line comes only once a step has lasted an interval, then every interval" do
    s = Progress.new(:plain, 10_000)
    {out, s} = text(Progress.bytes(s, "push", 1, 0))
    assert out == ""
    {out, s} = text(Progress.bytes(s, "push", 5_000_000, 9_999))
    assert out == ""
    {out, s} = text(Progress.tick(s, 10_000))
    assert out == "    push: 5.0 MB, 500.0 kB/s\n"
    {out, s} = text(Progress.tick(s, 15_000))
    assert out == ""
    {out, _} = text(Progress.tick(s, 20_000))
    assert out == "    push: 5.0 MB, 250.0 kB/s\n"
  end

  test "a step resumed after another line counts its rate from the resumption" do
    # The builder's reads: 100 MB with the release, then planning lines, then 10 MB more.
    s = Progress.new(:tty)
    {_, s} = Progress.bytes(s, "read from the builder", 100_000_000, 0)
    {_, s} = Progress.interrupt(s)
    {_, s} = Progress.bytes(s, "read from the builder", 100_000_000, 60_000)
    {out, _} = text(Progress.bytes(s, "read from the builder", 110_000_000, 61_000))
    assert out == "\r\e[2K    read from the builder: 110.0 MB, 10.0 MB/s"
  end

  test "quiet prints nothing" do
    assert {[], _} = Progress.bytes(Progress.new(:quiet), "load", 1, 0)
  end

  test "the interval comes from DOCKER_RELEASE_PROGRESS_EVERY, in seconds" do
    assert Progress.interval(nil) == 10_000
    assert Progress.interval("3") == 3_000
    assert Progress.interval("0") == 10_000
    assert Progress.interval("x") == 10_000
    assert Progress.interval("0.5") == 500
    assert Progress.interval("0.01") == 100
    assert Progress.interval("-1") == 10_000
    assert Progress.interval("1s") == 10_000
  end
end
