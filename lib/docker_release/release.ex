defmodule DockerRelease.Release do
  @moduledoc """
  The release a project builds, chosen from its `project/0` the way `mix release` chooses it,
  and checked for what an image needs, before anything is built:

    1. `--release NAME` (a release under `releases:`, or the app's default release);
    2. else the only release under `releases:`, else the one `default_release:` names;
    3. else, with no `releases:` key, the default release: named after `:app`, built by a plain
       `mix release` (`mix release APP` fails there: "Unknown release").

  An umbrella project has no default release: it must list one under `releases:`, with the
  applications it runs. Every shape that cannot work raises `DockerRelease.Error` with reason
  `:no_release` or `:invalid_config` and a message that says what to change in `mix.exs`.

      iex> r = DockerRelease.Release.choose!([app: :shop, version: "1.0.0"], "/p", "prod", nil)
      iex> {r.name, r.version, r.named?, r.dir}
      {"shop", "1.0.0", false, "/p/_build/prod/rel/shop"}
      iex> project = [app: :shop, version: "1.0.0", releases: [shop: [version: "2.0.0-rc.1"]]]
      iex> r = DockerRelease.Release.choose!(project, "/p", "prod", nil)
      iex> {r.name, r.version, r.named?}
      {"shop", "2.0.0-rc.1", true}
  """

  alias DockerRelease.Error

  @enforce_keys [:name, :version, :named?, :options, :dir]
  defstruct [:name, :version, :named?, :options, :dir]

  @typedoc """
  * `name` - the release name (`bin/NAME` in the release)
  * `version` - its version (the release's own `version:`, else the project's)
  * `named?` - `true` when `releases:` defines it (built with `mix release NAME`); `false` for the
    default release of a project without `releases:` (built with a plain `mix release`)
  * `options` - its keyword list under `releases:` (`[]` for the default release)
  * `dir` - where `mix release` assembles it on the host (`path:`, else `BUILD_PATH/ENV/rel/NAME`)
  """
  @type t :: %__MODULE__{
          name: String.t(),
          version: String.t(),
          named?: boolean,
          options: keyword,
          dir: Path.t()
        }

  @doc """
  Chooses the release of `project` (its `project/0` keyword list, in directory `project_dir`)
  for Mix environment `env`; `requested` is `--release NAME` or `nil`. Raises
  `DockerRelease.Error` when there is no release to build or the one chosen cannot run in an
  image (see the module doc).
  """
  @spec choose!(keyword, Path.t(), String.t(), String.t() | nil) :: t
  def choose!(project, project_dir, env, requested) do
    releases = releases!(project)
    names = Enum.map(releases, fn {name, _} -> to_string(name) end)
    umbrella? = Keyword.has_key?(project, :apps_path)
    app = project[:app] && to_string(project[:app])
    default = project[:default_release] && to_string(project[:default_release])

    {name, named?} =
      cond do
        names == [] and umbrella? ->
          umbrella_without_release!(project, project_dir, requested)

        requested && requested in names ->
          {requested, true}

        requested && names == [] && requested == app ->
          {app, false}

        requested && names == [] ->
          no_release!(
            "the project has no release named #{inspect(requested)}: it has no releases: key, so its " <>
              "only release is the default one, #{app}. Drop --release, or define #{requested} under " <>
              "releases: in mix.exs"
          )

        requested ->
          no_release!(
            "the project has no release named #{inspect(requested)}; its releases: #{Enum.join(names, ", ")}. " <>
              "Pick one with --release NAME"
          )

        length(names) == 1 ->
          {hd(names), true}

        default && default in names ->
          {default, true}

        names != [] ->
          no_release!(
            "the project defines several releases (#{Enum.join(names, ", ")}) and no default_release: " <>
              "pick one with --release NAME, or set default_release: :#{hd(names)} in project/0 in mix.exs"
          )

        true ->
          {app, false}
      end

    options = Keyword.get(releases, String.to_atom(name), [])
    check!(name, options, umbrella?)

    %__MODULE__{
      name: name,
      version: version!(name, options, project, project_dir),
      named?: named?,
      options: options,
      dir: dir(name, options, project, project_dir, env)
    }
  end

  @doc """
  The version of release `name` as `project/0` states it: the release's `version:` (a string,
  or `{:from_app, app}`), else the project's `version:`; `nil` when neither is there. For
  `--from-release`, where nothing is chosen or built.
  """
  @spec version(keyword, Path.t(), String.t() | nil) :: String.t() | nil
  def version(project, project_dir, name) do
    options =
      case releases!(project) do
        releases when is_binary(name) -> Keyword.get(releases, String.to_atom(name), [])
        _ -> []
      end

    case Keyword.get(options, :version, project[:version]) do
      {:from_app, app} -> app_version(app, project, project_dir)
      version -> version
    end
  end

  @doc """
  The name of the release assembled in `dir` (`--from-release`): its one `bin/` script. Raises
  `DockerRelease.Error` (`:not_a_release`) when `dir` has none, `:invalid_config` when it has
  several.
  """
  @spec name_in!(Path.t()) :: String.t()
  def name_in!(dir) do
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
        invalid!(
          "#{dir}/bin holds several scripts (#{Enum.join(names, ", ")}): name the release with --release NAME"
        )
    end
  end

  @doc """
  The `project/0` of the Mix project in `dir`, read without compiling it (`[]` when `dir` has
  no `mix.exs`).
  """
  @spec mix_config(Path.t()) :: keyword
  def mix_config(dir) do
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

  @doc """
  The applications of an umbrella project (the directories under `apps_path` with a
  `mix.exs`, or its `apps:` list), sorted. `[]` for other projects.
  """
  @spec umbrella_apps(keyword, Path.t()) :: [String.t()]
  def umbrella_apps(project, project_dir) do
    case project[:apps_path] do
      nil ->
        []

      apps_path ->
        found =
          Path.join([project_dir, apps_path, "*", "mix.exs"])
          |> Path.wildcard()
          |> Enum.map(&(&1 |> Path.dirname() |> Path.basename()))

        case project[:apps] do
          apps when is_list(apps) -> Enum.filter(found, &(String.to_atom(&1) in apps))
          _ -> found
        end
        |> Enum.sort()
    end
  end

  defp releases!(project) do
    case Keyword.get(project, :releases, []) do
      releases when is_list(releases) ->
        if Keyword.keyword?(releases) and
             Enum.all?(releases, fn {_, o} -> Keyword.keyword?(o) end) do
          releases
        else
          invalid!(
            "releases: in project/0 must be a keyword list of release names to keyword lists, got: #{inspect(releases)}"
          )
        end

      other ->
        invalid!("releases: in project/0 must be a keyword list, got: #{inspect(other)}")
    end
  end

  defp umbrella_without_release!(project, project_dir, requested) do
    apps = umbrella_apps(project, project_dir)
    name = suggested_name(requested, project_dir)
    listed = Enum.map_join(if(apps == [], do: ["my_app"], else: apps), ", ", &"#{&1}: :permanent")

    first =
      if requested,
        do:
          "there is no release named #{inspect(requested)}: this umbrella project defines no releases",
        else: "this umbrella project defines no release"

    no_release!("""
    #{first}, and an umbrella has no default one (`mix release` refuses it too). Add one to project/0 in mix.exs, listing the apps it runs:

        releases: [
          #{name}: [applications: [#{listed}]]
        ]

    then run the task again (with --release NAME if you define several)\
    """)
  end

  defp suggested_name(requested, project_dir) do
    candidate = requested || project_dir |> Path.basename() |> String.downcase()
    candidate = String.replace(candidate, ~r/[^a-z0-9_]/, "_")
    if candidate =~ ~r/^[a-z][a-z0-9_]*$/, do: candidate, else: "my_release"
  end

  # What an image needs from the release config, checked before anything is built.
  defp check!(name, options, umbrella?) do
    if umbrella? and Keyword.get(options, :applications, []) == [] do
      no_release!(
        "release #{name} of this umbrella project lists no applications, and `mix release` needs them: " <>
          "add them in mix.exs, e.g. #{name}: [applications: [my_app: :permanent]] under releases:"
      )
    end

    if Keyword.get(options, :include_erts, true) == false do
      invalid!(
        "release #{name} sets include_erts: false, but the image has no Erlang of its own and runs the " <>
          "release's ERTS: remove include_erts: false from the release in mix.exs"
      )
    end

    case Keyword.get(options, :include_executables_for, [:unix]) do
      list when is_list(list) ->
        unless :unix in list do
          invalid!(
            "release #{name} sets include_executables_for: #{inspect(list)}, but the image runs " <>
              "bin/#{name}, the Unix script: add :unix to it in mix.exs"
          )
        end

      _ ->
        :ok
    end

    :ok
  end

  defp version!(name, options, project, project_dir) do
    version =
      case Keyword.get(options, :version, project[:version]) do
        {:from_app, app} -> app_version(app, project, project_dir)
        version -> version
      end

    cond do
      is_binary(version) ->
        version

      match?({:from_app, _}, options[:version]) ->
        {:from_app, app} = options[:version]

        invalid!(
          "release #{name} takes its version from app #{inspect(app)} (version: {:from_app, #{inspect(app)}}), " <>
            "and no mix.exs of #{inspect(app)} was found in the project, its umbrella apps or deps/: " <>
            "set version: \"X.Y.Z\" on the release in mix.exs"
        )

      true ->
        invalid!(
          "the project has no :version in project/0 and release #{name} sets none: add " <>
            ~s{version: "0.1.0" to project/0 (or to the release) in mix.exs}
        )
    end
  end

  # The version of `app`: the project's own, an umbrella app's or a fetched dependency's.
  defp app_version(app, project, project_dir) do
    app = to_string(app)

    if project[:app] && to_string(project[:app]) == app do
      project[:version]
    else
      dirs =
        Enum.map(
          umbrella_apps(project, project_dir),
          &Path.join([project_dir, project[:apps_path], &1])
        ) ++
          [Path.join(Path.expand(Keyword.get(project, :deps_path, "deps"), project_dir), app)]

      dirs
      |> Enum.filter(&(Path.basename(&1) == app))
      |> Enum.find_value(fn dir -> mix_config(dir)[:version] end)
    end
  end

  defp dir(name, options, project, project_dir, env) do
    case Keyword.get(options, :path) do
      nil ->
        build_path = Path.expand(Keyword.get(project, :build_path, "_build"), project_dir)
        Path.join([build_path, env, "rel", name])

      path ->
        Path.expand(path, project_dir)
    end
  end

  defp no_release!(message), do: raise(Error, reason: :no_release, message: message)
  defp invalid!(message), do: raise(Error, reason: :invalid_config, message: message)
end
