defmodule DockerRelease.E2E.BuilderSourcesTest do
  # The builder's cache volumes and Mix's mtime-based recompile decision, through
  # `mix docker.release --builder` as a user runs it, in the bookworm (Elixir 1.14, which
  # compares sources with the manifest's mtime) and trixie (Elixir 1.18, which compares them
  # with each source's recorded mtime) builders:
  #
  #   * a project recreated at the same path from an older copy (`cp -a`: older mtimes) whose
  #     module differs from the cached build's but has the same size serves its own code, not
  #     the cache's;
  #   * an unchanged tree compiles nothing, also when every file has a new mtime (a fresh
  #     `git clone`) or an old one (a restored copy).
  use ExUnit.Case, async: false
  @moduletag :engine

  import DockerRelease.E2E
  import DockerRelease.E2E.Builder

  @suites ["bookworm", "trixie"]
  @day 86_400

  setup_all do
    for suite <- @suites, do: ensure_builder!(suite)
    :ok
  end

  setup do
    repo = unique_repo_removed_on_exit("dr-e2e-sources")
    %{repo: repo}
  end

  defp build!(dir, suite, tag) do
    run = run_release(["--builder", builder_image(suite), "--tag", tag], cd: dir)
    assert run.status == 0, "mix docker.release --builder failed (#{run.status}):\n#{run.out}"
    assert owned_containers(run.owner) == []
    run
  end

  # Every regular file under `dir` (not `_build`, `deps`) gets mtime `time` (Unix seconds).
  defp set_mtimes!(dir, time) do
    for path <- Path.wildcard(Path.join(dir, "**"), match_dot: true),
        File.regular?(path),
        rel = Path.relative_to(path, dir),
        not String.starts_with?(rel, ["_build/", "deps/"]) do
      File.touch!(path, time)
    end

    :ok
  end

  # `cp -a` keeps mtimes, as a restored copy does.
  defp cp_a!(from, to) do
    {out, status} = cmd("cp", ["-a", from, to])
    assert status == 0, out
  end

  defp stamp_module(text) do
    ~s(defmodule Hello.Stamp do\n  def text, do: "#{text}"\nend\n)
  end

  defp stamp_in_image!(tag) do
    docker!(["run", "--rm", tag, "eval", "IO.puts(Hello.Stamp.text())"], stderr: false)
    |> String.split("\n")
    |> List.last()
  end

  # What Mix did in the builder: compiled files, dependencies entered, `.app` files written
  # (Mix rewrites those when mix.exs or a config file looks newer than they are).
  defp compile_lines(run) do
    run.out
    |> release_step_lines()
    |> Enum.filter(&(&1 =~ ~r/^(Compiling \d+ files? \(|==> |Generated \w+ app)/))
  end

  for suite <- @suites do
    @tag suite: suite
    test "in #{suite}: a project recreated from an older copy ships its own code, not the cache's",
         ctx do
      dir = example_copy!("hello", "dr-e2e-sources")
      stamp = Path.join(dir, "lib/hello/stamp.ex")

      # v1, as an old copy of it would be: every mtime two days back.
      File.write!(stamp, stamp_module("v1"))
      set_mtimes!(dir, System.os_time(:second) - 2 * @day)
      old = dir <> "-v1"
      on_exit(fn -> File.rm_rf(old) end)
      cp_a!(dir, old)

      # v4 (the same size as v1) is built: the cache volumes now hold v4's compiled code.
      File.write!(stamp, stamp_module("v4"))
      assert File.stat!(stamp).size == File.stat!(Path.join(old, "lib/hello/stamp.ex")).size
      build!(dir, ctx.suite, "#{ctx.repo}/hello:v4")
      assert stamp_in_image!("#{ctx.repo}/hello:v4") == "v4"

      # The project is recreated at the same path from the old copy: older mtimes, v1's text.
      File.rm_rf!(dir)
      cp_a!(old, dir)
      assert File.stat!(stamp, time: :posix).mtime < System.os_time(:second) - @day

      run = build!(dir, ctx.suite, "#{ctx.repo}/hello:v1")
      assert run.out =~ "==> 1 of ", run.out
      # (Elixir 1.18 also writes hello.app again; 1.14 does not.)
      assert compile_lines(run) -- ["Generated hello app"] == ["Compiling 1 file (.ex)"], run.out
      assert stamp_in_image!("#{ctx.repo}/hello:v1") == "v1"
    end

    @tag suite: suite
    test "in #{suite}: an unchanged tree compiles nothing, whatever its files' mtimes", ctx do
      dir = example_copy!("with_deps", "dr-e2e-sources")
      tag = "#{ctx.repo}/with_deps"
      cold = build!(dir, ctx.suite, "#{tag}:cold")
      assert "Compiling 4 files (.ex)" in compile_lines(cold), cold.out

      # A fresh clone: every file newer than anything the cache built.
      set_mtimes!(dir, System.os_time(:second))
      run = build!(dir, ctx.suite, "#{tag}:clone")

      assert run.out =~
               ~r/==> 0 of \d+ files differ from what the cache volumes were last built from/

      assert compile_lines(run) == [], run.out

      # A restored copy: every file older.
      set_mtimes!(dir, System.os_time(:second) - 30 * @day)
      run = build!(dir, ctx.suite, "#{tag}:restored")
      assert compile_lines(run) == [], run.out

      assert image_inspect!("#{tag}:restored", "{{.Id}}") ==
               image_inspect!("#{tag}:cold", "{{.Id}}")
    end
  end
end
