defmodule DockerRelease.E2E.PodmanTest do
  # Podman as the engine, through its Docker-compatible API (`podman system service`), as a
  # user with `DOCKER_HOST=unix://…/podman.sock` meets it: a host build and a `--builder`
  # build load their images into Podman, the summary and the `cookie:` notice name `podman run`,
  # the images run with `podman run`, and no container of ours is left (nor a "could not be
  # removed" warning, though Podman removes the builder's auto-removed container itself). The
  # two-Dockerfile flow builds the article fixture in Podman, whose build applies the sent
  # `.dockerignore` again (the fixture's has `*.tar.gz`, which names the release tarball).
  #
  # The service runs on a socket of its own and is stopped when the module ends. Podman here
  # needs explicit ulimits to run containers (CONTAINERS_CONF below). The builder image (and
  # the article's minbase) is copied from the Docker engine into Podman's store with
  # `skopeo copy` when Podman lacks it (kept there by tag, like the Docker engine's builder
  # images); images and cache volumes the tests make are removed.
  use ExUnit.Case, async: false
  @moduletag :engine
  @moduletag timeout: 900_000

  import DockerRelease.E2E
  import DockerRelease.E2E.Builder

  @containers_conf """
  [containers]
  default_ulimits = ["nofile=1024:1024","nproc=1024:1024"]
  """

  setup_all do
    tools = Enum.reject(["podman", "skopeo"], &System.find_executable/1)

    if tools == [] do
      start_podman!()
    else
      missing!(
        "#{Enum.join(tools, " and ")} not installed (apt-get install podman skopeo): " <>
          "Podman as the engine not checked"
      )

      %{podman: nil}
    end
  end

  test "a host build loads into Podman; the summary says podman run", ctx do
    if ctx.podman do
      tag = "#{unique_repo("dr-e2e-podman")}/hello:host"
      on_exit(fn -> podman(ctx, ["image", "rm", "-f", tag]) end)

      metadata = Path.join(tmp_dir!("dr-e2e-podman-meta"), "meta.json")
      before = all_containers(ctx)

      run =
        run_release(["--tag", tag, "--metadata-file", metadata],
          env: [{"DOCKER_HOST", ctx.docker_host}]
        )

      assert run.status == 0, run.out
      id = printed_id!(run.out)
      assert run.out =~ "==> connecting to the Docker engine at #{ctx.docker_host}", run.out
      assert run.out =~ ~r/^Run it:   podman run --rm #{Regex.escape(tag)}$/m, run.out
      refute run.out =~ "docker run", run.out
      assert File.read!(metadata) =~ ~r/"engine_kind": "podman"/

      # In Podman's store (not the Docker engine's), with our image ID, and it runs.
      {pid, 0} = podman(ctx, ["image", "inspect", "-f", "{{.Id}}", tag])
      assert "sha256:" <> String.trim(pid) == id
      refute image_exists?(tag)
      assert_runs(ctx, tag)
      assert our_containers(ctx, run.owner) == []
      assert all_containers(ctx) -- before == []
    end
  end

  test "a --builder build in Podman: podman run (the cookie: notice too), no container left, no removal warning",
       ctx do
    if ctx.podman do
      builder = podman_builder!(ctx)
      dir = example_copy!("hello", "dr-e2e-podman")
      set_cookie!(dir)
      on_exit(fn -> rm_podman_volumes(ctx, dir) end)
      tag = "#{unique_repo("dr-e2e-podman")}/hello:builder"
      on_exit(fn -> podman(ctx, ["image", "rm", "-f", tag]) end)

      before = all_containers(ctx)

      run =
        run_release(["--builder", builder, "--tag", tag],
          cd: dir,
          env: [{"DOCKER_HOST", ctx.docker_host}]
        )

      assert run.status == 0, run.out
      assert run.out =~ "==> built the release in #{builder}", run.out
      assert run.out =~ ~r/^Run it:   podman run --rm #{Regex.escape(tag)}$/m, run.out
      # The cookie stays out of the image; the notice names Podman's command to pass one.
      assert run.out =~ "==> release hello sets cookie: in mix.exs; it is not put into the image",
             run.out

      assert run.out =~ "at run time: podman run -e RELEASE_COOKIE=... (the same value", run.out
      refute run.out =~ "could not be removed", run.out
      refute run.out =~ "docker run", run.out

      # The builder ran in Podman: its cache volumes are there, not in the Docker engine.
      assert [_, _] = podman_volumes(ctx, dir)
      assert cache_volumes(dir) == []
      assert_runs(ctx, tag)
      assert our_containers(ctx, run.owner) == []
      assert all_containers(ctx) -- before == []
    end
  end

  test "a base image Podman does not have: the message names podman's commands", ctx do
    if ctx.podman do
      base = "#{unique_repo("dr-e2e-podman")}/no-such-base:1"
      run = run_release(["--base", base], env: [{"DOCKER_HOST", ctx.docker_host}])

      assert run.status != 0, run.out

      assert run.out =~ "the base image #{base} was not found (not in the Docker engine at",
             run.out

      assert run.out =~ "make it available (`podman pull`, `podman images`)", run.out
      refute run.out =~ "docker pull", run.out
    end
  end

  test "the two-Dockerfile flow in Podman: the final build gets the tarball the fixture's .dockerignore (*.tar.gz) names",
       ctx do
    if ctx.podman do
      podman_image!(ctx, ensure_builder!("bookworm"))
      podman_image!(ctx, ensure_builder!("minbase"))
      dir = article_copy!("dr-e2e-podman-article")
      assert File.read!(Path.join(dir, ".dockerignore")) =~ ~r/^\*\.tar\.gz$/m
      repo = unique_repo("dr-e2e-podman")
      {build_tag, tag} = {"#{repo}-build:t", "#{repo}/app:1"}
      on_exit(fn -> podman(ctx, ["image", "rm", "-f", tag, build_tag]) end)

      before = all_containers(ctx)

      run =
        run_release(article_args(build_tag) ++ ["--tag", tag],
          cd: dir,
          env: [{"DOCKER_HOST", ctx.docker_host}]
        )

      assert run.status == 0, run.out
      assert run.out =~ "==> copying /tmp/article_app.tar.gz", run.out
      assert run.out =~ "==> building the final image #{tag}", run.out

      # In Podman's store (not the Docker engine's), with the ID the task printed, and the
      # release the tarball held runs.
      {id, 0} = podman(ctx, ["image", "inspect", "-f", "{{.Id}}", tag])
      assert run.out =~ String.trim(id), run.out
      refute image_exists?(tag)
      bin = "/opt/article_app/bin/article_app"
      {out, status} = podman(ctx, ["run", "--rm", tag, bin, "eval", "IO.puts(21 * 2)"])
      assert status == 0, out
      assert "42" in String.split(out, "\n", trim: true), out
      assert our_containers(ctx, run.owner) == []
      assert all_containers(ctx) -- before == []
    end
  end

  # The copy's release config gets a `cookie:` (which the task keeps out of the image).
  defp set_cookie!(dir) do
    mix = Path.join(dir, "mix.exs")
    text = File.read!(mix)
    release = "releases: [hello: [include_executables_for: [:unix]"
    assert text =~ release, "examples/hello/mix.exs no longer has #{release}]]"
    File.write!(mix, String.replace(text, release, release <> ~s(, cookie: "dr-e2e-podman")))
  end

  # `podman run` of the image prints what `eval` computes in the release.
  defp assert_runs(ctx, tag) do
    {out, status} = podman(ctx, ["run", "--rm", tag, "eval", "IO.puts(21 * 2)"])
    assert status == 0, out
    assert "42" in String.split(out, "\n", trim: true), out
  end

  # Every container in Podman (`podman ps -a`).
  defp all_containers(ctx) do
    {out, 0} = podman(ctx, ["ps", "-aq", "--no-trunc"])
    String.split(out)
  end

  # Containers in Podman labelled as made by the BEAM of `owner` (running or not).
  defp our_containers(ctx, owner) do
    {out, 0} =
      podman(ctx, ["ps", "-aq", "--no-trunc", "--filter", "label=docker_release.owner=#{owner}"])

    String.split(out)
  end

  ## Podman's service and store

  # `podman system service` on a socket of this run, as root (the store is the system's);
  # stopped (and its socket directory removed) when the module ends.
  defp start_podman! do
    dir = tmp_dir!("dr-e2e-podman")
    conf = Path.join(dir, "containers.conf")
    File.write!(conf, @containers_conf)
    socket = Path.join(dir, "podman.sock")
    env = [{"CONTAINERS_CONF", conf}]

    port =
      Port.open({:spawn_executable, System.find_executable("sh")}, [
        :binary,
        :exit_status,
        :stderr_to_stdout,
        args: [
          "-c",
          ~s(echo "pid $$"; exec podman system service --time=0 "unix://$0"),
          socket
        ],
        env: Enum.map(env, fn {k, v} -> {to_charlist(k), to_charlist(v)} end)
      ])

    pid =
      receive do
        {^port, {:data, "pid " <> rest}} -> rest |> String.split() |> hd()
      after
        10_000 -> flunk("podman system service did not start")
      end

    ExUnit.Callbacks.on_exit(fn ->
      System.cmd("kill", ["-TERM", pid])
      wait_until("podman system service to stop", 15_000, fn -> not alive?(pid) end)
    end)

    wait_until("podman's socket #{socket} to answer", 30_000, fn -> pings?(socket) end)
    %{podman: System.find_executable("podman"), env: env, docker_host: "unix://#{socket}"}
  end

  defp alive?(pid), do: match?({_, 0}, System.cmd("kill", ["-0", pid], stderr_to_stdout: true))

  defp pings?(socket) do
    with {:ok, s} <- :gen_tcp.connect({:local, socket}, 0, [:binary, active: false], 1_000),
         :ok <- :gen_tcp.send(s, "GET /_ping HTTP/1.0\r\nHost: podman\r\n\r\n"),
         {:ok, answer} <- :gen_tcp.recv(s, 0, 2_000) do
      :gen_tcp.close(s)
      String.starts_with?(answer, "HTTP/1.") and answer =~ "OK"
    else
      _ -> false
    end
  end

  # The local `podman` CLI on the same store, with the same containers.conf.
  defp podman(ctx, args), do: cmd("podman", args, env: ctx.env, timeout: 120)

  # The bookworm builder image in Podman's store.
  defp podman_builder!(ctx), do: podman_image!(ctx, ensure_builder!("bookworm"))

  # `image` of the Docker engine in Podman's store: copied unless Podman has the same image ID
  # already (the same config bytes: skopeo keeps them).
  defp podman_image!(ctx, image) do
    id = image_inspect!(image, "{{.Id}}")
    local = "localhost/#{image}"

    {have, _} = podman(ctx, ["image", "inspect", "-f", "{{.Id}}", local])

    if "sha256:" <> String.trim(have) != id do
      {out, status} =
        cmd("skopeo", ["copy", "docker-daemon:#{image}", "containers-storage:#{local}"],
          env: ctx.env,
          timeout: 600
        )

      assert status == 0, "skopeo could not copy #{image} into Podman's store:\n#{out}"
    end

    image
  end

  defp podman_volumes(ctx, dir) do
    {out, 0} =
      podman(ctx, [
        "volume",
        "ls",
        "-q",
        "--filter",
        "label=docker_release.cache.project=#{dir}"
      ])

    String.split(out)
  end

  defp rm_podman_volumes(ctx, dir) do
    case podman_volumes(ctx, dir) do
      [] -> :ok
      volumes -> podman(ctx, ["volume", "rm", "-f" | volumes])
    end
  end
end
