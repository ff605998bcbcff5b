defmodule DockerRelease.E2E.BuilderTest do
  # `mix docker.release --builder IMAGE`, run as a user would (a separate `mix` OS process,
  # MIX_ENV unset) on temporary copies of the examples, in two builder images made locally by
  # test/support/make-builder-image.sh: bookworm (the host's Elixir 1.14 / OTP 25) and trixie
  # (Elixir 1.18 / OTP 27). What the image reports must be the builder's toolchain, never the
  # host's; builds leave no temporary container and no volume other than their cache.
  use ExUnit.Case, async: false
  @moduletag :engine

  import DockerRelease.E2E
  import DockerRelease.E2E.Builder

  @suites ["bookworm", "trixie"]

  setup_all do
    versions =
      Map.new(@suites, fn suite -> {suite, builder_versions!(ensure_builder!(suite))} end)

    # Otherwise "the builder's OTP" would not tell the two apart from each other or the host.
    assert versions["bookworm"].otp != versions["trixie"].otp, inspect(versions)
    %{versions: versions}
  end

  setup do
    repo = unique_repo_removed_on_exit("dr-e2e-builder")
    %{repo: repo}
  end

  # Builds `dir` in `suite`'s builder, asserting success and a clean engine afterwards.
  defp build!(dir, suite, tag, extra \\ []) do
    volumes_before = all_volumes()
    run = run_release(["--builder", builder_image(suite), "--tag", tag | extra], cd: dir)
    assert run.status == 0, "mix docker.release --builder failed (#{run.status}):\n#{run.out}"
    assert run.out =~ "==> built the release in #{builder_image(suite)}"

    # The container was removed before the task returned.
    assert owned_containers(run.owner) == []
    assert [_] = run.created

    # The only volumes that appeared are docker_release's cache volumes for this project.
    cache = cache_volumes(dir)
    assert [build, deps] = Enum.sort(cache)
    assert build =~ ~r/^docker_release-cache-[0-9a-f]{16}-build$/
    assert deps =~ ~r/^docker_release-cache-[0-9a-f]{16}-deps$/
    assert (all_volumes() -- volumes_before) -- all_cache_volumes() == []
    run
  end

  defp elixir_in_image!(tag) do
    docker!(["run", "--rm", tag, "eval", "IO.puts(System.version())"], stderr: false)
  end

  describe "each example in each builder" do
    for example <- ["hello", "with_deps", "umbrella"], suite <- @suites do
      @tag example: example, suite: suite
      test "#{example} built in #{suite}", ctx do
        %{example: example, suite: suite, versions: versions} = ctx
        %{otp: otp, elixir: elixir} = versions[suite]
        dir = example_copy!(example)
        tag = "#{ctx.repo}/#{example}:#{suite}"

        build!(dir, suite, tag)

        body = serve_and_get!(tag)

        case example do
          "hello" ->
            assert body =~ "hello from hello 0.1.0 on OTP #{otp},"

          "with_deps" ->
            assert body =~
                     "hello from with_deps 0.1.0 on OTP #{otp}, modules: 224, sum: 14415"

          "umbrella" ->
            assert body =~ "umbrella web on OTP #{otp}, core says hello from core"
        end

        assert elixir_in_image!(tag) == elixir
      end
    end
  end

  describe "a compile error" do
    for suite <- @suites do
      @tag suite: suite
      test "in #{suite}: fails with the compiler's message and leaves no container", ctx do
        dir = example_copy!("hello")

        File.write!(Path.join(dir, "lib/broken.ex"), """
        defmodule Broken do
          def oops, do: no_such_function(1)
        end
        """)

        tag = "#{ctx.repo}/broken:#{ctx.suite}"
        run = run_release(["--builder", builder_image(ctx.suite), "--tag", tag], cd: dir)

        assert run.status != 0, run.out
        assert run.out =~ "lib/broken.ex"
        assert run.out =~ "undefined function no_such_function/1"
        assert run.out =~ "`mix release hello --overwrite --path /app` failed in the builder"
        refute image_exists?(tag)
        assert [_] = run.created
        assert owned_containers(run.owner) == []
      end
    end
  end

  test "a warm rebuild compiles only the changed module; --no-cache compiles everything", ctx do
    dir = example_copy!("with_deps")
    tag = "#{ctx.repo}/with_deps"

    cold = build!(dir, "bookworm", "#{tag}:cold")

    for app <- ~w(alpha beta gamma delta with_deps),
        do: assert(cold.out =~ "    ==> #{app}\n", cold.out)

    # One line of the app changes (and its length, so that Mix sees it whatever its clock).
    greeting = Path.join(dir, "lib/with_deps/greeting.ex")
    File.write!(greeting, String.replace(File.read!(greeting), ~s("hello"), ~s("greetings")))

    warm = build!(dir, "bookworm", "#{tag}:warm")
    step = release_step_lines(warm.out)

    assert Enum.filter(step, &(&1 =~ ~r/^Compiling \d+ files? \(/)) == ["Compiling 1 file (.ex)"],
           warm.out

    # Mix prints "==> DEP" before compiling a dependency; nothing of the kind here.
    assert Enum.filter(step, &String.starts_with?(&1, "==> ")) == [], warm.out

    assert serve_and_get!("#{tag}:warm") =~
             "greetings from with_deps 0.1.0 on OTP #{ctx.versions["bookworm"].otp}, " <>
               "modules: 224, sum: 14415"

    fresh = build!(dir, "bookworm", "#{tag}:fresh", ["--no-cache"])
    assert fresh.out =~ "==> clearing the build cache (--no-cache)"
    step = release_step_lines(fresh.out)

    for {app, files} <- [alpha: 61, beta: 61, gamma: 51, delta: 51, with_deps: 4] do
      assert step |> Enum.drop_while(&(&1 != "==> #{app}")) |> Enum.at(1) ==
               "Compiling #{files} files (.ex)",
             fresh.out
    end
  end

  # Adds `{:outside, path: OUTSIDE}` to the deps list in `mix_exs` that starts with `first`.
  defp add_outside_dep!(mix_exs, first, outside) do
    text = File.read!(mix_exs)
    assert text =~ first, "#{mix_exs} has no #{first}"

    File.write!(
      mix_exs,
      String.replace(
        text,
        first,
        "[{:outside, path: #{inspect(outside)}}, " <> String.trim_leading(first, "[")
      )
    )
  end

  # The task stops before the builder: non-zero, the dependency named, nothing in the engine.
  defp assert_refused_early!(run, dir, outside) do
    assert run.status != 0, run.out
    assert run.out =~ "path dependencies outside the project directory", run.out
    assert run.out =~ ":outside (#{outside})", run.out

    refute run.out =~ ":docker_release (",
           "the dev-only docker_release dep was named:\n#{run.out}"

    refute run.out =~ "==> starting a builder container", run.out
    assert run.created == []
    assert cache_volumes(dir) == []
  end

  describe "a path dependency outside the project" do
    setup do
      # A real Mix project, so that Mix on the host accepts the dependency and the task runs.
      outside = tmp_dir!("dr-e2e-builder-outside")
      File.mkdir_p!(Path.join(outside, "lib"))

      File.write!(Path.join(outside, "mix.exs"), """
      defmodule Outside.MixProject do
        use Mix.Project
        def project, do: [app: :outside, version: "0.1.0"]
      end
      """)

      File.write!(Path.join(outside, "lib/outside.ex"), "defmodule Outside do\nend\n")
      %{outside: outside}
    end

    # (Every build in this file also shows that a dev-only path dependency outside the project,
    # docker_release itself, is no obstacle.)
    test "is refused, named, before any container or volume is made", ctx do
      dir = example_copy!("hello")
      add_outside_dep!(Path.join(dir, "mix.exs"), "[{:docker_release,", ctx.outside)
      run = run_release(["--builder", builder_image("bookworm")], cd: dir)
      assert_refused_early!(run, dir, ctx.outside)
    end

    # Path dependencies are followed into umbrella apps and into in-project path deps.
    test "in an umbrella app's deps is refused before any container is made", ctx do
      dir = example_copy!("umbrella")

      add_outside_dep!(
        Path.join(dir, "apps/web/mix.exs"),
        "[{:core, in_umbrella: true}",
        ctx.outside
      )

      run = run_release(["--builder", builder_image("bookworm")], cd: dir)
      assert_refused_early!(run, dir, ctx.outside)
    end

    test "in the deps of an in-project path dep is refused before any container is made", ctx do
      dir = example_copy!("with_deps")
      add_outside_dep!(Path.join(dir, "local_deps/beta/mix.exs"), "[{:alpha,", ctx.outside)
      run = run_release(["--builder", builder_image("bookworm")], cd: dir)
      assert_refused_early!(run, dir, ctx.outside)
    end
  end
end
