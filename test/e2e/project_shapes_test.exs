defmodule DockerRelease.E2E.ProjectShapesTest do
  # The shapes real Mix projects have (DockerRelease.E2E.Shapes generates them with `mix new`),
  # built by `mix docker.release` as a user would run it (a separate `mix` OS process, MIX_ENV
  # unset), on the host and in the Debian 13 builder (Elixir 1.18 / OTP 27, newer than the
  # host's). Every image is run: `eval`, a real HTTP request, `rpc` through `docker exec`, and
  # `docker stop` ending the node with status 0. Shapes that cannot work get one message that
  # says what to change in mix.exs, before any image work.
  use ExUnit.Case, async: false
  @moduletag :engine

  import DockerRelease.E2E
  import DockerRelease.E2E.Builder
  alias DockerRelease.E2E.Shapes

  setup_all do
    trixie = ensure_builder!("trixie")
    trixie_cc = ensure_builder!("trixie-cc")
    {root, 0} = cmd("realpath", [tmp_dir!("dr-shapes")])
    suffix = rand(4)
    shapes = Shapes.generate!(String.trim(root), suffix)
    repo = unique_repo("dr-shapes")

    on_exit(fn ->
      for {_, shape} <- shapes, do: rm_cache_volumes(shape.dir)
      rm_images_where(&(String.starts_with?(&1, repo <> "/") or &1 =~ "_#{suffix}:"))
    end)

    %{
      shapes: shapes,
      repo: repo,
      trixie: trixie,
      trixie_cc: trixie_cc,
      host: %{otp: System.otp_release(), glibc: glibc!()},
      builder: %{otp: builder_versions!(trixie).otp, glibc: glibc!(trixie_cc)}
    }
  end

  # "2.36": the glibc of the host, or of a builder image.
  defp glibc!(image \\ nil) do
    args = if image, do: ["run", "--rm", "--entrypoint", "getconf", image], else: []

    {out, 0} =
      if image,
        do: docker(args ++ ["GNU_LIBC_VERSION"]),
        else: cmd("getconf", ["GNU_LIBC_VERSION"])

    out |> String.trim() |> String.replace_prefix("glibc ", "")
  end

  # Runs `mix docker.release ARGS` in the shape's project, asserting success.
  defp build!(shape, args) do
    {out, status} = mix_release(args, cd: shape.dir)

    assert status == 0,
           "mix docker.release #{Enum.join(args, " ")} in #{shape.dir} failed (#{status}):\n#{out}"

    refute out =~ "@@docker_release", out
    out
  end

  # Runs the image: eval (no cookie notice), start + one HTTP request, rpc in the running
  # container, docker stop with status 0. Returns what eval printed, the HTTP body and the logs.
  defp check_runs!(tag, shape, opts \\ []) do
    env = Enum.flat_map(Keyword.get(opts, :env, []), fn {k, v} -> ["-e", "#{k}=#{v}"] end)

    {eval, status} =
      docker(["run", "--rm"] ++ env ++ [tag, "eval", "IO.puts(#{shape.mod}.hello())"])

    assert status == 0, "eval in #{tag} failed (#{status}):\n#{eval}"
    refute eval =~ "generated a cookie", eval

    port = free_port()
    c = run_detached!(["-p", "127.0.0.1:#{port}:#{shape.port}"] ++ env ++ [tag])
    body = wait_http!(port)

    {rpc, status} = docker(["exec", c, "/app/bin/#{shape.bin}", "rpc", "IO.puts(:pong)"])
    assert status == 0, "rpc in #{tag} failed (#{status}):\n#{rpc}"
    assert "pong" in String.split(rpc, "\n", trim: true), rpc
    refute rpc =~ "generated a cookie", rpc

    {out, status} = docker(["stop", c])
    assert status == 0, out
    assert docker!(["inspect", "-f", "{{.State.ExitCode}}", c]) == "0", logs(c)
    logs = logs(c)
    # The node that started made the container's cookie and said so, once.
    assert length(String.split(logs, "generated a cookie")) == 2, logs
    %{eval: eval, body: body, logs: logs}
  end

  describe "no releases: key, an app named unlike its directory" do
    test "on the host: a plain `mix release`, and a crash dump lands in /tmp", ctx do
      s = ctx.shapes.plain
      tag = "#{ctx.repo}/plain:host"
      out = build!(s, ["--tag", tag])
      assert out =~ "==> building release #{s.app} (MIX_ENV=prod mix release --overwrite)"
      r = check_runs!(tag, s)
      assert r.body == "plain #{s.app} on OTP #{ctx.host.otp}"
      assert r.eval =~ r.body

      # The image's user cannot write to /app (the working directory): the dump goes to /tmp.
      name = "dr-shapes-crash-#{rand()}"
      on_exit(fn -> rm_containers([name]) end)
      halt = ~s|:erlang.halt(String.to_charlist("boom"))|
      {out, status} = docker(["run", "--name", name, tag, "eval", halt])
      assert status != 0, out
      assert out =~ "Crash dump is being written to: /tmp/erl_crash.dump...done", out
      {dump, status} = docker(["cp", "#{name}:/tmp/erl_crash.dump", "-"], stderr: false)
      assert status == 0, dump
      assert dump =~ "=erl_crash_dump"
      assert dump =~ "Slogan: boom"
    end

    test "in the Debian 13 builder", ctx do
      s = ctx.shapes.plain
      tag = "#{ctx.repo}/plain:trixie"
      out = build!(s, ["--builder", ctx.trixie, "--tag", tag])
      assert out =~ "==> running `mix release --overwrite --path /app` in the builder"
      r = check_runs!(tag, s)
      assert r.body == "plain #{s.app} on OTP #{ctx.builder.otp}"
    end

    test "--output: an archive that docker load reads", ctx do
      s = ctx.shapes.plain
      tag = "#{ctx.repo}/plain:archive"
      archive = Path.join(tmp_dir!(), "plain.tar")
      build!(s, ["--tag", tag, "--output", archive])
      refute image_exists?(tag)
      assert docker!(["load", "-i", archive]) =~ tag
      assert check_runs!(tag, s).body == "plain #{s.app} on OTP #{ctx.host.otp}"
    end

    test "--push: to a registry, pulled back", ctx do
      s = ctx.shapes.plain
      registry = start_registry!(tmp_dir!())
      tag = "127.0.0.1:#{registry.port}/#{ctx.repo}/plain:pushed"
      on_exit(fn -> rm_images([tag]) end)
      build!(s, ["--tag", tag, "--push"])
      docker!(["pull", tag])
      assert check_runs!(tag, s).body == "plain #{s.app} on OTP #{ctx.host.otp}"
    end
  end

  describe "config/runtime.exs that requires PORT at boot" do
    for path <- [:host, :builder] do
      @tag path: path
      test "built on the #{path}", ctx do
        s = ctx.shapes.runtime_port
        tag = "#{ctx.repo}/port:#{ctx.path}"
        builder = if ctx.path == :builder, do: ["--builder", ctx.trixie], else: []
        build!(s, builder ++ ["--tag", tag])

        # Without PORT the node refuses to boot, saying why (Elixir 1.14 prints the
        # exception's message; 1.18's boot failure prints the System.EnvError term).
        {out, status} = docker(["run", "--rm", tag])
        assert status != 0, out
        assert out =~ ~s(environment variable "PORT") or out =~ ~s(env=><<"PORT">>), out

        r = check_runs!(tag, s, env: [{"PORT", "4100"}])
        assert r.body == "port 4100"
        assert r.eval =~ "port 4100"
      end
    end
  end

  describe "an umbrella" do
    test "without releases: one message naming its apps, on every path, before any image work",
         ctx do
      s = ctx.shapes.umbrella_none
      archive = Path.join(tmp_dir!(), "none.tar")

      for args <- [
            [],
            ["--builder", ctx.trixie],
            ["--output", archive],
            ["--push", "--tag", "127.0.0.1:9/#{ctx.repo}/none:1"],
            ["--release", "web"]
          ] do
        run = run_release(args, cd: s.dir)
        {out, status} = {run.out, run.status}
        assert status != 0, out
        assert length(String.split(out, "umbrella project defines no release")) == 2, out
        assert out =~ "applications: [core: :permanent, web: :permanent]", out
        assert out =~ "releases: [", out
        refute out =~ "no :app", out
        refute out =~ "Fix the build", out
        refute out =~ "==> building release", out
        refute out =~ "==> connecting", out
        refute File.exists?(archive)
        # This run created no container (the engine's event stream, by owner label).
        assert run.created == []
      end
    end

    test "with two releases and no default: the message lists them", ctx do
      {out, status} = mix_release([], cd: ctx.shapes.umbrella_two.dir)
      assert status != 0, out
      assert out =~ "several releases (front, back) and no default_release", out
      assert out =~ "--release NAME"
    end

    test "with two releases: --release front on the host", ctx do
      s = ctx.shapes.umbrella_two
      tag = "#{ctx.repo}/umbrella:host"
      out = build!(s, ["--release", "front", "--tag", tag])
      assert out =~ "(MIX_ENV=prod mix release front --overwrite)"
      assert image_inspect!(tag, "{{json .Config.Entrypoint}}") == ~s(["/app/bin/front"])
      r = check_runs!(tag, s)
      assert r.body == "umbrella front on OTP #{ctx.host.otp}, core of #{s.app}"
    end

    test "with two releases: --release front in the builder, its output printed once", ctx do
      s = ctx.shapes.umbrella_two
      tag = "#{ctx.repo}/umbrella:trixie"
      out = build!(s, ["--builder", ctx.trixie, "--release", "front", "--tag", tag])
      step = "==> running `mix release front --overwrite --path /app` in the builder"
      assert length(String.split(out, step)) == 2, out

      # Mix's own headers, once per app, in the release step; none in deps.get.
      lines = release_step_lines(out)
      assert Enum.count(lines, &(&1 == "==> core")) == 1, out
      assert Enum.count(lines, &(&1 == "==> web")) == 1, out
      assert Enum.count(String.split(out, "\n"), &(String.trim(&1) == "==> core")) == 1, out

      r = check_runs!(tag, s)
      assert r.body == "umbrella front on OTP #{ctx.builder.otp}, core of #{s.app}"
    end
  end

  describe "a release with its own version and a cookie:" do
    for path <- [:host, :builder] do
      @tag path: path
      test "built on the #{path}: default tags of the release's version; the cookie stays out",
           ctx do
        s = ctx.shapes.release_config
        builder = if ctx.path == :builder, do: ["--builder", ctx.trixie], else: []
        out = build!(s, builder)
        assert out =~ "release #{s.app} sets cookie: in mix.exs; it is not put into the image"
        # The engine here is Docker: the notice names its command.
        assert out =~ "at run time: docker run -e RELEASE_COOKIE=... (the same value", out
        tag = "#{s.app}:0.0.1"
        assert out =~ "Image     #{tag}, #{s.app}:latest"
        refute image_exists?("#{s.app}:0.1.0")
        label = ~s({{index .Config.Labels "org.opencontainers.image.version"}})
        assert image_inspect!(tag, label) == "0.0.1"

        # The configured cookie is in no byte of the image (docker save: uncompressed layers).
        saved = Path.join(tmp_dir!(), "image.tar")
        docker!(["save", "-o", saved, tag])
        assert :binary.match(File.read!(saved), s.cookie) == :nomatch

        {out, status} =
          docker([
            "run",
            "--rm",
            "--entrypoint",
            "/bin/sh",
            tag,
            "-c",
            "test -e /app/releases/COOKIE"
          ])

        assert status == 1, out

        # Without RELEASE_COOKIE each container makes its own; with it, nodes use it.
        r = check_runs!(tag, s)
        assert r.body == "release config of #{s.app}"
        c = run_detached!(["-e", "RELEASE_COOKIE=#{s.cookie}", tag])
        wait_until("#{s.app} to listen", 30_000, fn -> logs(c) =~ "listening on port" end)
        script = ~S|IO.puts("cookie=#{Node.get_cookie()}")|
        assert docker!(["exec", c, "/app/bin/#{s.bin}", "rpc", script]) =~ "cookie=#{s.cookie}"
        refute logs(c) =~ "generated a cookie"
      end
    end
  end

  describe "rel/ overlays with the build path baked in, and build_path: outside the project" do
    test "on the host: a warning names the file, the line and the fix", ctx do
      s = ctx.shapes.overlays
      tag = "#{ctx.repo}/overlays:host"
      out = build!(s, ["--tag", tag])
      rel_dir = Path.join([Path.dirname(s.dir), "#{s.app}_build", "prod", "rel", s.app])
      assert File.dir?(Path.join(rel_dir, "bin")), "the release is not at build_path:\n#{out}"

      assert out =~
               ~r"warning: releases/0\.1\.0/vm\.args:\d+ of the release contains #{Regex.escape(rel_dir)}, a path of this machine",
             out

      assert out =~ "-env SHAPES_REL_PATH #{rel_dir}"
      assert out =~ "$RELEASE_ROOT"
      r = check_runs!(tag, s)

      assert r.body ==
               "overlay: missing at #{rel_dir}; root: /app; env.sh of #{s.app} 0.1.0"
    end

    test "in the builder: assembled at /app, so the baked path holds", ctx do
      s = ctx.shapes.overlays
      tag = "#{ctx.repo}/overlays:trixie"
      out = build!(s, ["--builder", ctx.trixie, "--tag", tag])
      refute out =~ "warning: releases/", out
      r = check_runs!(tag, s)

      assert r.body ==
               "overlay: greetings from an overlay; root: /app; env.sh of #{s.app} 0.1.0"

      assert r.eval =~ "env.sh of #{s.app} 0.1.0"
    end
  end

  describe "a C NIF built by a Makefile into priv/" do
    test "on the host: the NIF runs against the host's glibc", ctx do
      s = ctx.shapes.c_nif
      tag = "#{ctx.repo}/nif:host"
      build!(s, ["--tag", tag])
      r = check_runs!(tag, s)
      assert r.body == "nif says glibc #{ctx.host.glibc}"
    end

    test "in a Debian 13 builder with gcc and make: against the builder's glibc", ctx do
      s = ctx.shapes.c_nif
      tag = "#{ctx.repo}/nif:trixie"
      out = build!(s, ["--builder", ctx.trixie_cc, "--tag", tag])
      assert out =~ "shapes_nif.c", out
      r = check_runs!(tag, s)
      assert r.body == "nif says glibc #{ctx.builder.glibc}"
      refute ctx.builder.glibc == ctx.host.glibc
    end
  end
end
