defmodule DockerRelease.Config do
  @moduledoc """
  The settings of one `mix docker.release` run: the `docker_release:` keyword list of the
  project's `project/0`, overridden by command-line flags, validated as a whole.

      def project do
        [
          app: :hello,
          version: "0.1.0",
          docker_release: [
            tags: ["ghcr.io/acme/hello:0.1.0"],
            expose: [4000],
            extra_files: ["/usr/share/zoneinfo"]
          ]
        ]
      end

  Keys (each also a flag of `mix docker.release`, see `mix help docker.release`):

    * `:env` - the Mix environment the release is built in. Default `"prod"`.
    * `:release` - which release of `releases:` to build, when there are several and
      `default_release:` names none. Without a `releases:` key the project's default release
      (named after `:app`) is built, as by a plain `mix release`.
    * `:from_release` - an already-assembled release directory: skip the build.
    * `:tags` - image references `NAME[:TAG]`. Default `APP:VERSION` and `APP:latest`.
    * `:output` - write an image archive at this path instead of loading into the engine.
    * `:metadata_file` - write a JSON summary (tags, image ID, digests, layers, sizes) here.
    * `:extra_files` - paths of the build environment to copy into the image at the same path,
      for what the library closure cannot see (libraries opened with `dlopen`, data files).
    * `:uid`, `:gid` - the numeric user and group the container runs as. Default `65532`.
    * `:expose` - ports the image declares, e.g. `[4000]`.
    * `:container_env` - extra environment of the image, `[{"NAME", "value"}]`. `--container-env
      NAME=value` adds to it (a name given both ways takes the flag's value).
    * `:labels` - extra image labels, `[{"key", "value"}]`; they win over the OCI labels the
      task sets itself. `--label KEY=VALUE` adds to them (the flag wins for a key given both
      ways).
    * `:annotations` - extra annotations of the image's manifest, `[{"key", "value"}]`, over
      the ones the task sets (`org.opencontainers.image.created`, `.version`, `.revision`,
      `.source`); `--annotation KEY=VALUE` adds to them.
    * `:sbom` - also write the image's SBOM to this path (with several `:platforms`, each
      platform's SBOM beside it, the platform added to its name: `sbom-linux-amd64.spdx.json`).
    * `:sbom_format` - `"spdx"` (SPDX 2.3 JSON, the default) or `"cyclonedx"` (CycloneDX 1.5
      JSON).
    * `:no_sbom` - no SBOM in the image (and none written: excludes `:sbom`).
    * `:sign_key` - a PEM file with an ECDSA P-256 private key that signs the pushed image
      (cosign's format; with several `:platforms`, the index and each platform's image). The
      environment variable `DOCKER_RELEASE_SIGN_KEY` may hold the PEM text instead; the flag
      wins over the variable, the variable over `mix.exs`.
    * `:compression_level` - gzip level of the layers, 1 (fast, default) to 9 (small).
    * `:push` - push to the registry the tags name, over the distribution API (no engine needed).
    * `:load` - also load into the engine when `:push` or `:output` is given.
    * `:insecure_registry` - allow plain HTTP to the registry (loopback registries always may).
    * `:builder` - build the release inside a container of this image (Elixir and OTP of your
      production OS) instead of on the host; the runtime files come from that container.
    * `:base` - put the release on this base image (from the engine, or a registry) instead of
      the runtime files; a base that cannot run the release is refused, saying why.
    * `:platforms` - build one image per platform and an image index over them, e.g.
      `["linux/amd64", "linux/arm64"]` (`OS/ARCH[/VARIANT]`; `linux/arm64` is
      `linux/arm64/v8`). The release is built once; each other platform's ERTS, OTP native
      files and runtime files come from an image of that platform, read and never run (see
      "Several platforms" in `mix help docker.release`). Default: one image, for the
      platform the release is built on.
    * `:platform_images` - where a platform's files come from, `[{"linux/arm64", "IMAGE"}]`: an
      image of that platform with the Erlang/OTP the release is built with (with `:emulate`:
      that platform's builder). Default: the builder's image for that platform.
    * `:emulate` - build the release for each other platform in a builder of that platform run
      under emulation (QEMU; slow), for projects whose dependencies or own apps have native
      code (NIFs, port programs), which an image of another platform cannot provide. Needs
      `:builder`.
    * `:build_dockerfile` - run the two-Dockerfile flow instead (see `mix help docker.release`):
      build the release with this `Dockerfile.build`, then the image with `:dockerfile`.
    * `:dockerfile` - the final image's Dockerfile in that flow. Default `"Dockerfile"`.
    * `:build_tag` - the build image's tag in that flow. Default `APP-build:VERSION`.
    * `:release_tarball` - the tarball's name under `/tmp` in the build image. Default `APP.tar.gz`.
    * `:no_cache` - build without the engine's or docker_release's caches.
    * `:registry_ca` - a PEM file of CA certificates the registry's TLS certificate is checked
      against, besides the system's.
    * `:stall_timeout` - seconds a request to the engine or a registry may go with no byte
      moved and no answer before the run fails (default 300; see `mix help docker.release`).
      The environment variable `DOCKER_RELEASE_STALL_TIMEOUT` sets it too; the flag wins over
      the variable, the variable over `mix.exs`.

  Besides these keys the struct holds what the project says: `app` (the image's name: the
  app, or for an umbrella the release), `version` (the release's own `version:` when it has
  one, else the project's: the default tags and the version label use it), `project_dir`, and
  `mix_release`, the `DockerRelease.Release` to build (`nil` with `:from_release` or
  `:build_dockerfile`). An umbrella without `releases:`, several releases and none picked, or a
  release an image cannot run (`include_erts: false`, no `:unix` executables) is refused here,
  before anything is built, with what to change in `mix.exs`.
  """

  @type t :: %__MODULE__{}

  @derive {Inspect, except: [:sign_key_pem]}

  alias DockerRelease.Release

  defstruct app: nil,
            version: nil,
            project_dir: nil,
            env: "prod",
            release: nil,
            from_release: nil,
            tags: nil,
            output: nil,
            metadata_file: nil,
            extra_files: [],
            uid: 65532,
            gid: 65532,
            expose: [],
            container_env: [],
            labels: [],
            compression_level: 1,
            load: false,
            push: false,
            insecure_registry: false,
            registry_ca: nil,
            build_dockerfile: nil,
            dockerfile: "Dockerfile",
            build_tag: nil,
            release_tarball: nil,
            no_cache: false,
            builder: nil,
            base: nil,
            platforms: [],
            platform_images: [],
            emulate: false,
            mix_release: nil,
            stall_timeout: 300,
            annotations: [],
            sbom: nil,
            sbom_format: "spdx",
            no_sbom: false,
            sign_key: nil,
            # The signing key's PEM text and where it came from (for messages): loaded and
            # checked by new!/3, never inspected.
            sign_key_pem: nil,
            sign_key_source: nil

  # Seconds; a day is far beyond any healthy silence, and a typo like 30000 should be caught.
  @max_stall 86_400

  @keys [
    :env,
    :release,
    :from_release,
    :tags,
    :output,
    :metadata_file,
    :extra_files,
    :uid,
    :gid,
    :expose,
    :container_env,
    :labels,
    :compression_level,
    :load,
    :push,
    :insecure_registry,
    :registry_ca,
    :build_dockerfile,
    :dockerfile,
    :build_tag,
    :release_tarball,
    :no_cache,
    :builder,
    :base,
    :platforms,
    :platform_images,
    :emulate,
    :stall_timeout,
    :annotations,
    :sbom,
    :sbom_format,
    :no_sbom,
    :sign_key
  ]

  # Lists of {key, value} pairs that the command line adds to rather than replaces.
  @pair_keys [:labels, :annotations, :container_env]

  @doc """
  Builds and validates the configuration from a project's `project/0` keyword list and the
  options parsed from the command line (which win). Raises `DockerRelease.Error` with reason
  `:invalid_config` or `:invalid_reference` on bad input.

      iex> config = DockerRelease.Config.new!([app: :hello, version: "1.0.0+build.1"], [])
      iex> config.tags
      ["hello:1.0.0_build.1", "hello:latest"]
      iex> DockerRelease.Config.new!([app: :hello, version: "1.0.0"], uid: -1)
      ** (DockerRelease.Error) invalid uid: expected an integer from 0 to 4294967295, got: -1
  """
  @spec new!(keyword, keyword, Path.t()) :: t
  def new!(project, opts, project_dir \\ File.cwd!()) do
    file_config =
      case Keyword.get(project, :docker_release, []) do
        list when is_list(list) ->
          list

        other ->
          invalid!(
            "the docker_release: key of project/0 must be a keyword list, got: #{inspect(other)}"
          )
      end

    unless Keyword.keyword?(file_config) do
      invalid!(
        "the docker_release: key of project/0 must be a keyword list, got: #{inspect(file_config)}"
      )
    end

    case Keyword.keys(file_config) -- @keys do
      [] ->
        :ok

      unknown ->
        invalid!(
          "unknown key(s) #{Enum.map_join(unknown, ", ", &inspect/1)} under docker_release: in mix.exs; " <>
            "known keys: #{Enum.map_join(@keys, ", ", &inspect/1)}"
        )
    end

    flags = Enum.reject(opts, fn {_k, v} -> v in [nil, []] end)

    merged =
      file_config
      |> Keyword.merge(env_config())
      |> Keyword.merge(flags)
      |> Keyword.merge(merge_pairs(file_config, flags))

    types!(merged)
    env = to_string(Keyword.get(merged, :env, "prod"))
    requested = merged[:release] && to_string(merged[:release])
    check_names!(env, requested)

    {app, version, mix_release} = release!(project, merged, project_dir, env, requested)

    config =
      struct!(
        __MODULE__,
        [app: app, version: version, project_dir: project_dir, mix_release: mix_release] ++
          merged
      )

    config |> validate!() |> supply_chain!(Keyword.has_key?(flags, :sign_key))
  end

  # mix.exs pairs, then the flags' (a key given both ways takes the flag's value, in the
  # place mix.exs gave it). Anything that is not a list is left for validate!/1 to refuse.
  defp merge_pairs(file_config, flags) do
    for key <- @pair_keys,
        Keyword.has_key?(file_config, key) or Keyword.has_key?(flags, key),
        from_file = Keyword.get(file_config, key, []),
        from_flags = Keyword.get(flags, key, []),
        is_list(from_file) and is_list(from_flags) do
      {key, pairs_over(from_file, from_flags)}
    end
  end

  # `base`'s pairs with the values `over` gives their keys (its last value for a key), then
  # `over`'s other keys in order. Entries that are not pairs are kept for pairs!/2 to refuse.
  defp pairs_over(base, over) do
    if Enum.all?(base ++ over, &match?({_, _}, &1)) do
      last = Map.new(over)
      in_base = MapSet.new(base, &elem(&1, 0))
      replaced = Enum.map(base, fn {k, v} -> {k, Map.get(last, k, v)} end)

      added =
        for k <- Enum.uniq(Enum.map(over, &elem(&1, 0))),
            not MapSet.member?(in_base, k),
            do: {k, last[k]}

      replaced ++ added
    else
      base ++ over
    end
  end

  @doc """
  The bound on silence for a command that has no project configuration (`mix
  docker.release.clean`): `flag` (`--stall-timeout`) when given, else
  `DOCKER_RELEASE_STALL_TIMEOUT`, else 300 seconds; checked as `mix docker.release` checks it.
  Raises `DockerRelease.Error` (`:invalid_config`) for a value out of range.
  """
  @spec stall_timeout!(integer | nil) :: pos_integer
  def stall_timeout!(flag) do
    seconds = flag || Keyword.get(env_config(), :stall_timeout, 300)
    uint!(:stall_timeout, seconds, 1, @max_stall)
    seconds
  end

  # Settings from the environment, between mix.exs and the flags.
  defp env_config do
    case System.get_env("DOCKER_RELEASE_STALL_TIMEOUT") do
      nil ->
        []

      text ->
        case Integer.parse(String.trim(text)) do
          {n, ""} ->
            [stall_timeout: n]

          _ ->
            invalid!(
              "invalid DOCKER_RELEASE_STALL_TIMEOUT: expected a whole number of seconds from 1 to #{@max_stall}, got: #{inspect(text)}"
            )
        end
    end
  end

  # The image's name (the app, or the release of an umbrella), its version, and the release
  # `mix release` builds (none with --from-release or the Dockerfile flow).
  defp release!(project, merged, project_dir, env, requested) do
    cond do
      from = merged[:from_release] ->
        name =
          requested ||
            (project[:app] == nil &&
               Release.name_in!(Path.expand(to_string(from), project_dir)))

        {project[:app] || String.to_atom(name),
         Release.version(project, project_dir, name || to_string(project[:app])), nil}

      merged[:build_dockerfile] ->
        app =
          project[:app] ||
            String.to_atom(Release.choose!(project, project_dir, env, requested).name)

        {app, project[:version], nil}

      true ->
        release = Release.choose!(project, project_dir, env, requested)
        {project[:app] || String.to_atom(release.name), release.version, release}
    end
  end

  defp check_names!(env, requested) do
    unless env =~ ~r/^[a-z][a-z0-9_]*$/,
      do: invalid!("invalid env: expected a Mix environment name like prod, got: #{inspect(env)}")

    if requested && not (requested =~ ~r/^[a-z][a-z0-9_]*$/),
      do:
        invalid!(
          "invalid release name: it must start with a lowercase letter and contain only lowercase letters, digits and _, got: #{inspect(requested)}"
        )
  end

  defp validate!(%__MODULE__{} = c) do
    unless is_binary(c.version), do: invalid!("the project has no :version in project/0")

    c = %{
      c
      | env: to_string(c.env),
        release:
          if(c.mix_release, do: c.mix_release.name, else: c.release && to_string(c.release)),
        tags: c.tags || default_tags(c),
        build_tag: c.build_tag || "#{c.app}-build:#{String.replace(c.version || "", "+", "_")}",
        release_tarball: c.release_tarball || "#{c.app}.tar.gz",
        from_release: expand(c.from_release, c),
        output: expand(c.output, c),
        metadata_file: expand(c.metadata_file, c),
        registry_ca: expand(c.registry_ca, c),
        sbom: expand(c.sbom, c),
        sign_key: expand(c.sign_key, c),
        sbom_format:
          if(is_atom(c.sbom_format), do: to_string(c.sbom_format), else: c.sbom_format),
        extra_files:
          Enum.map(List.wrap(c.extra_files), &Path.expand(to_string(&1), c.project_dir))
    }

    uint!(:uid, c.uid, 0, 4_294_967_295)
    uint!(:gid, c.gid, 0, 4_294_967_295)
    uint!(:compression_level, c.compression_level, 1, 9)
    uint!(:stall_timeout, c.stall_timeout, 1, @max_stall)

    unless is_list(c.expose) and Enum.all?(c.expose, &(is_integer(&1) and &1 in 1..65535)),
      do:
        invalid!(
          "invalid expose: expected a list of port numbers from 1 to 65535, got: #{inspect(c.expose)}"
        )

    unless is_binary(c.release_tarball) and c.release_tarball =~ ~r/^[A-Za-z0-9._-]+$/,
      do:
        invalid!(
          "invalid release_tarball: expected a file name like app.tar.gz, got: #{inspect(c.release_tarball)}"
        )

    if c.builder && not is_binary(c.builder),
      do:
        invalid!(
          "invalid builder: expected an image reference string, got: #{inspect(c.builder)}"
        )

    if c.base && not is_binary(c.base),
      do: invalid!("invalid base: expected an image reference string, got: #{inspect(c.base)}")

    if c.builder && c.from_release,
      do:
        invalid!("--builder and --from-release exclude each other: a builder builds the release")

    if c.build_dockerfile do
      for {key, value} <- [build_tag: c.build_tag] do
        case DockerRelease.Native.reference_parse(value) do
          {:ok, _} ->
            :ok

          {:error, message} ->
            raise DockerRelease.Error, reason: :invalid_reference, message: "#{key}: #{message}"
        end
      end
    end

    for key <- [:load, :push, :insecure_registry, :no_cache, :no_sbom, :emulate] do
      unless is_boolean(Map.fetch!(c, key)),
        do:
          invalid!("invalid #{key}: expected true or false, got: #{inspect(Map.fetch!(c, key))}")
    end

    pairs!(:container_env, c.container_env)
    pairs!(:labels, c.labels)
    pairs!(:annotations, c.annotations)

    unless c.sbom_format in ["spdx", "cyclonedx"],
      do:
        invalid!(
          "invalid sbom_format: expected spdx (SPDX 2.3 JSON) or cyclonedx (CycloneDX 1.5 JSON), got: #{inspect(c.sbom_format)}"
        )

    if c.no_sbom && c.sbom,
      do:
        invalid!(
          "--no-sbom and --sbom exclude each other: --no-sbom makes no SBOM, so there is none to write to #{c.sbom}"
        )

    if c.sbom, do: writable!(:sbom, c.sbom)

    c = platforms!(c)

    if c.sbom && length(c.platforms) > 1, do: sbom_per_platform!(c.sbom, c.platforms)

    tags = List.wrap(c.tags)

    if tags == [], do: invalid!("tags: give at least one NAME[:TAG]")

    Enum.each(tags, fn tag ->
      unless is_binary(tag),
        do: invalid!("invalid tag: expected a string NAME[:TAG], got: #{inspect(tag)}")

      case DockerRelease.Native.reference_parse(tag) do
        {:ok, _} ->
          :ok

        {:error, message} ->
          raise DockerRelease.Error,
            reason: :invalid_reference,
            message:
              message <> ". A reference is [HOST[:PORT]/]PATH[:TAG], e.g. ghcr.io/acme/hello:1.0"
      end
    end)

    %{c | tags: tags}
  end

  # `platforms:`, `platform_images:` and `emulate:` in their normal form (the NIF checks them:
  # the same rules the build applies), and the options they cannot go with.
  defp platforms!(%__MODULE__{platforms: [], platform_images: [], emulate: false} = c), do: c

  defp platforms!(%__MODULE__{} = c) do
    {platforms, images} =
      case DockerRelease.Native.platform_check(c.platforms, c.platform_images, c.emulate) do
        {:ok, platforms, images} -> {platforms, images}
        {:error, message} -> invalid!(message)
      end

    cond do
      c.base ->
        invalid!(
          "--platform and --base exclude each other: a multi-platform image would need a base image per platform. Drop one of them"
        )

      c.build_dockerfile ->
        invalid!(
          "--platform does not apply to the two-Dockerfile flow (--build-dockerfile), which builds one image with docker build. Drop one of them"
        )

      c.emulate and c.builder == nil ->
        invalid!(
          "--emulate builds the release in a builder of each platform, run under emulation: it needs --builder IMAGE"
        )

      missing = c.builder == nil && platforms_without_files(platforms, images) ->
        [p | _] = missing
        host = host_platform()

        invalid!(
          "--platform #{p}: a release built on this machine (#{host}) has no builder image whose #{p} variant could provide #{p}'s files: name an image of #{p} with the same Erlang/OTP as this machine's, --platform-image #{p}=IMAGE, or build in a builder (--builder IMAGE)"
        )

      true ->
        %{c | platforms: platforms, platform_images: images}
    end
  end

  # With several platforms `--sbom PATH` writes one file per platform beside PATH, the
  # platform added to its name: a device or FIFO at PATH cannot name them.
  defp sbom_per_platform!(path, platforms) do
    case File.stat(path) do
      {:ok, %{type: type}} when type != :regular ->
        invalid!(
          "--sbom #{path} with several platforms (#{Enum.join(platforms, ", ")}): one SBOM file is written per platform, beside the path given with the platform added to its name (sbom-linux-amd64.spdx.json for sbom.spdx.json), and #{path} is a device or FIFO, which cannot name them. Give the path of a file"
        )

      _ ->
        :ok
    end
  end

  # A build on this machine takes another platform's files from `--platform-image` only:
  # the platforms (normal form) that are not this machine's and have none, or nil. Checked
  # here so that the refusal comes before the release is built, not after.
  defp platforms_without_files(platforms, images) do
    host = host_platform()
    named = Enum.map(images, &elem(&1, 0))

    case Enum.reject(platforms, &(&1 == host or &1 in named)) do
      [] -> nil
      missing when host != nil -> missing
      _unknown_host -> nil
    end
  end

  # This machine's platform in the normal form of `platform_check` (nil when unknown here: the
  # build then says it).
  defp host_platform do
    case :erlang.system_info(:system_architecture) |> to_string() |> String.split("-") do
      ["x86_64" | _] -> "linux/amd64"
      ["aarch64" | _] -> "linux/arm64/v8"
      _ -> nil
    end
  end

  # The type of every key that is read as a path or name, checked before anything uses it.
  defp types!(merged) do
    for key <- [
          :from_release,
          :output,
          :metadata_file,
          :registry_ca,
          :build_dockerfile,
          :dockerfile,
          :sbom,
          :sign_key
        ] do
      path!(key, merged[key])
    end

    extra_files = Keyword.get(merged, :extra_files, [])

    unless Enum.all?(List.wrap(extra_files), &path?/1),
      do:
        invalid!(
          "invalid extra_files: expected a list of paths (strings without NUL bytes), got: #{inspect(extra_files)}"
        )

    for key <- [:env, :release] do
      value = merged[key]

      unless is_nil(value) or is_binary(value) or (is_atom(value) and value not in [true, false]),
        do: invalid!("invalid #{key}: expected a name (a string), got: #{inspect(value)}")
    end

    platforms = Keyword.get(merged, :platforms, [])

    unless is_list(platforms) and Enum.all?(platforms, &name?/1),
      do:
        invalid!(
          ~s(invalid platforms: expected a list of platforms like "linux/arm64", got: #{inspect(platforms)})
        )

    images = Keyword.get(merged, :platform_images, [])

    pair? = fn
      {p, i} -> name?(p) and name?(i)
      _ -> false
    end

    unless is_list(images) and Enum.all?(images, pair?),
      do:
        invalid!(
          ~s(invalid platform_images: expected a list of {"PLATFORM", "IMAGE"} string pairs like {"linux/arm64", "ghcr.io/acme/builder:arm64"}, got: #{inspect(images)})
        )

    for key <- [:builder, :base, :build_tag, :release_tarball] do
      value = merged[key]

      unless is_nil(value) or (is_binary(value) and not String.contains?(value, <<0>>)),
        do: invalid!("invalid #{key}: expected a string, got: #{inspect(value)}")
    end
  end

  # A file the run will write: its directory must exist and take a new file, or the file
  # itself must be writable; a directory is refused. Nothing is left behind (the probe file is
  # removed; an existing file is opened for appending, which changes nothing).
  defp writable!(key, path) do
    dir = Path.dirname(path)
    flag = "--" <> String.replace(to_string(key), "_", "-")

    case File.stat(path) do
      {:ok, %{type: :directory}} ->
        invalid!(
          "#{flag} #{path} is a directory; give a file path, e.g. #{Path.join(path, "sbom.spdx.json")}"
        )

      {:ok, %{type: :regular}} ->
        case File.open(path, [:append]) do
          {:ok, f} ->
            File.close(f)

          {:error, why} ->
            invalid!("#{flag} #{path} cannot be written: #{:file.format_error(why)}")
        end

      {:ok, _device_or_fifo} ->
        :ok

      {:error, _} ->
        case File.stat(dir) do
          {:ok, %{type: :directory}} ->
            probe = Path.join(dir, ".#{Path.basename(path)}.probe-#{System.pid()}")

            case File.open(probe, [:write, :exclusive]) do
              {:ok, f} ->
                File.close(f)
                File.rm(probe)

              {:error, why} ->
                invalid!(
                  "#{flag} #{path} cannot be written: no new file can be made in #{dir} (#{:file.format_error(why)})"
                )
            end

          {:ok, _} ->
            invalid!("#{flag} #{path} cannot be written: #{dir} is not a directory")

          {:error, why} ->
            invalid!(
              "#{flag} #{path} cannot be written: its directory #{dir} does not exist (#{:file.format_error(why)}); create it first"
            )
        end
    end
  end

  # The signing key: --sign-key's file, else DOCKER_RELEASE_SIGN_KEY's text, else mix.exs's
  # sign_key: file; checked by the native library's parser (the one that signs) before any
  # image work. Messages never contain the key.
  defp supply_chain!(c, sign_key_flag?) do
    env_key = System.get_env("DOCKER_RELEASE_SIGN_KEY")

    {source, pem} =
      cond do
        c.sign_key && (sign_key_flag? || env_key in [nil, ""]) ->
          case File.read(c.sign_key) do
            {:ok, pem} ->
              {"--sign-key #{c.sign_key}", pem}

            {:error, why} ->
              invalid!("--sign-key #{c.sign_key} cannot be read: #{:file.format_error(why)}")
          end

        env_key not in [nil, ""] ->
          {"DOCKER_RELEASE_SIGN_KEY", env_key}

        true ->
          {nil, nil}
      end

    if pem do
      case DockerRelease.Native.signing_check_key(pem) do
        {:ok, _public_pem} -> :ok
        {:error, why} -> invalid!("invalid signing key: #{source} #{why}")
      end
    end

    %{c | sign_key_pem: pem, sign_key_source: source}
  end

  defp path!(_key, nil), do: :ok

  defp path!(key, value) do
    unless path?(value),
      do:
        invalid!(
          "invalid #{key}: expected a path (a non-empty string without NUL bytes), got: #{inspect(value)}"
        )
  end

  defp path?(value),
    do: is_binary(value) and value != "" and not String.contains?(value, <<0>>)

  defp name?(value), do: path?(value)

  @max_epoch 253_402_300_799

  @doc """
  The image timestamp `SOURCE_DATE_EPOCH` asks for: `nil` when it is unset or empty, else the
  number of seconds since 1970-01-01 (UTC), from 0 to #{@max_epoch} (9999-12-31T23:59:59Z: image
  timestamps have four-digit years, and `docker load` refuses later ones). Raises
  `DockerRelease.Error` (`:invalid_config`) for anything else, as the reproducible-builds
  specification asks.

      iex> DockerRelease.Config.source_date_epoch!("1700000000")
      1700000000
      iex> DockerRelease.Config.source_date_epoch!(nil)
      nil
      iex> DockerRelease.Config.source_date_epoch!("253402300800")
      ** (DockerRelease.Error) invalid SOURCE_DATE_EPOCH: expected a whole number of seconds since 1970-01-01 from 0 to 253402300799 (9999-12-31T23:59:59Z), got: "253402300800"
  """
  @spec source_date_epoch!(String.t() | nil) :: non_neg_integer | nil
  def source_date_epoch!(value) do
    trimmed = value && String.trim(value)

    cond do
      trimmed in [nil, ""] ->
        nil

      trimmed =~ ~r/^\d{1,12}$/ and String.to_integer(trimmed) <= @max_epoch ->
        String.to_integer(trimmed)

      true ->
        invalid!(
          "invalid SOURCE_DATE_EPOCH: expected a whole number of seconds since 1970-01-01 " <>
            "from 0 to #{@max_epoch} (9999-12-31T23:59:59Z), got: #{inspect(value)}"
        )
    end
  end

  defp default_tags(c) do
    name = c.app |> to_string() |> String.downcase()
    version_tag = name <> ":" <> String.replace(c.version, "+", "_")
    # The article's flow names its final image APP:VERSION only.
    if c.build_dockerfile, do: [version_tag], else: [version_tag, name <> ":latest"]
  end

  defp expand(nil, _c), do: nil
  defp expand(path, c), do: Path.expand(to_string(path), c.project_dir)

  defp uint!(key, value, min, max) do
    unless is_integer(value) and value >= min and value <= max,
      do:
        invalid!(
          "invalid #{key}: expected an integer from #{min} to #{max}, got: #{inspect(value)}"
        )
  end

  defp pairs!(key, value) do
    ok =
      is_list(value) and
        Enum.all?(value, fn
          {k, v} ->
            is_binary(k) and k != "" and is_binary(v) and
              not String.contains?(k, ["=", <<0>>]) and not String.contains?(v, <<0>>)

          _ ->
            false
        end)

    unless ok,
      do:
        invalid!(
          "invalid #{key}: expected a list of {\"NAME\", \"value\"} string pairs " <>
            "(NAME not empty, without = or NUL bytes; value without NUL bytes), got: #{inspect(value)}"
        )
  end

  defp invalid!(message),
    do: raise(DockerRelease.Error, reason: :invalid_config, message: message)
end
