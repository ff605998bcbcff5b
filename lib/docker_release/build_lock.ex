defmodule DockerRelease.BuildLock do
  @moduledoc """
  One run at a time per project and Mix environment between the release build and the image's
  last read of it.

  A host build runs `mix release --overwrite` into `_build/ENV/rel/NAME` and then reads that
  directory to write the layers: two runs in one project at once would rebuild the release
  under each other's feet (and compile into the same `_build/ENV`). So a run takes an exclusive
  lock (`flock`) on `_build/docker_release/host-build-ENV.lock` first; a second run waits for it,
  saying so with the OS pid of the run that holds it. The kernel releases the lock when its
  process ends, however it ends, so a killed run never leaves a stale lock.
  """

  alias DockerRelease.{Config, Error, Native}

  @poll_ms 200

  @doc """
  Runs `fun` holding the lock of `config`'s project and environment, when the run builds on
  the host or reads a release from the project's build directory; otherwise runs it as is.
  """
  @spec with_lock(Config.t(), keyword, (() -> result)) :: result when result: var
  def with_lock(%Config{} = config, project, fun) do
    if needed?(config, project) do
      path = lock_path(config)
      lock = acquire!(path)

      try do
        fun.()
      after
        # Also keeps `lock` referenced until here: a collected handle would release the lock.
        Native.lock_release(lock)
      end
    else
      fun.()
    end
  end

  @doc "The lock file of `config`'s project and environment."
  @spec lock_path(Config.t()) :: Path.t()
  def lock_path(%Config{} = config) do
    Path.join([config.project_dir, "_build", "docker_release", "host-build-#{config.env}.lock"])
  end

  # Builder builds use their own volumes (locked inside the container); a release given with
  # --from-release outside the project's build directory is the user's to keep still.
  defp needed?(config, project) do
    build_path = Path.expand(Keyword.get(project, :build_path, "_build"), config.project_dir)

    cond do
      config.builder -> false
      config.from_release -> String.starts_with?(config.from_release, build_path <> "/")
      true -> true
    end
  end

  defp acquire!(path) do
    case File.mkdir_p(Path.dirname(path)) do
      :ok ->
        acquire(path, nil, 0)

      {:error, reason} ->
        raise Error,
          reason: :output_error,
          message:
            "cannot create #{Path.dirname(path)} for the build lock: #{:file.format_error(reason)}"
    end
  end

  defp acquire(path, announced, polls) do
    case Native.lock_try(path) do
      {:ok, lock} ->
        lock

      {:busy, holder} ->
        # The holder writes its pid right after taking the lock: wait a moment for it.
        announced =
          if holder != announced and (holder != "" or polls >= 5) do
            who = if holder == "", do: "", else: " (OS pid #{holder})"

            Mix.shell().info(
              "==> waiting for another mix docker.release#{who} building in this project " <>
                "(lock #{Path.relative_to_cwd(path)})"
            )

            holder
          else
            announced
          end

        Process.sleep(@poll_ms)
        acquire(path, announced, polls + 1)

      {:error, message} ->
        raise Error, reason: :output_error, message: message
    end
  end
end
