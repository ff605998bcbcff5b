defmodule DockerRelease do
  @moduledoc """
  Turns an Elixir release into a minimal container image, without a base image or a Dockerfile.

  The data flow, one module per arrow:

      config (mix.exs + flags)       DockerRelease.Config
        -> release (host build)      DockerRelease.HostBuild (one run at a time per project:
                                     DockerRelease.BuildLock)
        -> runtime files, layers,    the Rust NIF (DockerRelease.Native): image_core plans the
           image, output             runtime files and writes layers; image_io loads the image
                                     into the engine or writes an archive

  Most users run `mix docker.release`; `build/2` is the same thing as a function.
  """

  alias DockerRelease.{BuildLock, Config, Deps, Error, HostBuild, Native, Progress, Release}

  # The version of docker_release itself, for the SBOM's creator (`Tool: docker_release-VSN`).
  @tool_version Mix.Project.config()[:version]

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
          engine_kind: :docker | :podman | nil,
          engine_size: non_neg_integer | nil,
          archive: String.t() | nil,
          archive_size: non_neg_integer | nil,
          pushed: map | nil,
          sbom_file: map | nil,
          sbom_referrer: map | nil,
          signatures: [map],
          index_digest: String.t() | nil,
          platforms: [
            %{
              platform: String.t(),
              manifest_digest: String.t(),
              image_id: String.t(),
              layers: [map],
              sbom_file: map | nil,
              sbom_referrer: map | nil,
              signatures: [map]
            }
          ],
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
    cond do
      config.build_dockerfile ->
        build_with_dockerfiles(config)

      true ->
        check_engine!(config)
        BuildLock.with_lock(config, project, fn -> config |> request!(project) |> run() end)
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
    check_engine!(config)

    {:ok, job, id} =
      Native.image_dockerfiles(%Native.DockerfilesRequest{
        project_dir: config.project_dir,
        build_dockerfile: config.build_dockerfile,
        dockerfile: config.dockerfile,
        build_tag: config.build_tag,
        version: config.version,
        release_tarball: config.release_tarball,
        final_tags: config.tags,
        no_cache: config.no_cache,
        stall_timeout: config.stall_timeout
      })

    await(job, id)
  rescue
    e in Error -> {:error, e}
  end

  @doc """
  Removes the builder cache volumes (`--builder`) of the project in `project_dir`, or of every
  project when `nil`, from the engine the environment names, each engine request bounded by
  `stall_timeout` seconds of silence. Returns
  `{:ok, %{removed: [name], kept: [{name, why}]}}` (a volume in use is kept) or
  `{:error, %DockerRelease.Error{}}`.

      {:ok, %{removed: _, kept: []}} = DockerRelease.clean_volumes(File.cwd!())
  """
  @spec clean_volumes(Path.t() | nil, pos_integer) :: {:ok, map} | {:error, Error.t()}
  def clean_volumes(project_dir, stall_timeout \\ 300) do
    {:ok, job, id} =
      Native.image_clean(%Native.CleanRequest{
        project_dir: project_dir,
        stall_timeout: stall_timeout
      })

    await(job, id)
  rescue
    e in Error -> {:error, e}
  end

  # The job's request, and the host build to run while the job starts (nil when the release is
  # already there or is built in a builder container).
  defp request!(config, project) do
    release = config.mix_release
    # Before the release build: a bad SOURCE_DATE_EPOCH fails at once.
    created = created(config.project_dir)

    {release_name, release_dir, host_build} =
      cond do
        config.from_release ->
          dir = config.from_release
          HostBuild.warn_build_paths(dir, [dir, config.project_dir])
          {config.release || Release.name_in!(dir), dir, nil}

        config.builder ->
          # Built in the builder container, at the path it runs from in the image.
          check_path_deps!(config, project)

          Mix.shell().info(building(release, config))

          {release.name, "/app", nil}

        true ->
          ensure_linux_host!()

          build = fn ->
            HostBuild.build!(config)
            HostBuild.warn_build_paths(release.dir, build_paths(config, project, release))
          end

          {release.name, release.dir, build}
      end

    cookie_release = if sets_cookie?(project, release_name), do: release_name
    labels = labels(config, created)

    if dirty?(config.project_dir) do
      Mix.shell().info([
        :yellow,
        "==> tracked files under #{config.project_dir} have uncommitted changes: the image gets no " <>
          "org.opencontainers.image.revision label (it would name a commit the image is not)",
        :reset
      ])
    end

    base_dir = Path.join([config.project_dir, "_build", "docker_release"])
    work_dir = scratch_dir!(base_dir, release_name)

    request = %Native.Request{
      release_dir: release_dir,
      release_name: release_name,
      own_apps: own_apps(config, project),
      otp_apps: otp_apps(),
      extra_files: config.extra_files,
      uid: config.uid,
      gid: config.gid,
      env: Enum.map(config.container_env, fn {k, v} -> "#{k}=#{v}" end),
      labels: labels,
      exposed_ports: Enum.map(config.expose, &"#{&1}/tcp"),
      created: created,
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
      named_release: release == nil or release.named?,
      project_dir: config.project_dir,
      mix_env: config.env,
      no_cache: config.no_cache,
      base: config.base,
      platforms: config.platforms,
      platform_images: config.platform_images,
      emulate: config.emulate,
      stall_timeout: config.stall_timeout,
      annotations: annotations(config, labels, created),
      sbom: sbom(config, project, labels),
      sbom_file: sbom_file(config),
      sign_key: signing_key(config),
      await_host_build: host_build != nil
    }

    {request, host_build, cookie_release}
  end

  # The SBOM file: the document the image embeds, written when the whole build succeeds.
  defp sbom_file(config), do: config.sbom

  # The SBOM's inputs that the image's files do not hold (nil: --no-sbom).
  defp sbom(%Config{no_sbom: true}, _project, _labels), do: nil

  defp sbom(config, project, labels) do
    label = &List.keyfind(labels, "org.opencontainers.image." <> &1, 0)

    %Native.Sbom{
      format: config.sbom_format,
      name: to_string(config.app),
      version: config.version,
      source: with({_, v} <- label.("source"), do: v),
      revision: with({_, v} <- label.("revision"), do: v),
      tool_version: @tool_version,
      deps: Deps.sources(project, config.project_dir, config.env)
    }
  end

  # The key signs pushed images only.
  defp signing_key(%Config{sign_key_pem: nil}), do: nil

  defp signing_key(%Config{push: false} = config) do
    Mix.shell().info([
      :yellow,
      "==> not signing: nothing is pushed (the key from #{config.sign_key_source} signs images pushed with --push)",
      :reset
    ])

    nil
  end

  defp signing_key(config), do: config.sign_key_pem

  # Before the release build (which takes minutes): an engine address given explicitly
  # (DOCKER_HOST, a Docker context) must be usable, and a run that needs an engine must have
  # one. Only the implicit default socket may be missing, and only when an archive can be
  # written instead. Nothing is connected to here.
  defp check_engine!(config) do
    needs_engine = config.build_dockerfile != nil or config.builder != nil or config.load
    may_use_engine = needs_engine or (config.output == nil and not config.push)

    if may_use_engine do
      case Native.engine_endpoint() do
        {:ok, nil} when needs_engine ->
          raise Error,
            reason: :engine_unreachable,
            message:
              "this build needs a Docker engine, and there is none: no socket at the default " <>
                "address unix:///var/run/docker.sock, and neither DOCKER_HOST nor a Docker " <>
                "context names another. Start dockerd or set DOCKER_HOST"

        {:ok, _} ->
          :ok

        {:error, reason, message} ->
          raise Error, reason: reason, message: message
      end
    end
  end

  # The job starts first: what does not need the new release (the engine connection, its
  # platform) is done while the host's `mix release` runs; then the job goes on with it.
  defp run({request, host_build, cookie_release}) do
    {:ok, job, id} = Native.image_build(request)

    if host_build do
      try do
        host_build.()
      rescue
        e ->
          Native.job_cancel(job)
          flush(id)
          reraise e, __STACKTRACE__
      end

      Native.job_resume(job)
    end

    with {:ok, outcome} <- await(job, id) do
      cookie_notice(cookie_release, outcome)
      {:ok, outcome}
    end
  after
    File.rm_rf(request.work_dir)
  end

  # The messages of a cancelled job, up to its final one.
  defp flush(id) do
    receive do
      {:docker_release, ^id, {:ok, _}} -> :ok
      {:docker_release, ^id, {:error, _, _}} -> :ok
      {:docker_release, ^id, _} -> flush(id)
    after
      10_000 -> :ok
    end
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

  # Directories of this machine that must not be baked into the release (it runs from /app).
  defp build_paths(config, project, release) do
    build_path = Path.expand(Keyword.get(project, :build_path, "_build"), config.project_dir)
    [release.dir, build_path, config.project_dir]
  end

  # Whether the release config of `release_name` sets a `cookie:`.
  defp sets_cookie?(project, release_name) do
    options = Keyword.get(Keyword.get(project, :releases, []), String.to_atom(release_name), [])
    Keyword.has_key?(options, :cookie)
  end

  # A `cookie:` in the release config is a choice: once the image is built, say that it stays
  # out of the image, and how to give it to the containers (with the command of the engine the
  # image went to).
  defp cookie_notice(nil, _outcome), do: :ok

  defp cookie_notice(release_name, outcome) do
    Mix.shell().info([
      :yellow,
      "==> release #{release_name} sets cookie: in mix.exs; it is not put into the image (anyone " <>
        "who can pull an image can read its files). Give it to each container at run time: " <>
        "#{engine_cli(outcome)} run -e RELEASE_COOKIE=... (the same value on every node that " <>
        "should connect)",
      :reset
    ])
  end

  @doc """
  The command people use with the engine a build's `outcome` went to: `"podman"` when that
  engine is Podman (its Docker-compatible API, `engine_kind: :podman`), `"docker"` otherwise,
  also when no engine was used (an archive, a registry).

      iex> DockerRelease.engine_cli(%{engine_kind: :podman})
      "podman"
      iex> DockerRelease.engine_cli(%{engine_kind: :docker})
      "docker"
      iex> DockerRelease.engine_cli(%{engine_kind: nil})
      "docker"
  """
  @spec engine_cli(%{engine_kind: :docker | :podman | nil}) :: String.t()
  def engine_cli(%{engine_kind: :podman}), do: "podman"
  def engine_cli(_outcome), do: "docker"

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

  # What a builder build is about to do. With `--emulate`, the NIF finds each platform's builder
  # (and the builder image's own platform may not be built at all): its steps name them.
  defp building(release, %{emulate: true} = config),
    do:
      "==> building release #{release.name} for #{Enum.join(config.platforms, ", ")} with --emulate" <>
        " (builder #{config.builder}, MIX_ENV=#{config.env})"

  defp building(release, config),
    do: "==> building release #{release.name} in #{config.builder} (MIX_ENV=#{config.env})"

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
        [{project, root} | Enum.map(children, &{Release.mix_config(&1), &1})],
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
    Enum.reduce(DockerRelease.Deps.env_path_deps(proj, env), acc, fn {name, path},
                                                                     {outside, seen} = acc ->
      cond do
        not String.starts_with?(Path.expand(path, dir) <> "/", root <> "/") ->
          {[
             "#{inspect(name)} (#{path}) in #{Path.relative_to(Path.join(dir, "mix.exs"), root)}"
             | outside
           ], seen}

        MapSet.member?(seen, Path.expand(path, dir)) ->
          acc

        true ->
          abs = Path.expand(path, dir)

          walk_path_deps(
            Release.mix_config(abs),
            abs,
            env,
            root,
            {outside, MapSet.put(seen, abs)}
          )
      end
    end)
  end

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
    case Config.source_date_epoch!(System.get_env("SOURCE_DATE_EPOCH")) do
      nil ->
        case git(dir, ["log", "-1", "--format=%ct"]) do
          {:ok, out} -> String.to_integer(out)
          :error -> @default_epoch
        end

      n ->
        n
    end
  end

  @doc """
  The image's labels: OCI `title` (the app, or an umbrella's release), `version` (the
  release's) and, given the image's timestamp, `created` (RFC 3339), then from git, when
  `config.project_dir` is in a work tree:

    * `org.opencontainers.image.revision` - the commit (`HEAD`), only when no tracked file
      under the project directory has uncommitted changes: a dirty tree's image is not that
      commit, so it gets no revision label (`dirty?/1`);
    * `org.opencontainers.image.source` - the `origin` remote, only when `source_url/1` makes a
      URL a reader can open of it.

  `config.labels` (`labels:` in `mix.exs`, `--label`) come last and win.
  """
  @spec labels(Config.t(), non_neg_integer | nil) :: [{String.t(), String.t()}]
  def labels(%Config{} = config, created \\ nil) do
    base =
      [
        {"org.opencontainers.image.title", to_string(config.app)},
        {"org.opencontainers.image.version", config.version}
      ] ++ if(created, do: [{"org.opencontainers.image.created", rfc3339(created)}], else: [])

    git_labels =
      case git(config.project_dir, ["rev-parse", "HEAD"]) do
        {:ok, rev} ->
          revision =
            if dirty?(config.project_dir),
              do: [],
              else: [{"org.opencontainers.image.revision", rev}]

          source =
            with {:ok, url} <- git(config.project_dir, ["config", "--get", "remote.origin.url"]),
                 url when is_binary(url) <- source_url(url) do
              [{"org.opencontainers.image.source", url}]
            else
              _ -> []
            end

          revision ++ source

        :error ->
          []
      end

    last_wins(base ++ git_labels ++ config.labels)
  end

  @doc """
  The annotations of the image's manifest: `org.opencontainers.image.created` (the image's
  timestamp, RFC 3339) and the `version`, `revision` and `source` of `labels` (as
  `labels/2` gives them), then `config.annotations` (`annotations:` in `mix.exs`,
  `--annotation`), which win. Annotations change the manifest digest, not the image ID;
  `docker load` does not keep them, registries and OCI tools do.

      iex> config = DockerRelease.Config.new!([app: :hello, version: "1.0.0"], annotations: [{"team", "core"}])
      iex> DockerRelease.annotations(config, [{"org.opencontainers.image.version", "1.0.0"}], 0)
      [{"org.opencontainers.image.created", "1970-01-01T00:00:00Z"}, {"org.opencontainers.image.version", "1.0.0"}, {"team", "core"}]
  """
  @spec annotations(Config.t(), [{String.t(), String.t()}], non_neg_integer) ::
          [{String.t(), String.t()}]
  def annotations(%Config{} = config, labels, created) do
    from_labels =
      for key <- ~w(version revision source),
          {k, v} <- [List.keyfind(labels, "org.opencontainers.image." <> key, 0)],
          do: {k, v}

    last_wins(
      [{"org.opencontainers.image.created", rfc3339(created)} | from_labels] ++
        config.annotations
    )
  end

  # One pair per key, the last value given, at the key's first position.
  defp last_wins(pairs) do
    last = Map.new(pairs)
    pairs |> Enum.uniq_by(&elem(&1, 0)) |> Enum.map(fn {k, _} -> {k, last[k]} end)
  end

  defp rfc3339(seconds), do: seconds |> DateTime.from_unix!() |> DateTime.to_iso8601()

  @doc """
  Whether tracked files under `dir` (a directory in a git work tree) have uncommitted changes,
  staged or not. Untracked files do not count. `false` outside a work tree.
  """
  @spec dirty?(Path.t()) :: boolean
  def dirty?(dir) do
    case git(dir, ["status", "--porcelain", "--untracked-files=no", "--", "."]) do
      {:ok, ""} -> false
      {:ok, _changes} -> true
      :error -> false
    end
  end

  @doc """
  A git remote as a URL a reader can open, for `org.opencontainers.image.source`, or `nil`.

  `https` URLs are kept without user info (credentials), query string and fragment; scp-like
  `[user@]host:path` and `ssh://[user@]host/path` (no port) become `https://host/path`. Anything
  else (a local path, `file://`, `http://`, `git://`, `ssh://` with a port) gives `nil`: no label.

      iex> DockerRelease.source_url("https://user:token@github.com/acme/hello.git?ref=x#frag")
      "https://github.com/acme/hello.git"
      iex> DockerRelease.source_url("git@github.com:acme/hello.git")
      "https://github.com/acme/hello.git"
      iex> DockerRelease.source_url("ssh://git@gitlab.example.com/acme/hello.git")
      "https://gitlab.example.com/acme/hello.git"
      iex> DockerRelease.source_url("ssh://git@example.com:2222/acme/hello.git")
      nil
      iex> DockerRelease.source_url("/home/me/repos/hello.git")
      nil
      iex> DockerRelease.source_url("file:///home/me/repos/hello.git")
      nil
  """
  @spec source_url(String.t()) :: String.t() | nil
  def source_url(url) do
    cond do
      url =~ ~r{^[a-z][a-z0-9+.-]*://}i ->
        case URI.parse(url) do
          %URI{scheme: "https", host: host} = uri when is_binary(host) and host != "" ->
            URI.to_string(%URI{uri | userinfo: nil, query: nil, fragment: nil})

          %URI{scheme: "ssh", host: host, port: port, path: "/" <> path}
          when is_binary(host) and host != "" and port in [nil, 22] and path != "" ->
            "https://#{host}/#{path}"

          _ ->
            nil
        end

      match = Regex.run(~r{^(?:[^@/:]+@)?([A-Za-z0-9][A-Za-z0-9.-]*):/*([^/].*)$}, url) ->
        [_, host, path] = match
        if String.contains?(host, "."), do: "https://#{host}/#{path}"

      true ->
        nil
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
