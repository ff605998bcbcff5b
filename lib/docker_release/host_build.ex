defmodule DockerRelease.HostBuild do
  @moduledoc """
  Builds a release on the host: `MIX_ENV=ENV mix release [NAME] --overwrite`, in this VM when
  it runs the project in that environment, else in a separate `mix` OS process whose output is
  streamed to the shell; then looks in the assembled release for
  paths of the build machine that will not exist in the image (`build_paths/2`).
  """

  alias DockerRelease.{Config, Error, Release}

  @doc """
  Runs `mix release` for `config.mix_release` in `config.env`: `mix release NAME` for a
  release `releases:` defines, a plain `mix release` for the default release of a project
  without `releases:` (where `mix release APP` fails).

  When this VM already runs the project in that environment (`MIX_ENV=prod mix docker.release`,
  or `preferred_envs`), the release is built here, as `mix release` would be: the task's own
  VM start (about half a second) is the only cost a separate `mix` adds, and on the everyday
  path it is most of what `mix docker.release` costs beyond the release. Otherwise (the usual
  `mix docker.release` from `dev`), in a separate `mix` OS process with `MIX_ENV` set, its
  output streamed through `Mix.shell()`. Raises `DockerRelease.Error` (`:release_build_failed`)
  when it fails.
  """
  @spec build!(Config.t()) :: :ok
  def build!(%Config{mix_release: %Release{} = release} = config) do
    args = ["release" | if(release.named?, do: [release.name], else: [])] ++ ["--overwrite"]
    command = "MIX_ENV=#{config.env} mix #{Enum.join(args, " ")}"

    if in_this_vm?(config) do
      Mix.shell().info("==> building release #{release.name} (#{command}, in this VM)")
      build_here!(args, command, config)
    else
      Mix.shell().info("==> building release #{release.name} (#{command})")
      build_in_os_process!(args, command, config)
    end
  end

  @doc """
  True when `config`'s release can be built in this VM: the project Mix has loaded is
  `config.project_dir` and its environment is `config.env`.
  """
  @spec in_this_vm?(Config.t()) :: boolean
  def in_this_vm?(%Config{} = config) do
    file = Mix.Project.project_file()

    file != nil and Path.dirname(file) == Path.expand(config.project_dir) and
      Atom.to_string(Mix.env()) == config.env
  end

  defp build_here!(["release" | args], command, config) do
    # `mix release` runs `compile` (and `loadconfig`): tasks that ran already in this VM (a
    # `mix compile` alias before ours, for one) would be skipped; so they run again.
    Enum.each(~w(loadconfig compile release), &Mix.Task.reenable/1)
    Mix.Task.run("release", args)
    :ok
  rescue
    e in Mix.Error -> failed!(command, config, Exception.message(e))
  catch
    :exit, {:shutdown, status} when status != 0 ->
      failed!(command, config, "exit status #{status}")
  end

  defp build_in_os_process!(args, command, config) do
    mix =
      System.find_executable("mix") ||
        raise Error, reason: :release_build_failed, message: "`mix` was not found on PATH"

    {_, status} =
      System.cmd(mix, args,
        cd: config.project_dir,
        env: [{"MIX_ENV", config.env}],
        stderr_to_stdout: true,
        into: shell_lines()
      )

    if status != 0, do: failed!(command, config, "exit status #{status}")
    :ok
  end

  defp failed!(command, config, why) do
    raise Error,
      reason: :release_build_failed,
      message:
        "`#{command}` failed (#{why}) in #{config.project_dir}; its output is above (the " <>
          "same command run there by hand fails the same way)"
  end

  # What `build_paths/2` reads: text files of the release other than code and ERTS.
  @skip_top ~w(lib tmp)
  @max_scan 1_000_000

  @doc """
  Lines of the release in `release_dir` that contain one of `paths` (directories of the build
  machine: the project, its build path, the release itself), as `{file, line_number, line,
  path}` with `file` relative to the release. Such a line breaks when the image runs the
  release from `/app` (a `vm.args.eex` with `-ssl_dist_optfile <%= @release.path %>/…`, a
  `sys.config` value from `Path.expand/1` at config time).

  Reads the release's regular text files outside `lib/`, `erts-*/` and `tmp/` (`releases/*`
  with `vm.args`, `sys.config`, `env.sh`, `runtime.exs`; `bin/`; overlays), up to 1 MB each;
  files with a NUL byte (boot files, compiled code) are skipped.

      iex> dir = Path.join(System.tmp_dir!(), "dr-doctest-#{System.unique_integer([:positive])}")
      iex> File.mkdir_p!(Path.join(dir, "releases/0.1.0"))
      iex> File.write!(Path.join(dir, "releases/0.1.0/vm.args"), "-sname x\\n-ssl_dist_optfile /home/me/p/ssl.conf\\n")
      iex> DockerRelease.HostBuild.build_paths(dir, ["/home/me/p"])
      [{"releases/0.1.0/vm.args", 2, "-ssl_dist_optfile /home/me/p/ssl.conf", "/home/me/p"}]
      iex> File.rm_rf!(dir) |> is_list()
      true
  """
  @spec build_paths(Path.t(), [Path.t()]) :: [
          {Path.t(), pos_integer, String.t(), Path.t()}
        ]
  def build_paths(release_dir, paths) do
    # The longest path a line contains is the one named (the release dir rather than the
    # project that holds it).
    paths =
      paths |> Enum.uniq() |> Enum.reject(&(&1 in ["", "/"])) |> Enum.sort_by(&(-byte_size(&1)))

    for {file, text} <- text_files(release_dir, ""),
        {line, n} <- Enum.with_index(String.split(text, "\n"), 1),
        path = Enum.find(paths, &String.contains?(line, &1)),
        do: {file, n, String.trim(line), path}
  end

  defp text_files(root, rel) do
    case File.ls(Path.join(root, rel)) do
      {:ok, names} ->
        names
        |> Enum.sort()
        |> Enum.flat_map(fn name ->
          rel = if rel == "", do: name, else: Path.join(rel, name)
          full = Path.join(root, rel)

          case File.lstat(full) do
            {:ok, %{type: :directory}} ->
              if rel in @skip_top or String.starts_with?(rel, "erts-"),
                do: [],
                else: text_files(root, rel)

            {:ok, %{type: :regular, size: size}}
            when size <= @max_scan and rel != "releases/COOKIE" ->
              case File.read(full) do
                {:ok, text} -> if String.contains?(text, <<0>>), do: [], else: [{rel, text}]
                {:error, _} -> []
              end

            _ ->
              []
          end
        end)

      {:error, _} ->
        []
    end
  end

  @doc """
  Prints a warning through `Mix.shell()` for each line `build_paths/2` finds, with the fix.
  """
  @spec warn_build_paths(Path.t(), [Path.t()]) :: :ok
  def warn_build_paths(release_dir, paths) do
    case build_paths(release_dir, paths) do
      [] ->
        :ok

      found ->
        for {file, n, line, path} <- found do
          Mix.shell().info([
            :yellow,
            "==> warning: #{file}:#{n} of the release contains #{path}, a path of this machine " <>
              "that does not exist in the image (the release runs from /app): #{line}",
            :reset
          ])
        end

        Mix.shell().info([
          :yellow,
          "==> Compute such paths when the release starts, from $RELEASE_ROOT (in rel/env.sh.eex or " <>
            ~s{with System.fetch_env!("RELEASE_ROOT") in config/runtime.exs), or build with } <>
            "--builder, which assembles the release at /app",
          :reset
        ])

        :ok
    end
  end

  # Stream output live when printing to a terminal; other shells (tests) get whole lines.
  defp shell_lines do
    if Mix.shell() == Mix.Shell.IO,
      do: IO.stream(:stdio, :line),
      else: %DockerRelease.ShellLines{}
  end
end
