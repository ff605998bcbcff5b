defmodule DockerRelease.HostBuild do
  @moduledoc """
  Builds a release on the host: `MIX_ENV=ENV mix release NAME --overwrite` in a separate `mix`
  OS process, its output streamed to the shell.
  """

  alias DockerRelease.{Config, Error}

  @doc """
  The release to build for `config` in the current Mix project: `{name, directory}`.

  Raises `DockerRelease.Error` (`:no_release`) when the project defines no release to pick
  (an umbrella without `releases:`), when `--release` names an unknown one, or when there are
  several and none was picked.
  """
  @spec release!(Config.t(), keyword) :: {String.t(), Path.t()}
  def release!(%Config{} = config, project) do
    releases = Keyword.get(project, :releases, [])
    names = Enum.map(releases, fn {name, _} -> to_string(name) end)
    umbrella? = Keyword.has_key?(project, :apps_path)

    name =
      cond do
        config.release &&
            (config.release in names or
               (names == [] and not umbrella? and config.release == to_string(config.app))) ->
          config.release

        config.release ->
          no_release!(
            "the project has no release named #{inspect(config.release)}; its releases: #{list(names)}"
          )

        length(names) == 1 ->
          hd(names)

        names == [] and umbrella? ->
          no_release!(
            "this umbrella project defines no release: add one under releases: in mix.exs (see `mix help release`)"
          )

        names == [] ->
          to_string(config.app)

        true ->
          no_release!(
            "the project defines several releases (#{list(names)}): pick one with --release NAME"
          )
      end

    release_opts = Keyword.get(releases, String.to_atom(name), [])

    dir =
      case Keyword.get(release_opts, :path) do
        nil ->
          build_path =
            Path.expand(Keyword.get(project, :build_path, "_build"), config.project_dir)

          Path.join([build_path, config.env, "rel", name])

        path ->
          Path.expand(path, config.project_dir)
      end

    {name, dir}
  end

  @doc """
  Runs `mix release` for release `name` in `config.env`, streaming its output through
  `Mix.shell()`. Raises `DockerRelease.Error` (`:release_build_failed`) when it fails.
  """
  @spec build!(Config.t(), String.t()) :: :ok
  def build!(%Config{} = config, name) do
    mix =
      System.find_executable("mix") ||
        raise Error, reason: :release_build_failed, message: "`mix` was not found on PATH"

    args = ["release", name, "--overwrite"]

    Mix.shell().info(
      "==> building release #{name} (MIX_ENV=#{config.env} mix #{Enum.join(args, " ")})"
    )

    {_, status} =
      System.cmd(mix, args,
        cd: config.project_dir,
        env: [{"MIX_ENV", config.env}],
        stderr_to_stdout: true,
        into: shell_lines()
      )

    if status != 0 do
      raise Error,
        reason: :release_build_failed,
        message:
          "`MIX_ENV=#{config.env} mix release #{name}` failed with exit status #{status}; " <>
            "its output is above. Fix the build, then run the command again"
    end

    :ok
  end

  # Stream output live when printing to a terminal; other shells (tests) get whole lines.
  defp shell_lines do
    if Mix.shell() == Mix.Shell.IO,
      do: IO.stream(:stdio, :line),
      else: %DockerRelease.ShellLines{}
  end

  defp list([]), do: "none"
  defp list(names), do: Enum.join(names, ", ")

  defp no_release!(message), do: raise(Error, reason: :no_release, message: message)
end
