defmodule DockerRelease.E2E.CookieTest do
  # The build-time cookie never reaches the image; a container without RELEASE_COOKIE makes its
  # own (rpc works, one log line says so); containers sharing RELEASE_COOKIE connect, others don't.
  use ExUnit.Case, async: false
  import DockerRelease.E2E

  @moduletag :engine

  @generated "generated a cookie for this container"

  setup_all do
    repo = unique_repo()
    tag = "#{repo}/hello:cookie"
    on_exit(fn -> rm_images([tag]) end)
    tmp = tmp_dir!()
    rel = release_copy!(Path.join(tmp, "rel"))
    archive = Path.join(tmp, "hello.tar")

    {_, id} = mix_release!(["--from-release", rel, "--tag", tag])
    {_, archive_id} = mix_release!(["--from-release", rel, "--tag", tag, "--output", archive])

    %{
      tag: tag,
      id: id,
      archive: archive,
      archive_id: archive_id,
      build_cookie: File.read!(Path.join(rel, "releases/COOKIE")),
      repo: repo
    }
  end

  test "the build-time cookie is in no layer of the image", ctx do
    cookie = String.trim(ctx.build_cookie)
    assert byte_size(cookie) >= 20, "unexpected build cookie #{inspect(cookie)}"
    # The archive holds the very image that was loaded into the engine.
    assert ctx.archive_id == ctx.id

    files = tar_files!(ctx.archive)
    {_config, layers} = manifest_paths!(files["manifest.json"])
    assert length(layers) >= 3

    uncompressed = for path <- layers, do: {path, :zlib.gunzip(Map.fetch!(files, path))}

    for {path, tar} <- uncompressed do
      assert :binary.match(tar, cookie) == :nomatch, "the build cookie is in layer #{path}"
      names = for {name, _, _, _, _, _, _} <- table!(tar), do: to_string(name)
      refute Enum.any?(names, &String.ends_with?(&1, "releases/COOKIE")), inspect(names)
    end

    # The search looked at real layer contents: the cookie snippet of env.sh is in one of them.
    assert Enum.any?(uncompressed, fn {_, tar} ->
             :binary.match(tar, "RELEASE_COOKIE is not set") != :nomatch
           end)

    # And nowhere else in the archive (config, manifests, index).
    for {name, bytes} <- files, name not in layers do
      assert :binary.match(bytes, cookie) == :nomatch, "the build cookie is in #{name}"
    end
  end

  test "without RELEASE_COOKIE a container generates one, says so once, and rpc works", ctx do
    c = run_detached!([ctx.tag])
    wait_listening!(c)

    {out, status} = docker(["exec", c, "/app/bin/hello", "rpc", "IO.puts(:pong)"])
    assert status == 0, out
    assert "pong" in String.split(out, "\n", trim: true), out
    # rpc reused the container's cookie: no second one was generated.
    refute out =~ @generated

    log = logs(c)
    assert length(String.split(log, @generated)) - 1 == 1, log

    # Two containers without RELEASE_COOKIE do not share a cookie.
    script = ~S|IO.puts("cookie=#{Node.get_cookie()}")|
    {o1, 0} = docker(["exec", c, "/app/bin/hello", "rpc", script])
    c2 = run_detached!([ctx.tag])
    wait_listening!(c2)
    {o2, 0} = docker(["exec", c2, "/app/bin/hello", "rpc", script])
    [_, k1] = Regex.run(~r/cookie=(\S+)/, o1)
    [_, k2] = Regex.run(~r/cookie=(\S+)/, o2)
    refute k1 == k2
    refute k1 == String.trim(ctx.build_cookie)
  end

  test "with RELEASE_COOKIE set no cookie is generated", ctx do
    c = run_detached!(["-e", "RELEASE_COOKIE=e2e-cookie-#{rand()}", ctx.tag])
    wait_listening!(c)
    {out, 0} = docker(["exec", c, "/app/bin/hello", "rpc", "IO.puts(:pong)"])
    assert out =~ "pong"
    refute logs(c) =~ @generated
    refute out =~ @generated

    {out, 0} = docker(["run", "--rm", "-e", "RELEASE_COOKIE=x", ctx.tag, "eval", "IO.puts(:ok)"])
    assert out =~ "ok"
    refute out =~ @generated
  end

  test "containers with the same RELEASE_COOKIE connect; with different cookies they don't",
       ctx do
    net = "dr-e2e-net-#{rand()}"
    docker!(["network", "create", net])
    on_exit(fn -> docker(["network", "rm", net]) end)

    start = fn name, cookie ->
      c =
        run_detached!([
          "--name",
          name,
          "--hostname",
          name,
          "--network",
          net,
          "-e",
          "RELEASE_COOKIE=#{cookie}",
          ctx.tag
        ])

      wait_listening!(c)
      c
    end

    suffix = rand()
    [n1, n2, n3] = for i <- 1..3, do: "dre2e-#{suffix}-c#{i}"
    same = "e2e-same-#{rand()}"
    start.(n1, same)
    start.(n2, same)
    start.(n3, "e2e-other-#{rand()}")

    rpc = fn name, code ->
      {out, status} = docker(["exec", name, "/app/bin/hello", "rpc", code])
      assert status == 0, out
      out |> String.split("\n", trim: true) |> List.last()
    end

    # RELEASE_DISTRIBUTION defaults to sname: the node is hello@<hostname>.
    assert rpc.(n2, "IO.puts(Node.self())") == "hello@#{n2}"
    assert rpc.(n2, ~s|IO.puts(Node.connect(:"hello@#{n1}"))|) == "true"
    assert rpc.(n3, ~s|IO.puts(Node.connect(:"hello@#{n1}"))|) == "false"
  end

  defp table!(tar) do
    {:ok, entries} = :erl_tar.table({:binary, tar}, [:verbose])
    entries
  end
end
