defmodule DockerRelease.NativeLib do
  # How docker_release gets its NIF, `priv/native/libdocker_release_nif.so` in its app
  # directory. Used by its Mix compiler (`mix compile`, which never fails for lack of a
  # toolchain: it warns) and by `DockerRelease.Native` when the library is missing at first use.
  #
  #   * A prebuilt library, when the package's checksum file lists one for this target and
  #     DOCKER_RELEASE_BUILD is not "1"/"true": taken from the user's cache directory or
  #     downloaded from DOCKER_RELEASE_NIF_BASE_URL (default: the project's release page for
  #     this version; `file:///dir` for a local directory; HTTPS verified against the system's
  #     CA store; HTTPS_PROXY/HTTP_PROXY honoured), and installed only if its sha256 is the one
  #     the checksum file lists.
  #   * Otherwise, built from the package's sources with `cargo build --release` (Rust and a C
  #     compiler needed).
  #
  # RustlerPrecompiled's conventions, so that it can replace this module: the artifact
  # `libdocker_release_nif-vVERSION-nif-NIFVERSION-TARGET.so.tar.gz` holds one file, the same
  # name without `.tar.gz`; the checksum file `checksum-Elixir.DockerRelease.Native.exs` at the
  # package root is a map of artifact name => "sha256:HEX" (read as data, never evaluated).
  # `scripts/nif-artifact.sh` builds the artifact of this machine and writes that file.
  @moduledoc false

  @root Path.expand("../..", __DIR__)
  @version Mix.Project.config()[:version]
  @lib "libdocker_release_nif.so"
  @basename "libdocker_release_nif"
  # The NIF versions artifacts are built for: the crate's rustler feature (nif_version_2_16).
  # A library for 2.16 loads in every OTP from 25 on.
  @nif_versions ["2.16"]
  @checksum_file Path.join(@root, "checksum-Elixir.DockerRelease.Native.exs")
  @external_resource @checksum_file
  # The release page of this version (mix.exs's source_url).
  @default_base_url "#{Mix.Project.config()[:source_url]}/releases/download/v#{@version}"

  # Variables that a build script among our dependencies watches (`cargo:rerun-if-env-changed`
  # in target/release/build/*/output) but that cannot change the library, so cargo is not
  # given them: a new value would rebuild crates for nothing. SOURCE_DATE_EPOCH (which CI sets
  # per commit) is watched by cc for GCC's __DATE__ and __TIME__, which ring's C code does not
  # use; a new value rebuilt ring and the 8 crates above it (about a minute). The other two
  # only make cc's and libc's build scripts verbose.
  @cargo_env_dropped ~w(SOURCE_DATE_EPOCH CC_ENABLE_DEBUG_OUTPUT LIBC_BUILD_VERBOSE)

  checksums =
    case File.read(@checksum_file) do
      {:ok, text} ->
        case Code.string_to_quoted(text) do
          {:ok, {:%{}, _, pairs}} ->
            for {name, "sha256:" <> hex} when is_binary(name) <- pairs, into: %{} do
              {name, String.downcase(hex)}
            end

          _ ->
            raise "#{@checksum_file} is not a map of artifact name => \"sha256:HEX\""
        end

      {:error, :enoent} ->
        %{}
    end

  @checksums checksums

  @doc "Where the library is installed: this application's `priv/native`."
  def installed_path, do: Path.join([:code.priv_dir(:docker_release), "native", @lib])

  @doc "The package's root (its native sources and checksum file)."
  def root, do: @root

  @doc "The checksum file's entries: artifact name => lowercase sha256 hex."
  def checksums, do: @checksums

  @doc "The default download base URL (this version's release page)."
  def default_base_url, do: @default_base_url

  @doc "The NIF versions artifacts are built for."
  def nif_versions, do: @nif_versions

  @doc "The variables not passed to cargo (see the comment above)."
  def cargo_env_dropped, do: @cargo_env_dropped

  @doc """
  The Rust target triple and NIF version of this VM, as artifact names spell them:
  `{:ok, "2.16", "x86_64-unknown-linux-gnu"}`, or `{:error, why}`.
  """
  def target(arch \\ :erlang.system_info(:system_architecture), nif \\ nil) do
    nif = nif || List.to_string(:erlang.system_info(:nif_version))

    with {:ok, triple} <- triple(List.to_string(arch)),
         {:ok, nif_version} <- compatible_nif(nif) do
      {:ok, nif_version, triple}
    end
  end

  defp triple(arch) do
    case String.split(arch, "-") do
      [cpu, vendor, "linux" | abi] ->
        vendor = if vendor in ~w(pc redhat suse alpine unknown), do: "unknown", else: vendor
        abi = if abi == [], do: "gnu", else: Enum.join(abi, "-")
        {:ok, "#{normalize_cpu(cpu)}-#{vendor}-linux-#{abi}"}

      [cpu, "apple", "darwin" <> _] ->
        cpu = if cpu == "arm", do: "aarch64", else: normalize_cpu(cpu)
        {:ok, "#{cpu}-apple-darwin"}

      _ ->
        {:error, "no prebuilt NIF is made for this system (#{arch})"}
    end
  end

  defp normalize_cpu("amd64"), do: "x86_64"
  defp normalize_cpu(cpu), do: cpu

  # The newest NIF version we build for that this VM can load (a VM loads older ones).
  defp compatible_nif(nif) do
    case Enum.filter(@nif_versions, &(version(&1) <= version(nif))) do
      [] ->
        {:error, "this VM's NIF version #{nif} is older than #{Enum.join(@nif_versions, ", ")}"}

      found ->
        {:ok, Enum.max_by(found, &version/1)}
    end
  end

  defp version(v), do: v |> String.split(".") |> Enum.map(&String.to_integer/1)

  @doc "The artifact file name for a NIF version and target triple."
  def artifact_name(nif_version, triple, version \\ @version),
    do: "#{@basename}-v#{version}-nif-#{nif_version}-#{triple}.so.tar.gz"

  @doc """
  What `ensure/1` would do here: `{:prebuilt, artifact}` or `{:source, why}` (why: a sentence).
  """
  def plan(env \\ &System.get_env/1) do
    with {:build, false} <- {:build, env.("DOCKER_RELEASE_BUILD") in ["1", "true"]},
         {:ok, nif_version, triple} <- target(),
         name = artifact_name(nif_version, triple),
         {:ok, sha256} <- Map.fetch(@checksums, name) do
      base =
        (env.("DOCKER_RELEASE_NIF_BASE_URL") || @default_base_url) |> String.trim_trailing("/")

      {:prebuilt,
       %{
         name: name,
         lib: String.trim_trailing(name, ".tar.gz"),
         sha256: sha256,
         url: "#{base}/#{name}"
       }}
    else
      {:build, true} ->
        {:source, "DOCKER_RELEASE_BUILD is set"}

      {:error, why} ->
        {:source, why}

      :error ->
        {:ok, nif_version, triple} = target()

        {:source,
         "docker_release #{@version} has no prebuilt NIF for #{triple} (NIF #{nif_version})"}
    end
  end

  @doc """
  Installs the library at `dest` unless the right one is there. Returns `:noop`,
  `{:installed, how}` or `{:error, kind, message}` (kind `:toolchain`, `:fetch`, `:checksum`,
  `:build`). Progress goes to `Mix.shell()`.
  """
  def ensure(dest \\ installed_path()) do
    case plan() do
      {:prebuilt, art} ->
        if origin(dest) == prebuilt_origin(art), do: :noop, else: install_prebuilt(art, dest)

      {:source, why} ->
        if origin(dest) == "source" and not sources_newer?(dest),
          do: :noop,
          else: build_from_source(why, dest)
    end
  end

  # What was installed at `dest`, from the marker written beside it.
  defp origin(dest) do
    with true <- File.regular?(dest), {:ok, text} <- File.read(dest <> ".origin") do
      String.trim(text)
    else
      _ -> nil
    end
  end

  defp prebuilt_origin(art), do: "prebuilt #{art.name} sha256:#{art.sha256}"

  defp sources_newer?(dest) do
    %{mtime: built} = File.stat!(dest, time: :posix)

    (Path.wildcard(Path.join(@root, "native/**/*.{rs,toml}")) ++
       Enum.map(["Cargo.toml", "Cargo.lock"], &Path.join(@root, &1)))
    |> Enum.any?(fn src ->
      match?({:ok, %{mtime: t}} when t > built, File.stat(src, time: :posix))
    end)
  end

  ## Prebuilt

  defp install_prebuilt(art, dest) do
    with {:ok, tarball, from} <- fetch_verified(art),
         {:ok, so} <- unpack(tarball, art) do
      install!(dest, so, prebuilt_origin(art))
      {:installed, "the prebuilt NIF #{art.name} (#{from}, sha256 verified)"}
    end
  end

  # A cached copy is used only if it verifies; one that does not is removed and fetched again.
  defp fetch_verified(art) do
    cached = Path.join(cache_dir(), art.name)

    case File.read(cached) do
      {:ok, bytes} when bytes != "" ->
        case verify(bytes, art, cached) do
          :ok ->
            {:ok, bytes, "from the cache #{cached}"}

          {:error, _, _} ->
            File.rm(cached)
            download_verified(art, cached)
        end

      _ ->
        download_verified(art, cached)
    end
  end

  defp download_verified(art, cached) do
    info("docker_release: fetching its prebuilt NIF #{art.url}")

    with {:ok, bytes} <- download(art.url),
         :ok <- verify(bytes, art, art.url) do
      cache!(cached, bytes)
      {:ok, bytes, "from #{art.url}"}
    end
  end

  defp verify(bytes, art, source) do
    actual = :crypto.hash(:sha256, bytes) |> Base.encode16(case: :lower)

    if actual == art.sha256 do
      :ok
    else
      {:error, :checksum,
       "the prebuilt NIF #{art.name} (#{source}) has sha256 #{actual}, but docker_release's " <>
         "checksum file lists sha256 #{art.sha256}: it was refused and is not loaded. " <>
         "Something between the release page and this machine changed it (a proxy, a mirror, " <>
         "a tampered file). Check DOCKER_RELEASE_NIF_BASE_URL, or build from source with " <>
         "DOCKER_RELEASE_BUILD=1 (needs Rust and a C compiler)"}
    end
  end

  defp unpack(tarball, art) do
    case :erl_tar.extract({:binary, tarball}, [:compressed, :memory]) do
      {:ok, files} ->
        case Enum.find(files, fn {name, _} -> Path.basename(to_string(name)) == art.lib end) do
          {_, so} -> {:ok, so}
          nil -> {:error, :fetch, "#{art.name} does not hold #{art.lib}"}
        end

      {:error, reason} ->
        {:error, :fetch, "#{art.name} is not a gzip tar archive: #{inspect(reason)}"}
    end
  end

  # The user's cache directory (Linux: `$XDG_CACHE_HOME/docker_release/nifs`, by default
  # `~/.cache/…`; with MIX_XDG set, the same on every OS, as Mix does), where CI can cache it.
  defp cache_dir do
    opts = if System.get_env("MIX_XDG"), do: %{os: :linux}, else: %{}

    System.get_env("DOCKER_RELEASE_NIF_CACHE_DIR") ||
      :filename.basedir(:user_cache, "docker_release/nifs", opts)
  end

  defp cache!(path, bytes) do
    File.mkdir_p!(Path.dirname(path))
    tmp = "#{path}.#{System.unique_integer([:positive])}.tmp"
    File.write!(tmp, bytes)
    File.rename!(tmp, path)
  rescue
    # A cache that cannot be written only costs a download next time.
    _ -> :ok
  end

  defp download(url) do
    case URI.parse(url) do
      %URI{scheme: "file", path: path} ->
        case File.read(path || "") do
          {:ok, bytes} -> {:ok, bytes}
          {:error, reason} -> fetch_error(url, :file.format_error(reason))
        end

      %URI{scheme: scheme} when scheme in ["http", "https"] ->
        http_get(url)

      _ ->
        {:error, :fetch,
         "DOCKER_RELEASE_NIF_BASE_URL must be an http://, https:// or file:// URL, got: #{url}"}
    end
  end

  defp http_get(url) do
    {:ok, _} = Application.ensure_all_started(:inets)
    {:ok, _} = Application.ensure_all_started(:ssl)
    profile = :docker_release_nif

    case :inets.start(:httpc, profile: profile) do
      {:ok, _} -> :ok
      {:error, {:already_started, _}} -> :ok
    end

    proxy_opts =
      for {var, key} <- [{"HTTPS_PROXY", :https_proxy}, {"HTTP_PROXY", :proxy}],
          proxy = System.get_env(var) || System.get_env(String.downcase(var)),
          %URI{host: host, port: port} when is_binary(host) <- [URI.parse(proxy)] do
        {key, {{String.to_charlist(host), port}, no_proxy()}}
      end

    :ok = :httpc.set_options(proxy_opts, profile)

    ssl = [
      verify: :verify_peer,
      cacerts: :public_key.cacerts_get(),
      depth: 4,
      customize_hostname_check: [match_fun: :public_key.pkix_verify_hostname_match_fun(:https)]
    ]

    request = {String.to_charlist(url), [{~c"user-agent", ~c"docker_release/#{@version}"}]}

    case :httpc.request(
           :get,
           request,
           [ssl: ssl, timeout: 120_000, connect_timeout: 20_000],
           [body_format: :binary],
           profile
         ) do
      {:ok, {{_, 200, _}, _headers, body}} -> {:ok, body}
      {:ok, {{_, status, reason}, _, _}} -> fetch_error(url, "HTTP #{status} #{reason}")
      {:error, reason} -> fetch_error(url, inspect(reason))
    end
  rescue
    e -> fetch_error(url, Exception.message(e))
  end

  defp no_proxy do
    (System.get_env("NO_PROXY") || System.get_env("no_proxy") || "")
    |> String.split(",", trim: true)
    |> Enum.map(&(&1 |> String.trim() |> String.to_charlist()))
  end

  defp fetch_error(url, why) do
    {:error, :fetch,
     "could not fetch docker_release's prebuilt NIF from #{url} (#{why}). Set " <>
       "DOCKER_RELEASE_NIF_BASE_URL to a mirror (https:// or file:///dir), or build from " <>
       "source with DOCKER_RELEASE_BUILD=1 (needs Rust and a C compiler)"}
  end

  ## From source

  defp build_from_source(why, dest) do
    with {:ok, cargo} <- toolchain(why) do
      info("docker_release: building its NIF from source (#{why}): cargo build --release")
      args = ["build", "--release", "--locked", "-p", "docker_release_nif"]

      opts = [
        cd: @root,
        env: Enum.map(@cargo_env_dropped, &{&1, nil}),
        stderr_to_stdout: true,
        into: IO.stream(:stdio, :line)
      ]

      case System.cmd(cargo, args, opts) do
        {_, 0} ->
          built = Path.join([target_dir(), "release", built_name()])
          install!(dest, File.read!(built), "source")
          {:installed, "the NIF built from source"}

        {_, status} ->
          {:error, :build, "cargo build failed (exit status #{status}); see the output above"}
      end
    end
  end

  defp built_name do
    case :os.type() do
      {:unix, :darwin} -> "libdocker_release_nif.dylib"
      _ -> @lib
    end
  end

  defp target_dir, do: System.get_env("CARGO_TARGET_DIR") || Path.join(@root, "target")

  defp toolchain(why) do
    cargo =
      System.find_executable("cargo") ||
        Enum.find([Path.expand("~/.cargo/bin/cargo")], &File.exists?/1)

    cc =
      (System.get_env("CC") && System.find_executable(System.get_env("CC"))) ||
        Enum.find_value(~w(cc gcc clang), &System.find_executable/1)

    missing = for {nil, what} <- [{cargo, "cargo (Rust)"}, {cc, "a C compiler (cc)"}], do: what

    if missing == [] do
      {:ok, cargo}
    else
      {:error, :toolchain,
       "#{why}, and building it from source needs #{Enum.join(missing, " and ")}, not found " <>
         "on PATH. Install Rust 1.91 or newer (https://rustup.rs: " <>
         "`curl https://sh.rustup.rs -sSf | sh`, then `. ~/.cargo/env`) and a C compiler " <>
         "(Debian/Ubuntu: `apt-get install gcc`; macOS: `xcode-select --install`), then run " <>
         "the command again"}
    end
  end

  ## Installing

  # Written beside the final path and renamed over it: a loaded library is never overwritten
  # in place (that can crash a running VM); the marker says where it came from.
  defp install!(dest, so, origin) do
    File.mkdir_p!(Path.dirname(dest))
    tmp = "#{dest}.#{System.unique_integer([:positive])}.tmp"
    File.write!(tmp, so)
    File.chmod!(tmp, 0o755)
    File.rename!(tmp, dest)
    File.write!(dest <> ".origin", origin <> "\n")
  end

  defp info(text) do
    if Code.ensure_loaded?(Mix) and Process.whereis(Mix.State),
      do: Mix.shell().info("==> " <> text),
      else: IO.puts("==> " <> text)
  end
end
