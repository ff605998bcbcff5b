defmodule DockerRelease.Deps do
  @moduledoc """
  Where each dependency of the project came from, for the SBOM: Hex packages with their
  tarball checksums and git dependencies with their revisions from `mix.lock`, path
  dependencies from `mix.exs` (the project's and its umbrella apps', and theirs in turn).

  `mix.lock` is Elixir terms. It is read as Mix reads it (`Code.string_to_quoted/2`), but only
  literals are accepted (maps, tuples, lists, atoms, strings, numbers): nothing in it is
  evaluated.

      iex> lock = ~s(%{"jason": {:hex, :jason, "1.4.1", "inner", [:mix], [{:decimal, "~> 2.0", [hex: :decimal, repo: "hexpm", optional: true]}], "hexpm", "outer"}})
      iex> {:ok, deps} = DockerRelease.Deps.parse_lock(lock)
      iex> [%DockerRelease.Native.Dep{app: "jason", kind: "hex", checksum: "outer", depends_on: ["decimal"]}] = deps
  """

  alias DockerRelease.Native.Dep
  alias DockerRelease.Release

  @doc """
  The dependencies of the project in `project_dir` (`project` is its `project/0`): from its
  lock file (`lockfile:`, default `mix.lock`; none is fine) and its path dependencies. Raises
  `DockerRelease.Error` (`:invalid_config`) for a lock file that is not literal Elixir terms.
  """
  @spec sources(keyword, Path.t(), String.t()) :: [%Dep{}]
  def sources(project, project_dir, env \\ "prod") do
    lock = Path.expand(Keyword.get(project, :lockfile, "mix.lock"), project_dir)

    locked =
      case File.read(lock) do
        {:ok, text} ->
          case parse_lock(text) do
            {:ok, deps} ->
              deps

            {:error, why} ->
              raise DockerRelease.Error,
                reason: :invalid_config,
                message:
                  "cannot read #{lock} for the SBOM: #{why}. Run `mix deps.get` to write it again"
          end

        {:error, _} ->
          []
      end

    names = MapSet.new(locked, & &1.app)
    paths = Enum.reject(path_deps(project, project_dir, env), &MapSet.member?(names, &1.app))
    Enum.sort_by(locked ++ paths, & &1.app)
  end

  @doc """
  The Hex and git entries of a `mix.lock` text, as `DockerRelease.Native.Dep` structs:
  `{:ok, deps}` or `{:error, why}`.
  """
  @spec parse_lock(String.t()) :: {:ok, [%Dep{}]} | {:error, String.t()}
  def parse_lock(text) do
    with {:ok, quoted} <- quoted(text),
         {:ok, map} when is_map(map) <- literal(quoted) do
      {:ok,
       map
       |> Enum.flat_map(fn {app, entry} -> entry(to_string(app), entry) end)
       |> Enum.sort_by(& &1.app)}
    else
      {:ok, other} -> {:error, "expected a map, got: #{inspect(other, limit: 5)}"}
      {:error, _} = e -> e
    end
  end

  defp quoted(text) do
    case Code.string_to_quoted(text, warn_on_unnecessary_quotes: false) do
      {:ok, q} -> {:ok, q}
      {:error, {_meta, message, token}} -> {:error, "#{inspect(message)} #{inspect(token)}"}
    end
  end

  # Only literal terms: nothing is evaluated.
  defp literal(quoted) do
    {:ok, lit(quoted)}
  catch
    {:not_literal, what} -> {:error, "not a literal term: #{Macro.to_string(what)}"}
  end

  defp lit({:%{}, _, pairs}) when is_list(pairs),
    do: Map.new(pairs, fn {k, v} -> {lit(k), lit(v)} end)

  defp lit({:{}, _, elems}) when is_list(elems), do: elems |> Enum.map(&lit/1) |> List.to_tuple()
  defp lit({a, b}), do: {lit(a), lit(b)}
  defp lit(list) when is_list(list), do: Enum.map(list, &lit/1)
  defp lit(x) when is_atom(x) or is_binary(x) or is_number(x), do: x
  defp lit(other), do: throw({:not_literal, other})

  # {:hex, name, version, inner_checksum, managers, deps, repo, outer_checksum} (the last two
  # are missing in older locks); {:git, url, rev, opts}.
  defp entry(app, lock) when is_tuple(lock) and tuple_size(lock) >= 6 and elem(lock, 0) == :hex do
    [:hex, name, _vsn, _inner, _managers, deps | rest] = Tuple.to_list(lock)

    [repo, outer] =
      case rest do
        [repo, outer | _] -> [repo, outer]
        [repo] -> [repo, nil]
        [] -> ["hexpm", nil]
      end

    [
      %Dep{
        app: app,
        kind: "hex",
        package: to_string(name),
        repo: to_string(repo),
        checksum: outer,
        depends_on: dep_names(deps)
      }
    ]
  end

  defp entry(app, {:git, url, rev, _opts}) when is_binary(url) and is_binary(rev),
    do: [%Dep{app: app, kind: "git", url: url, rev: rev}]

  defp entry(_app, _other), do: []

  defp dep_names(deps) when is_list(deps) do
    for dep <- deps, is_tuple(dep), tuple_size(dep) >= 1, do: to_string(elem(dep, 0))
  end

  defp dep_names(_), do: []

  # Path dependencies (not umbrella siblings, which are the project's own apps) of the project,
  # its umbrella apps and, in turn, of the path dependencies themselves.
  defp path_deps(project, project_dir, env) do
    env = String.to_atom(env)

    children =
      for app <- Release.umbrella_apps(project, project_dir) do
        dir = Path.join([project_dir, project[:apps_path] || "apps", app])
        {Release.mix_config(dir), dir}
      end

    {found, _seen} =
      Enum.reduce([{project, project_dir} | children], {%{}, MapSet.new()}, fn {proj, dir}, acc ->
        walk(proj, dir, env, project_dir, acc)
      end)

    found |> Map.values() |> Enum.sort_by(& &1.app)
  end

  defp walk(proj, dir, env, root, acc) do
    Enum.reduce(env_path_deps(proj, env), acc, fn {name, path}, {found, seen} = acc ->
      cond do
        MapSet.member?(seen, Path.expand(path, dir)) ->
          acc

        true ->
          abs = Path.expand(path, dir)
          sub = Release.mix_config(abs)
          app = to_string(sub[:app] || name)

          relative =
            if String.starts_with?(abs <> "/", root <> "/"), do: Path.relative_to(abs, root)

          dep = %Dep{
            app: app,
            kind: "path",
            path: relative,
            depends_on: for(d <- Keyword.get(sub, :deps, []), do: to_string(elem(dep_opts(d), 0)))
          }

          walk(sub, abs, env, root, {Map.put(found, app, dep), MapSet.put(seen, abs)})
      end
    end)
  end

  @doc false
  # The path dependencies of `proj` (a project's config) that `env` gets, as `{name, path}`:
  # umbrella siblings and dependencies of other environments left out.
  @spec env_path_deps(keyword, atom) :: [{atom, String.t()}]
  def env_path_deps(proj, env) do
    for dep <- Keyword.get(proj, :deps, []),
        {name, opts} = dep_opts(dep),
        path = opts[:path],
        path != nil and opts[:in_umbrella] != true,
        is_nil(opts[:only]) or env in List.wrap(opts[:only]),
        do: {name, path}
  end

  defp dep_opts({name, opts}) when is_list(opts), do: {name, opts}
  defp dep_opts({name, _req, opts}) when is_list(opts), do: {name, opts}
  defp dep_opts({name, _req}), do: {name, []}
end
