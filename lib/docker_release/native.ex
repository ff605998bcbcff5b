defmodule DockerRelease.Native do
  # Every NIF of the Rust crate `docker_release_nif` has a stub here with the same name and
  # arity, prefixed by area (`image_`, `reference_`, `platform_`, `signing_`, `lock_`, `job_`). The library is loaded on first use (not
  # @on_load, which would also fire while compiling, before cargo has run).
  @moduledoc false

  defmodule Request do
    @moduledoc false
    # Mirrors `NifRequest` in native/docker_release_nif/src/lib.rs: every key is always present.
    # `sign_key` holds a private key's PEM text: never inspected.
    @derive {Inspect, except: [:sign_key]}
    @enforce_keys [:release_dir, :release_name, :tags, :work_dir, :fallback_output, :created]
    defstruct release_dir: nil,
              release_name: nil,
              own_apps: [],
              otp_apps: [],
              extra_files: [],
              uid: 65532,
              gid: 65532,
              env: [],
              labels: [],
              exposed_ports: [],
              created: 0,
              compression_level: 1,
              tags: [],
              work_dir: nil,
              layer_cache: nil,
              output: nil,
              fallback_output: nil,
              load: false,
              push: false,
              insecure_registry: false,
              registry_ca: nil,
              metadata_file: nil,
              builder: nil,
              # true: `releases:` defines the release (the builder runs `mix release NAME`);
              # false: a plain `mix release` (the default release, no `releases:` key).
              named_release: true,
              project_dir: "",
              mix_env: "prod",
              no_cache: false,
              base: nil,
              # `--platform`, `--platform-image` (`[{platform, image}]`), `--emulate`, checked by
              # `platform_check/3`.
              platforms: [],
              platform_images: [],
              emulate: false,
              stall_timeout: 300,
              # Manifest annotations, [{key, value}].
              annotations: [],
              # %Sbom{} to embed, or nil (--no-sbom).
              sbom: nil,
              # Where --sbom writes the document (the very bytes the image embeds).
              sbom_file: nil,
              # The PEM text of the key that signs the pushed image (never inspected or logged).
              sign_key: nil,
              # true: the host's `mix release` runs while the job starts; the job waits at its
              # release stage for `job_resume/1` (or ends at `job_cancel/1`).
              await_host_build: false
  end

  defmodule Sbom do
    @moduledoc false
    # Mirrors `NifSbom`: what the SBOM says that the image's files do not.
    defstruct format: "spdx",
              name: nil,
              version: nil,
              source: nil,
              revision: nil,
              tool_version: nil,
              deps: []
  end

  defmodule Dep do
    @moduledoc false
    # Mirrors `NifDep`: where a dependency came from. `kind` is "hex", "git" or "path".
    defstruct app: nil,
              kind: nil,
              package: nil,
              repo: nil,
              checksum: nil,
              url: nil,
              rev: nil,
              path: nil,
              depends_on: []
  end

  defmodule DockerfilesRequest do
    @moduledoc false
    # Mirrors `NifDockerfiles` in native/docker_release_nif/src/lib.rs.
    @enforce_keys [:project_dir, :build_dockerfile, :dockerfile, :build_tag, :version]
    defstruct project_dir: nil,
              build_dockerfile: nil,
              dockerfile: nil,
              build_tag: nil,
              version: nil,
              release_tarball: nil,
              final_tags: [],
              no_cache: false,
              stall_timeout: 300
  end

  defmodule CleanRequest do
    @moduledoc false
    # Mirrors `NifCleanRequest` in native/docker_release_nif/src/lib.rs.
    defstruct project_dir: nil, stall_timeout: 300
  end

  @doc false
  def image_build(request), do: load_and_apply(:image_build, [request])
  @doc false
  def image_clean(request), do: load_and_apply(:image_clean, [request])
  @doc false
  def image_dockerfiles(request), do: load_and_apply(:image_dockerfiles, [request])
  @doc false
  def reference_parse(input), do: load_and_apply(:reference_parse, [input])
  # `{:ok, public_key_pem}` or `{:error, why}` for a signing key's PEM text (the message never
  # contains the key).
  @doc false
  def signing_check_key(pem), do: load_and_apply(:signing_check_key, [pem])

  # `{:ok, platforms, images}` normalised, or `{:error, message}` (see `platform_check` in the
  # crate).
  @doc false
  def platform_check(platforms, images, emulate),
    do: load_and_apply(:platform_check, [platforms, images, emulate])

  # `{:ok, address | nil}` or `{:error, reason, message}`: where the engine is, without
  # connecting (see `engine_endpoint` in the crate).
  @doc false
  def engine_endpoint, do: load_and_apply(:engine_endpoint, [])
  @doc false
  def lock_try(path), do: load_and_apply(:lock_try, [path])
  @doc false
  def lock_release(lock), do: load_and_apply(:lock_release, [lock])
  # A job started with `await_host_build: true` goes on with the host's release.
  @doc false
  def job_resume(job), do: load_and_apply(:job_resume, [job])
  # Cancels a job (it ends with {:error, :cancelled, _}).
  @doc false
  def job_cancel(job), do: load_and_apply(:job_cancel, [job])
  # Tests only: a job that panics inside (see `job_panic_probe` in the crate).
  @doc false
  def job_panic_probe, do: load_and_apply(:job_panic_probe, [])

  defp load_and_apply(fun, args) do
    case load() do
      :ok ->
        # After a successful load the stubs are replaced: this call reaches the NIF. If it did
        # not (the library lacks this function), load/0 would have failed with bad_lib.
        if Process.get({__MODULE__, :applying}) do
          :erlang.nif_error(:nif_not_loaded)
        else
          Process.put({__MODULE__, :applying}, true)

          try do
            apply(__MODULE__, fun, args)
          after
            Process.delete({__MODULE__, :applying})
          end
        end

      {:error, message} ->
        raise DockerRelease.Error, reason: :nif_not_loaded, message: message
    end
  end

  defp load do
    path = DockerRelease.NativeLib.installed_path()

    with :ok <- ensure_installed(path) do
      case :erlang.load_nif(String.to_charlist(Path.rootname(path)), 0) do
        :ok ->
          :ok

        {:error, {:reload, _}} ->
          :ok

        {:error, {reason, text}} ->
          {:error,
           "cannot load docker_release's native library #{path} (#{reason}: #{text}). " <>
             "Install it again: `mix deps.compile docker_release --force` (it fetches the " <>
             "prebuilt library, or builds it with DOCKER_RELEASE_BUILD=1)"}
      end
    end
  end

  # The compiler installs the library; when it could not (no network, no toolchain), the
  # first use tries again, and its failure is the task's error. Once loaded, never again.
  defp ensure_installed(path) do
    if :persistent_term.get({__MODULE__, :installed}, false) do
      :ok
    else
      case DockerRelease.NativeLib.ensure(path) do
        {:error, _kind, message} ->
          {:error, "docker_release's native library is not installed: " <> message}

        _ ->
          :persistent_term.put({__MODULE__, :installed}, true)
          :ok
      end
    end
  end
end
