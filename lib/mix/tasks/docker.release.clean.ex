defmodule Mix.Tasks.Docker.Release.Clean do
  @shortdoc "Removes docker_release's caches of this project"

  @moduledoc """
  Removes what `mix docker.release` keeps between runs for this project, and says what it
  freed:

    * the builder cache volumes (`docker_release-cache-*`, made by `--builder`) labelled with
      this project's directory, for every `MIX_ENV` and builder image;
    * the layer cache, `_build/docker_release/layers` (and the fingerprints of layer inputs
      beside it, `layers.inputs`);
    * scratch directories of runs that are over, `_build/docker_release/runs/*`.

  A volume that a running build uses is kept, and named. Images, tags and archives you wrote
  with `--output` are not touched.

      mix docker.release.clean
      mix docker.release.clean --all-projects

  ## Options

    * `--all-projects` - remove every docker_release cache volume in the engine, of any
      project (local files are still only this project's).
    * `--stall-timeout SECONDS` - how long a request to the engine may go with no byte moved
      before it fails (default 300; `DOCKER_RELEASE_STALL_TIMEOUT` sets it too), as for
      `mix docker.release`.

  Without a Docker engine only the local files are removed.
  """

  use Mix.Task

  @switches [all_projects: :boolean, stall_timeout: :integer]

  @impl true
  def run(args) do
    {opts, rest} =
      try do
        OptionParser.parse!(args, strict: @switches)
      rescue
        e in OptionParser.ParseError ->
          Mix.raise("#{Exception.message(e)}. See `mix help docker.release.clean`")
      end

    if rest != [],
      do:
        Mix.raise(
          "unexpected argument(s) #{Enum.join(rest, " ")}. See `mix help docker.release.clean`"
        )

    stall_timeout =
      try do
        DockerRelease.Config.stall_timeout!(opts[:stall_timeout])
      rescue
        e in DockerRelease.Error -> Mix.raise(e.message)
      end

    project_dir = File.cwd!()
    base = Path.join([project_dir, "_build", "docker_release"])
    shell = Mix.shell()

    {freed, what} = clean_local(base)
    shell.info("Removed   #{what}: #{DockerRelease.Progress.size(freed)}")

    scope = if opts[:all_projects], do: nil, else: project_dir

    case DockerRelease.clean_volumes(scope, stall_timeout) do
      {:ok, %{removed: removed, kept: kept}} ->
        whose = if scope, do: "of #{project_dir}", else: "of every project"

        shell.info(
          "Removed   #{length(removed)} builder cache volume(s) #{whose}" <>
            Enum.map_join(removed, "", &"\n          #{&1}")
        )

        for {name, why} <- kept, do: shell.error("Kept      #{name}: #{why}")

      {:error, %DockerRelease.Error{reason: :engine_unreachable, message: message}} ->
        if scope,
          do: shell.info("No engine: no builder cache volumes removed (#{message})"),
          else: Mix.raise(message)

      {:error, %DockerRelease.Error{message: message}} ->
        Mix.raise(message)
    end
  end

  # The layer cache and the scratch directories of runs whose OS process is gone.
  defp clean_local(base) do
    runs =
      for dir <- Path.wildcard(Path.join([base, "runs", "*"])),
          not running?(dir),
          do: dir

    targets = [Path.join(base, "layers"), Path.join(base, "layers.inputs") | runs]
    freed = targets |> Enum.map(&du/1) |> Enum.sum()
    Enum.each(targets, &File.rm_rf!/1)

    {freed,
     "the layer cache and #{length(runs)} scratch director#{if length(runs) == 1, do: "y", else: "ies"}"}
  end

  # Scratch directories are named NAME-OSPID-N (see DockerRelease).
  defp running?(dir) do
    case Regex.run(~r/-(\d+)-\d+$/, dir) do
      [_, pid] -> File.exists?("/proc/#{pid}") or not File.exists?("/proc/self")
      nil -> false
    end
  end

  defp du(path) do
    case File.lstat(path) do
      {:ok, %File.Stat{type: :directory}} ->
        path |> File.ls!() |> Enum.map(&du(Path.join(path, &1))) |> Enum.sum()

      {:ok, %File.Stat{type: :regular, size: size}} ->
        size

      _ ->
        0
    end
  end
end
