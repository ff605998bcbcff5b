defmodule DockerRelease do
  @moduledoc """
  Turns an Elixir release into a minimal container image, without a base image or a Dockerfile.

  The data flow, one module per arrow:

      config (mix.exs + flags)       DockerRelease.Config
        -> release (host build)      DockerRelease.HostBuild
        -> runtime files, layers,    the Rust NIF (DockerRelease.Native): image_core plans the
           image, output             runtime files and writes layers; image_io loads the image
                                     into the engine or writes an archive

  Most users run `mix docker.release`; `build/2` is the same thing as a function.
  """

  alias DockerRelease.{Config, Error, HostBuild, Native, Progress}

  @typedoc "What a successful build produced (also what `--metadata-file` writes, as JSON)."
  @type outcome :: %{
          image_id: String.t(),
          manifest_digest: String.t(),
          platform: String.t(),
          tags: [String.t()],
          created: String.t(),
          layers: [map],
          compressed_size: non_neg_integer,
          uncompressed_size: non_neg_integer,
          engine: String.t() | nil,
          engine_size: non_neg_integer | nil,
          archive: String.t() | nil,
          archive_size: non_neg_integer | nil,
          pushed: map | nil,
          runtime_files: [{String.t(), String.t()}]
        }

  # A fixed timestamp for projects outside git with no SOURCE_DATE_EPOCH: 1980-01-01, the
  # earliest time every archive format can store.
  @default_epoch 315_532_800

  @doc """
  Builds the release (unless `config.from_release` is set), assembles the image and sends it to
  its output. `project` is the project's `project/0` keyword list.

  Progress goes to `Mix.shell()`. Returns `{:ok, outcome}` or `{:error, %DockerRelease.Error{}}`.

      config = DockerRelease.Config.new!(Mix.Project.config(), tags: ["hello:dev"])
      {:ok, %{image_id: "sha256:" <> _}} = DockerRelease.build(config, Mix.Project.config())
  """
  @spec build(Config.t(), keyword) :: {:ok, outcome} | {:error, Error.t()}
  def build(%Config{} = config, project) do
    if config.build_dockerfile do
      build_with_dockerfiles(config)
    else
      config |> request!(project) |> run()
    end
  rescue
    e in Error -> {:error, e}
  end

  @doc """
  The article's flow for teams that keep their Dockerfiles: build `config.build_dockerfile`
  (build-arg `version`), copy `/tmp/RELEASE_TARBALL` out of a temporary container, build
  `config.dockerfile` with the tarball in its context, tag it. Returns `{:ok, outcome}` with
  `:image_id`, `:tags`, `:size` and `:tarball_bytes`, or `{:error, %DockerRelease.Error{}}`.
  """
  @spec build_with_dockerfiles(Config.t()) :: {:ok, map} | {:error, Error.t()}
  def build_with_dockerfiles(%Config{} = config) do
    {:ok, job, id} =
      Native.image_dockerfiles(%Native.DockerfilesRequest{
        project_dir: config.project_dir,
        build_dockerfile: config.build_dockerfile,
        dockerfile: config.dockerfile,
        build_tag: config.build_tag,
        version: config.version,
        release_tarball: config.release_tarball,
        final_tags: config.tags,
        no_cache: config.no_cache
      })

    await(job, id)
  end

  @doc """
  Removes the builder cache volumes (`--builder`) of the project in `project_dir`, or of every
  project when `nil`, from the engine the environment names. Returns
  `{:ok, %{removed: [name], kept: [{name, why}]}}` (a volume in use is kept) or
  `{:error, %DockerRelease.Error{}}`.

      {:ok, %{removed: _, kept: []}} = DockerRelease.clean_volumes(File.cwd!())
  """
  @spec clean_volumes(Path.t() | nil) :: {:ok, map} | {:error, Error.t()}
  def clean_volumes(project_dir) do
    {:ok, job, id} = Native.image_clean(%Native.CleanRequest{project_dir: project_dir})
    await(job, id)
  rescue
    e in Error -> {:error, e}
  end

  defp request!(config, project) do
    {release_name, release_dir} =
      cond do
        config.from_release ->
          {config.release || release_name_in(config.from_release), config.from_release}

        config.builder ->
          # Built in the builder container; the pipeline finds it there.
          check_path_deps!(config, project)
          {name, _host_dir} = HostBuild.release!(config, project)

          Mix.shell().info(
            "==> building release #{name} in #{config.builder} (MIX_ENV=#{config.env})"
          )

          {name, "/release"}

        true ->
          ensure_linux_host!()
          {name, dir} = HostBuild.release!(config, project)
          HostBuild.build!(config, name)
          {name, dir}
      end

    base_dir = Path.join([config.project_dir, "_build", "docker_release"])
    work_dir = scratch_dir!(base_dir, release_name)

    %Native.Request{
      release_dir: release_dir,
      release_name: release_name,
      own_apps: own_apps(config, project),
      otp_apps: otp_apps(),
      extra_files: config.extra_files,
      uid: config.uid,
      gid: config.gid,
      env: Enum.map(config.container_env, fn {k, v} -> "#{k}=#{v}" end),
      labels: labels(config),
      exposed_ports: Enum.map(config.expose, &"#{&1}/tcp"),
      created: created(config.project_dir),
      compression_level: config.compression_level,
      tags: config.tags,
      work_dir: work_dir,
      # Compressed layers kept between builds; --no-cache compresses every layer again.
      layer_cache: unless(config.no_cache, do: Path.join(base_dir, "layers")),
      output: config.output,
      fallback_output:
        Path.join(base_dir, "#{release_name}-#{String.replace(config.version, "+", "_")}.tar"),
      load: config.load,
      push: config.push,
      insecure_registry: config.insecure_registry,
      registry_ca: config.registry_ca,
      metadata_file: config.metadata_file,
      builder: config.builder,
      project_dir: config.project_dir,
      mix_env: config.env,
      no_cache: config.no_cache,
      base: config.base
    }
  end

  defp run(request) do
    {:ok, job, id} = Native.image_build(request)
    await(job, id)
  after
    File.rm_rf(request.work_dir)
  end

  # Each run gets its own scratch directory (layer blobs), so
  # two runs in one project never touch each other's files. Directories of runs whose OS
  # process is gone (killed) are removed first.
  defp scratch_dir!(base_dir, release_name) do
    runs = Path.join(base_dir, "runs")

    for dir <- Path.wildcard(Path.join(runs, "*-*-*")),
        [_, pid] <- [Regex.run(~r/-(\d+)-\d+$/, dir)],
        not File.exists?("/proc/#{pid}") and File.exists?("/proc/self") do
      File.rm_rf(dir)
    end

    dir = Path.join(runs, "#{release_name}-#{System.pid()}-#{System.unique_integer([:positive])}")

    File.mkdir_p!(dir)
    dir
  end

  defp await(job, id), do: await(job, id, Progress.new(Progress.mode(), Progress.interval()))

  # Lines go to Mix.shell(); byte progress is drawn by DockerRelease.Progress (a live line on a
  # terminal, a plain line every 10 s off one), ended before any other line.
  defp await(job, id, progress) do
    receive do
      {:docker_release, ^id, {:step, text}} ->
        progress = before_line(progress)
        Mix.shell().info("==> " <> text)
        await(job, id, progress)

      {:docker_release, ^id, {:notice, text}} ->
        progress = before_line(progress)
        Mix.shell().info([:yellow, "==> " <> text, :reset])
        await(job, id, progress)

      {:docker_release, ^id, {:output, _step, line}} ->
        progress = before_line(progress)
        Mix.shell().info("    " <> line)
        await(job, id, progress)

      {:docker_release, ^id, {:bytes, step, done}} ->
        {out, progress} = Progress.bytes(progress, step, done, now_ms())
        await(job, id, show(progress, out))

      # `job` is referenced by every clause that waits on: were it garbage-collected while the
      # build runs, the build would be cancelled.
      {:docker_release, ^id, {:ok, outcome}} ->
        before_line(progress)
        {:ok, outcome}

      {:docker_release, ^id, {:error, reason, message}} ->
        before_line(progress)
        {:error, %Error{reason: reason, message: message}}
    after
      1000 ->
        {out, progress} = Progress.tick(progress, now_ms())
        await(job, id, show(progress, out))
    end
  end

  defp now_ms, do: System.monotonic_time(:millisecond)

  defp before_line(progress) do
    {out, progress} = Progress.interrupt(progress)
    show(progress, out)
  end

  # A terminal gets the raw text (carriage returns included); any other shell whole lines.
  defp show(%Progress{mode: :tty} = progress, out) do
    IO.write(out)
    progress
  end

  defp show(progress, out) do
    out
    |> IO.iodata_to_binary()
    |> String.split("\n", trim: true)
    |> Enum.each(&Mix.shell().info/1)

    progress
  end

  # A builder container sees only the project directory: a path dependency of the build's
  # environment outside it cannot be built there. Path deps are followed into their own mix.exs
  # (and into umbrella apps), so one declared deeper down is found too.
  defp check_path_deps!(config, project) do
    env = String.to_atom(config.env)
    root = config.project_dir
    apps_path = project[:apps_path] && Path.expand(project[:apps_path], root)

    children =
      if apps_path && File.dir?(apps_path) do
        for app <- File.ls!(apps_path), File.exists?(Path.join([apps_path, app, "mix.exs"])) do
          Path.join(apps_path, app)
        end
      else
        []
      end

    {outside, _seen} =
      Enum.reduce(
        [{project, root} | Enum.map(children, &{load_config(&1), &1})],
        {[], MapSet.new([root | children])},
        fn
          {proj, dir}, acc -> walk_path_deps(proj, dir, env, root, acc)
        end
      )

    if outside != [] do
      raise Error,
        reason: :invalid_config,
        message:
          "path dependencies outside the project directory cannot be built in a builder container, " <>
            "which sees only #{root}: #{Enum.join(Enum.reverse(outside), ", ")}. Move them inside " <>
            "the project, exclude them from #{config.env} (only: :dev), or build on the host"
    end
  end

  defp walk_path_deps(proj, dir, env, root, acc) do
    Enum.reduce(Keyword.get(proj, :deps, []), acc, fn dep, {outside, seen} = acc ->
      {name, opts} = dep_opts(dep)
      path = opts[:path]

      cond do
        is_nil(path) or opts[:in_umbrella] == true or
            not (is_nil(opts[:only]) or env in List.wrap(opts[:only])) ->
          acc

        not String.starts_with?(Path.expand(path, dir) <> "/", root <> "/") ->
          {[
             "#{inspect(name)} (#{path}) in #{Path.relative_to(Path.join(dir, "mix.exs"), root)}"
             | outside
           ], seen}

        MapSet.member?(seen, Path.expand(path, dir)) ->
          acc

        true ->
          abs = Path.expand(path, dir)
          walk_path_deps(load_config(abs), abs, env, root, {outside, MapSet.put(seen, abs)})
      end
    end)
  end

  # The project/0 of the Mix project in `dir` (without compiling it).
  defp load_config(dir) do
    if File.exists?(Path.join(dir, "mix.exs")) do
      name = String.to_atom("docker_release_dep_#{:erlang.phash2(dir)}")
      # Mix may have loaded this mix.exs already (umbrella apps, deps): reloading is harmless.
      previous = Code.compiler_options()[:ignore_module_conflict]
      Code.compiler_options(ignore_module_conflict: true)

      try do
        Mix.Project.in_project(name, dir, fn _ -> Mix.Project.config() end)
      after
        Code.compiler_options(ignore_module_conflict: previous)
      end
    else
      []
    end
  end

  defp dep_opts({name, opts}) when is_list(opts), do: {name, opts}
  defp dep_opts({name, _req, opts}) when is_list(opts), do: {name, opts}
  defp dep_opts({name, _req}), do: {name, []}

  defp ensure_linux_host! do
    case :os.type() do
      {:unix, :linux} ->
        :ok

      other ->
        raise Error,
          reason: :unsupported_host,
          message:
            "this host (#{inspect(other)}) cannot build a release for a Linux image: a release " <>
              "carries the ERTS of the machine that built it. Build it in a Linux builder container, " <>
              "or pass --from-release with a release built on Linux"
    end
  end

  defp release_name_in(dir) do
    scripts =
      dir
      |> Path.join("bin/*")
      |> Path.wildcard()
      |> Enum.reject(&String.ends_with?(&1, ".bat"))
      |> Enum.map(&Path.basename/1)

    case scripts do
      [name] ->
        name

      [] ->
        raise Error,
          reason: :not_a_release,
          message:
            "#{dir} is not an assembled release: it has no bin/ script. Run `mix release` or pass the release's directory"

      names ->
        raise Error,
          reason: :invalid_config,
          message:
            "#{dir}/bin holds several scripts (#{Enum.join(names, ", ")}): name the release with --release NAME"
    end
  end

  defp own_apps(config, project) do
    if Keyword.has_key?(project, :apps_path) do
      apps_path = Path.expand(project[:apps_path], config.project_dir)

      apps_path
      |> File.ls!()
      |> Enum.filter(&File.exists?(Path.join([apps_path, &1, "mix.exs"])))
    else
      [to_string(config.app)]
    end
  end

  # Applications that ship with OTP and Elixir: they change with the toolchain, not the project.
  defp otp_apps do
    otp =
      :code.root_dir()
      |> Path.join("lib/*")
      |> Path.wildcard()
      |> Enum.map(&(&1 |> Path.basename() |> String.replace(~r/-[^-]*$/, "")))

    otp ++ ~w(elixir eex ex_unit iex logger mix)
  end

  defp created(dir) do
    with epoch when is_binary(epoch) <- System.get_env("SOURCE_DATE_EPOCH"),
         {n, ""} when n >= 0 <- Integer.parse(String.trim(epoch)) do
      n
    else
      _ ->
        case git(dir, ["log", "-1", "--format=%ct"]) do
          {:ok, out} -> String.to_integer(out)
          :error -> @default_epoch
        end
    end
  end

  defp labels(config) do
    base = [
      {"org.opencontainers.image.title", to_string(config.app)},
      {"org.opencontainers.image.version", config.version}
    ]

    git_labels =
      with {:ok, rev} <- git(config.project_dir, ["rev-parse", "HEAD"]) do
        source =
          case git(config.project_dir, ["config", "--get", "remote.origin.url"]) do
            {:ok, url} -> [{"org.opencontainers.image.source", public_url(url)}]
            :error -> []
          end

        [{"org.opencontainers.image.revision", rev} | source]
      else
        _ -> []
      end

    Enum.uniq_by(base ++ git_labels ++ config.labels, &elem(&1, 0))
  end

  @doc """
  A git remote URL without credentials, as https where it can be.

      iex> DockerRelease.public_url("https://user:token@github.com/acme/hello.git")
      "https://github.com/acme/hello.git"
      iex> DockerRelease.public_url("git@github.com:acme/hello.git")
      "https://github.com/acme/hello.git"
      iex> DockerRelease.public_url("ssh://git@example.com:2222/acme/hello.git")
      "ssh://example.com:2222/acme/hello.git"
  """
  @spec public_url(String.t()) :: String.t()
  def public_url(url) do
    cond do
      url =~ ~r{^[a-z][a-z0-9+.-]*://}i ->
        %URI{URI.parse(url) | userinfo: nil} |> URI.to_string()

      match = Regex.run(~r{^(?:[^@/]+@)?([^:/]+):(.+)$}, url) ->
        [_, host, path] = match
        "https://#{host}/#{path}"

      true ->
        url
    end
  end

  defp git(dir, args) do
    case System.find_executable("git") do
      nil ->
        :error

      git ->
        case System.cmd(git, args, cd: dir, stderr_to_stdout: true) do
          {out, 0} -> {:ok, String.trim(out)}
          _ -> :error
        end
    end
  rescue
    _ -> :error
  end
end
