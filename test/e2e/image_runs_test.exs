defmodule DockerRelease.E2E.ImageRunsTest do
  # The image `mix docker.release` loads into the engine runs the release: commands, HTTP with
  # :crypto (including OpenSSL's legacy provider), a numeric non-root user, utf8 file names, and
  # a clean, quick stop.
  use ExUnit.Case, async: false
  import DockerRelease.E2E

  @moduletag :engine

  setup_all do
    tag = "#{unique_repo()}/hello:t1"
    on_exit(fn -> rm_images([tag]) end)
    {_out, id} = mix_release!(["--tag", tag])
    %{tag: tag, image_id: id}
  end

  test "eval runs a command in the image", %{tag: tag} do
    {out, 0} = docker(["run", "--rm", tag, "eval", "IO.puts(:ok)"])
    assert "ok" in String.split(out, "\n", trim: true), out
  end

  test "the HTTP server answers on a mapped port, hashing with :crypto", %{tag: tag} do
    port = free_port()
    run_detached!(["-p", "127.0.0.1:#{port}:4000", tag])
    body = wait_http!(port, "/")
    assert body =~ "hello from hello 0.1.0"
    assert [_, hex] = Regex.run(~r/sha256\(path\)=([0-9a-f]{64})\b/, body), body
    assert hex == Base.encode16(:crypto.hash(:sha256, "/"), case: :lower)
  end

  test "PORT configures the port the server listens on", %{tag: tag} do
    port = free_port()
    run_detached!(["-e", "PORT=4321", "-p", "127.0.0.1:#{port}:4321", tag])
    assert wait_http!(port, "/") =~ "hello from hello"
  end

  test "OpenSSL's legacy provider is there: md4 works", %{tag: tag} do
    script = ~S"""
    IO.puts("md4=" <> Base.encode16(:crypto.hash(:md4, "x"), case: :lower))
    IO.puts("supported=#{:md4 in :crypto.supports(:hashs)}")
    """

    {out, 0} = docker(["run", "--rm", tag, "eval", script])
    # MD4("x"), as `printf x | openssl dgst -md4 -provider legacy` prints it.
    assert out =~ "md4=51b834b7c1ef0b59ea50888fcb39ace2", out
    assert out =~ "supported=true", out
  end

  test "the container runs as a numeric non-root user", %{tag: tag} do
    user = image_inspect!(tag, "{{.Config.User}}")
    assert user =~ ~r/^\d+:\d+$/
    refute user == "0:0"
    [uid, gid] = String.split(user, ":")
    refute uid == "0"

    script = ~S"""
    status = File.read!("/proc/self/status")
    [_, uid] = Regex.run(~r/^Uid:\s+(\d+)/m, status)
    [_, gid] = Regex.run(~r/^Gid:\s+(\d+)/m, status)
    IO.puts("ids=#{uid}:#{gid}")
    """

    {out, 0} = docker(["run", "--rm", tag, "eval", script])
    assert [_, real_uid, real_gid] = Regex.run(~r/ids=(\d+):(\d+)/, out), out
    refute real_uid == "0"
    assert {real_uid, real_gid} == {uid, gid}
  end

  test "file names are utf8", %{tag: tag} do
    {out, 0} = docker(["run", "--rm", tag, "eval", "IO.inspect(:file.native_name_encoding())"])
    assert out =~ ~r/^:utf8$/m, out
  end

  test "docker stop ends a running container with exit code 0 within 5 s", %{tag: tag} do
    port = free_port()
    c = run_detached!(["-p", "127.0.0.1:#{port}:4000", tag])
    wait_http!(port, "/")

    {micros, {out, status}} = :timer.tc(fn -> docker(["stop", "-t", "10", c]) end)
    assert status == 0, out
    ms = div(micros, 1000)
    assert ms < 5000, "docker stop took #{ms} ms"
    assert docker!(["inspect", "-f", "{{.State.ExitCode}}", c]) == "0"
  end
end
