defmodule DockerRelease.E2E.PackageTest do
  # What a Hex user gets: exactly the files mix.exs's `package: [files: …]` lists, unpacked
  # into an empty directory, used as the dependency of a fresh copy of examples/hello.
  #
  #   * On a machine without Rust and without a C compiler (a PATH with neither, a HOME
  #     without ~/.cargo), `mix compile` fetches the prebuilt NIF that scripts/nif-artifact.sh
  #     built, from a local directory (DOCKER_RELEASE_NIF_BASE_URL=file://…) or a local HTTP
  #     server, verifies it against the checksum file and installs it; `mix docker.release`
  #     then builds and loads the image, which runs.
  #   * A tampered artifact, or a tampered copy in the cache, is never installed or loaded.
  #   * With no prebuilt NIF for the target and no toolchain, `mix compile` still succeeds and
  #     `mix docker.release` says what to install.
  #   * DOCKER_RELEASE_BUILD=1 builds the NIF from the package's sources alone.
  use ExUnit.Case, async: false
  @moduletag :engine

  import DockerRelease.E2E
  import DockerRelease.E2E.Builder, only: [serve_and_get!: 1]

  @checksum_file "checksum-Elixir.DockerRelease.Native.exs"
  # A stable place, so that cargo finds the source build's crates fresh on later runs.
  @pkg_root Path.join(root(), "_build/package_test")

  setup_all do
    version = Mix.Project.config()[:version]
    artifacts = Path.join(@pkg_root, "artifacts")
    File.rm_rf!(artifacts)

    {out, status} =
      cmd(Path.join(root(), "scripts/nif-artifact.sh"), ["build", artifacts], timeout: 1800)

    assert status == 0, "scripts/nif-artifact.sh build failed:\n#{out}"
    {:ok, nif, triple} = DockerRelease.NativeLib.target()
    name = DockerRelease.NativeLib.artifact_name(nif, triple)
    assert File.regular?(Path.join(artifacts, name)), "the script did not write #{name}:\n#{out}"

    # The package as the release workflow publishes it: its checksum file lists the artifacts.
    pkg = unpack_package!(Path.join(@pkg_root, "docker_release-#{version}"))
    File.cp!(Path.join(artifacts, @checksum_file), Path.join(pkg, @checksum_file))
    # The package as this repository is: no artifacts listed.
    bare = unpack_package!(Path.join(@pkg_root, "bare/docker_release-#{version}"))

    %{pkg: pkg, bare: bare, artifacts: artifacts, artifact: name, bin: toolless_path!()}
  end

  setup do
    repo = unique_repo_removed_on_exit("dr-e2e-package")
    %{repo: repo, home: tmp_dir!("dr-e2e-package-home")}
  end

  # Copies every file that `files:` names (directories whole, as Hex packs them) from this
  # repository into `dest`, keeping mtimes. Nothing else.
  defp unpack_package!(dest) do
    File.rm_rf!(dest)
    File.mkdir_p!(dest)
    files = Mix.Project.config()[:package][:files]

    rels =
      for entry <- files,
          path <- Path.wildcard(Path.join(root(), entry), match_dot: true),
          file <-
            if(File.dir?(path),
              do: Path.wildcard(Path.join(path, "**"), match_dot: true),
              else: [path]
            ),
          File.regular?(file),
          do: Path.relative_to(file, root())

    assert rels != []
    {out, status} = cmd("cp", ["-p", "--parents" | rels] ++ [dest], cd: root())
    assert status == 0, out
    dest
  end

  # A directory of links to every program on PATH but compilers and Rust: the machine of a
  # teammate who never installed either.
  defp toolless_path! do
    bin = Path.join(@pkg_root, "toolless-bin")
    File.rm_rf!(bin)
    File.mkdir_p!(bin)

    denied =
      ~r/^(cc|c\+\+|c89|c99|gcc|g\+\+|cpp|clang|clang\+\+|cargo|rustc|rustup|rustdoc)(-[0-9.]+)?$|-gcc|-g\+\+|-cc$/

    for dir <- ~w(/usr/local/sbin /usr/local/bin /usr/sbin /usr/bin /sbin /bin),
        File.dir?(dir),
        name <- File.ls!(dir),
        not (name =~ denied),
        not File.exists?(Path.join(bin, name)) do
      File.ln_s!(Path.join(dir, name), Path.join(bin, name))
    end

    {out, status} =
      System.cmd("sh", ["-c", "command -v cargo || command -v cc || command -v gcc"],
        env: [{"PATH", bin}]
      )

    assert status != 0, "the tool-less PATH still has a compiler: #{out}"
    bin
  end

  # A fresh copy of examples/hello whose docker_release dependency is the unpacked package.
  defp app_using!(pkg, dir \\ tmp_dir!("dr-e2e-package-app")) do
    File.mkdir_p!(dir)
    src = hello_dir()

    for entry <- File.ls!(src),
        entry not in ["_build", "deps"],
        do: File.cp_r!(Path.join(src, entry), Path.join(dir, entry))

    mix = Path.join(dir, "mix.exs")
    text = File.read!(mix)
    assert text =~ ~s(path: "../..")
    File.write!(mix, String.replace(text, ~s(path: "../.."), ~s(path: #{inspect(pkg)})))
    dir
  end

  # The environment of a machine without Rust and without a C compiler.
  defp toolless_env(ctx, extra) do
    [
      {"PATH", ctx.bin},
      {"HOME", ctx.home},
      {"XDG_CACHE_HOME", Path.join(ctx.home, ".cache")},
      {"CARGO_TARGET_DIR", nil},
      {"DOCKER_RELEASE_BUILD", nil},
      {"MIX_ENV", nil}
    ] ++ extra
  end

  defp mix!(dir, args, env, timeout \\ 600) do
    cmd("mix", args, cd: dir, env: env, timeout: timeout)
  end

  defp installed_nif(app),
    do: Path.join(app, "_build/dev/lib/docker_release/priv/native/libdocker_release_nif.so")

  test "without Rust or a C compiler: the prebuilt NIF is fetched, verified and used", ctx do
    app = app_using!(ctx.pkg)
    cache = Path.join(ctx.home, ".cache/docker_release/nifs")
    # A copy in the cache that is not the artifact: never used, replaced.
    File.mkdir_p!(cache)
    File.write!(Path.join(cache, ctx.artifact), "not the artifact")

    env = toolless_env(ctx, [{"DOCKER_RELEASE_NIF_BASE_URL", "file://#{ctx.artifacts}"}])
    tag = "#{ctx.repo}/hello:pkg"
    {t1, {out, status}} = :timer.tc(fn -> mix!(app, ["docker.release", "--tag", tag], env) end)
    assert status == 0, out

    assert out =~
             "==> docker_release: fetching its prebuilt NIF file://#{ctx.artifacts}/#{ctx.artifact}"

    assert out =~ "==> docker_release: installed the prebuilt NIF #{ctx.artifact} (from file://"
    assert out =~ "sha256 verified)"
    refute out =~ "cargo"

    assert File.read!(Path.join(cache, ctx.artifact)) ==
             File.read!(Path.join(ctx.artifacts, ctx.artifact))

    assert serve_and_get!(tag) =~ "hello from hello 0.1.0"

    {t2, {out, status}} = :timer.tc(fn -> mix!(app, ["docker.release", "--tag", tag], env) end)
    assert status == 0, out
    refute out =~ "docker_release: fetching"

    IO.puts(
      "\n[package] first mix docker.release without Rust (compile + NIF from file://): " <>
        "#{div(t1, 1000)} ms; second: #{div(t2, 1000)} ms"
    )
  end

  test "over HTTP from a local server, with the artifact cached for the next project", ctx do
    port = free_port()

    server =
      Port.open({:spawn_executable, System.find_executable("python3")}, [
        :binary,
        :exit_status,
        :stderr_to_stdout,
        args: [
          "-m",
          "http.server",
          "--bind",
          "127.0.0.1",
          "--directory",
          ctx.artifacts,
          "#{port}"
        ]
      ])

    {:os_pid, os_pid} = Port.info(server, :os_pid)
    on_exit(fn -> System.cmd("kill", ["#{os_pid}"], stderr_to_stdout: true) end)
    wait_until("the artifact server", 20_000, fn -> match?({:ok, _, _}, http_get(port, "/")) end)

    env = toolless_env(ctx, [{"DOCKER_RELEASE_NIF_BASE_URL", "http://127.0.0.1:#{port}/"}])
    app = app_using!(ctx.pkg)
    {out, status} = mix!(app, ["compile"], env)
    assert status == 0, out

    assert out =~
             "installed the prebuilt NIF #{ctx.artifact} (from http://127.0.0.1:#{port}/#{ctx.artifact}, sha256 verified)"

    assert File.regular?(installed_nif(app))

    # The next project on this machine takes it from the cache, even with the server gone.
    System.cmd("kill", ["#{os_pid}"])
    other = app_using!(ctx.pkg)
    {out, status} = mix!(other, ["compile"], env)
    assert status == 0, out
    assert out =~ "installed the prebuilt NIF #{ctx.artifact} (from the cache "
  end

  # The `script:` lines of the README's .gitlab-ci.yml, as written there.
  defp gitlab_script! do
    readme = File.read!(Path.join(root(), "README.md"))
    [_, job] = Regex.run(~r/```yaml\n# \.gitlab-ci\.yml\n(.*?)```/s, readme)
    [_, lines] = Regex.run(~r/\n  script:\n((?:    - .*\n)+)/, job)
    assert job =~ "XDG_CACHE_HOME: $CI_PROJECT_DIR/.cache"
    assert job =~ "paths: [deps/, _build/, .cache/docker_release/]"

    for line <- String.split(lines, "\n", trim: true),
        do: String.replace_prefix(line, "    - ", "")
  end

  # The `script:` lines of the README's docker-in-docker job, as written there.
  defp gitlab_dind_script! do
    readme = File.read!(Path.join(root(), "README.md"))
    [_, job] = Regex.run(~r/```yaml\n# \.gitlab-ci\.yml \(docker-in-docker\)\n(.*?)```/s, readme)
    [_, lines] = Regex.run(~r/\n  script:\n((?:    - .*\n)+)/, job)
    assert job =~ "DOCKER_HOST: tcp://docker:2376"
    assert job =~ ~s(DOCKER_TLS_VERIFY: "1")
    assert job =~ "DOCKER_CERT_PATH: /certs/client"

    for line <- String.split(lines, "\n", trim: true),
        do: String.replace_prefix(line, "    - ", "")
  end

  defp run_job!(dir, env, script \\ gitlab_script!()) do
    for line <- script, into: "" do
      {out, status} = cmd("sh", ["-c", line], cd: dir, env: env, timeout: 600)
      assert status == 0, "`#{line}` failed (#{status}):\n#{out}"
      out
    end
  end

  test "the README's GitLab job: push, deploy by digest, caches that carry over", ctx do
    registry = start_registry!(tmp_dir!("dr-e2e-package-registry"))
    image = "127.0.0.1:#{registry.port}/team/hello"
    on_exit(fn -> rm_images(["#{image}:0123abc"]) end)
    dir = Path.join(tmp_dir!("dr-e2e-package-ci"), "project")
    app_using!(ctx.pkg, dir)

    env =
      toolless_env(ctx, [
        {"DOCKER_RELEASE_NIF_BASE_URL", "file://#{ctx.artifacts}"},
        {"CI_PROJECT_DIR", dir},
        {"XDG_CACHE_HOME", Path.join(dir, ".cache")},
        {"CI_REGISTRY_IMAGE", image},
        {"CI_COMMIT_SHA", "0123abc"},
        {"CI_REGISTRY_USER", "ci"},
        {"CI_REGISTRY_PASSWORD", "not-checked-by-this-registry"}
      ])

    out = run_job!(dir, env)
    assert out =~ "==> docker_release: fetching its prebuilt NIF"
    digest = printed_digest!(out)
    assert File.read!(Path.join(dir, "image.env")) == "IMAGE_REF=#{image}@#{digest}\n"
    assert out =~ "Deploy    #{image}@#{digest}"

    # The deploy step pulls by digest.
    docker!(["pull", "#{image}@#{digest}"], timeout: 120)
    assert DockerRelease.E2E.Builder.serve_and_get!("#{image}@#{digest}") =~ "hello from hello"

    # The next pipeline: a fresh checkout at the same path (new mtimes), GitLab's cache restored.
    saved = dir <> ".saved"
    File.rename!(dir, saved)
    app_using!(ctx.pkg, dir)

    for path <- ~w(deps _build .cache/docker_release), File.exists?(Path.join(saved, path)) do
      File.mkdir_p!(Path.dirname(Path.join(dir, path)))
      {o, 0} = cmd("cp", ["-a", Path.join(saved, path), Path.join(dir, path)])
      assert o == ""
    end

    out = run_job!(dir, env)
    refute out =~ "docker_release: fetching", out
    assert out =~ "layer 1/3: runtime unchanged, taken from the layer cache", out
    assert out =~ ~r/Pushed    #{Regex.escape(image)}:0123abc: uploaded 0 blob\(s\)/, out
    assert printed_digest!(out) == digest
  end

  test "a tampered artifact is refused: not installed, not loaded, the task says why", ctx do
    bad = tmp_dir!("dr-e2e-package-bad")
    # A well-formed artifact of the right name whose library is not the one released.
    stage = tmp_dir!("dr-e2e-package-stage")
    lib = String.trim_trailing(ctx.artifact, ".tar.gz")

    {:ok, [{_, so}]} =
      :erl_tar.extract(String.to_charlist(Path.join(ctx.artifacts, ctx.artifact)), [
        :compressed,
        :memory
      ])

    File.write!(Path.join(stage, lib), so <> "tampered")

    :ok =
      :erl_tar.create(
        String.to_charlist(Path.join(bad, ctx.artifact)),
        [{String.to_charlist(lib), String.to_charlist(Path.join(stage, lib))}],
        [:compressed]
      )

    app = app_using!(ctx.pkg)
    env = toolless_env(ctx, [{"DOCKER_RELEASE_NIF_BASE_URL", "file://#{bad}"}])
    {out, status} = mix!(app, ["compile"], env)
    assert status == 0, "mix compile must not fail for the dev-only tool:\n#{out}"

    assert out =~
             "warning: docker_release's NIF is not installed: the prebuilt NIF #{ctx.artifact}"

    assert out =~ "it was refused and is not loaded"
    refute File.exists?(installed_nif(app))
    refute File.exists?(Path.join(ctx.home, ".cache/docker_release/nifs/#{ctx.artifact}"))

    tag = "#{ctx.repo}/hello:tampered"
    {out, status} = mix!(app, ["docker.release", "--tag", tag], env)
    assert status != 0, out

    assert out =~
             "docker_release's native library is not installed: the prebuilt NIF #{ctx.artifact}"

    assert out =~ "checksum file lists sha256"
    refute File.exists?(installed_nif(app))
    refute image_exists?(tag)
  end

  test "no prebuilt NIF for the target and no toolchain: compile succeeds, the task says what to install",
       ctx do
    app = app_using!(ctx.bare)
    env = toolless_env(ctx, [])
    {out, status} = mix!(app, ["compile"], env)
    assert status == 0, out

    assert out =~
             "warning: docker_release's NIF is not installed: docker_release #{Mix.Project.config()[:version]} has no prebuilt NIF for "

    assert out =~ "needs cargo (Rust) and a C compiler (cc), not found on PATH"

    {out, status} = mix!(app, ["docker.release", "--output", Path.join(app, "x.tar")], env)
    assert status != 0, out
    assert out =~ "needs cargo (Rust) and a C compiler (cc)"
    assert out =~ "https://rustup.rs"
  end

  test "DOCKER_RELEASE_BUILD=1 builds the NIF from the package's sources alone", ctx do
    app = app_using!(ctx.pkg)
    # The real PATH (cargo, cc); the crates this repository's own build compiled are reused.
    env = [
      {"DOCKER_RELEASE_BUILD", "1"},
      {"MIX_ENV", nil},
      {"CARGO_TARGET_DIR", System.get_env("CARGO_TARGET_DIR") || Path.join(root(), "target")}
    ]

    # cargo identifies workspace crates by their path in the workspace, so the package's would
    # pass as this repository's, already built: new mtimes make rustc compile the package's.
    for src <- Path.wildcard(Path.join(ctx.pkg, "native/*/src/**/*.rs")), do: File.touch!(src)

    {out, status} = mix!(app, ["compile"], env, 1800)
    assert status == 0, out
    assert out =~ "==> docker_release: building its NIF from source (DOCKER_RELEASE_BUILD is set)"

    for crate <- ~w(image_core image_io docker_release_nif),
        do: assert(out =~ ~r/Compiling #{crate} v[0-9.]+ \(#{Regex.escape(ctx.pkg)}/, out)

    assert out =~ "==> docker_release: installed the NIF built from source"

    {out, status} =
      mix!(
        app,
        [
          "run",
          "--no-start",
          "-e",
          ~s{IO.inspect(DockerRelease.Native.reference_parse("hello:1"))}
        ],
        env
      )

    assert status == 0, out
    assert out =~ "hello"
  end

  test "the README's docker-in-docker job: a TLS engine with a client certificate, builder, push and load",
       ctx do
    alias DockerRelease.E2E.EngineProxy
    # GitLab's docker:dind service, minus the service: this machine's engine behind a TLS
    # endpoint that requires the client certificate, as dind's port 2376 does; the builder
    # image comes from a registry into that engine with the job's own `docker pull`.
    registry = start_registry!(tmp_dir!("dr-e2e-package-dind-registry"))
    builder = "127.0.0.1:#{registry.port}/ci/builder:bookworm"
    local = DockerRelease.E2E.Builder.ensure_builder!("bookworm")
    docker!(["tag", local, builder])
    docker!(["push", builder], timeout: 300)
    docker!(["rmi", builder])

    tls = EngineProxy.make_tls!(tmp_dir!("dr-e2e-package-dind-tls"))
    port = EngineProxy.start_tls_socat!(tls)
    image = "127.0.0.1:#{registry.port}/team/hello"
    on_exit(fn -> rm_images(["#{image}:0456def", builder]) end)
    dir = Path.join(tmp_dir!("dr-e2e-package-dind"), "project")
    app_using!(ctx.pkg, dir)

    env =
      toolless_env(ctx, [
        {"DOCKER_RELEASE_NIF_BASE_URL", "file://#{ctx.artifacts}"},
        {"DOCKER_HOST", "tcp://127.0.0.1:#{port}"},
        {"DOCKER_TLS_VERIFY", "1"},
        {"DOCKER_CERT_PATH", tls.cert_path},
        {"BUILDER_IMAGE", builder},
        {"CI_PROJECT_DIR", dir},
        {"XDG_CACHE_HOME", Path.join(dir, ".cache")},
        {"CI_REGISTRY_IMAGE", image},
        {"CI_COMMIT_SHA", "0456def"},
        {"CI_REGISTRY_USER", "ci"},
        {"CI_REGISTRY_PASSWORD", "not-checked-by-this-registry"}
      ])

    out = run_job!(dir, env, gitlab_dind_script!())
    assert out =~ "connecting to the Docker engine at tcp://127.0.0.1:#{port} (TLS)", out
    assert out =~ "built the release in #{builder}", out
    digest = printed_digest!(out)
    assert out =~ "Deploy    #{image}@#{digest}", out
    # The smoke test's `docker run` went through the TLS endpoint to the loaded image.
    assert out =~ ~r/^ok$/m, out
    assert image_exists?("#{image}:0456def")
    # The registry has what the metadata names.
    meta = File.read!(Path.join(dir, "image.json"))
    assert meta =~ "#{image}@#{digest}"
  end
end
