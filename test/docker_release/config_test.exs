defmodule DockerRelease.ConfigTest do
  use ExUnit.Case, async: true

  alias DockerRelease.{Config, Error, Release}
  import DockerRelease.E2E, only: [umbrella_dir!: 1]

  doctest DockerRelease.Config
  doctest DockerRelease
  doctest DockerRelease.Release
  doctest DockerRelease.HostBuild

  @project [app: :hello, version: "0.1.0"]

  test "defaults come from the project" do
    c = Config.new!(@project, [], "/src/hello")
    assert c.tags == ["hello:0.1.0", "hello:latest"]
    assert c.env == "prod"
    assert {c.uid, c.gid} == {65532, 65532}
    assert c.compression_level == 1
    assert c.output == nil
  end

  test "the docker_release: key is read and flags override it" do
    project =
      @project ++
        [docker_release: [tags: ["reg.example.com/a/hello:1"], uid: 1000, expose: [4000]]]

    c = Config.new!(project, [uid: 2000, output: "out/image.tar"], "/src/hello")
    assert c.tags == ["reg.example.com/a/hello:1"]
    assert c.uid == 2000
    assert c.expose == [4000]
    assert c.output == "/src/hello/out/image.tar"

    c = Config.new!(project, [tags: ["x:y"]], "/src/hello")
    assert c.tags == ["x:y"]
  end

  test "stall_timeout: 300 s unless mix.exs or the flag says otherwise, 1 to 86400" do
    unless System.get_env("DOCKER_RELEASE_STALL_TIMEOUT") do
      assert Config.new!(@project, [], "/src").stall_timeout == 300
    end

    project = @project ++ [docker_release: [stall_timeout: 60]]
    assert Config.new!(project, [], "/src").stall_timeout == 60
    assert Config.new!(project, [stall_timeout: 5], "/src").stall_timeout == 5

    for bad <- [0, 86_401, "60", 1.5] do
      e = assert_raise Error, fn -> Config.new!(@project, [stall_timeout: bad], "/src") end
      assert e.reason == :invalid_config

      assert e.message ==
               "invalid stall_timeout: expected an integer from 1 to 86400, got: #{inspect(bad)}"
    end
  end

  test "empty flag lists do not erase configured values" do
    project = @project ++ [docker_release: [extra_files: ["/etc/mime.types"]]]
    c = Config.new!(project, [tags: [], extra_files: []], "/src")
    assert c.extra_files == ["/etc/mime.types"]
    assert c.tags == ["hello:0.1.0", "hello:latest"]
  end

  test "a + in the version becomes _ in default tags" do
    c = Config.new!([app: :hello, version: "1.2.3+abc"], [], "/src")
    assert c.tags == ["hello:1.2.3_abc", "hello:latest"]
  end

  test "relative paths are expanded against the project directory" do
    c =
      Config.new!(
        @project,
        [from_release: "rel", metadata_file: "m.json", extra_files: ["data"]],
        "/src/hello"
      )

    assert c.from_release == "/src/hello/rel"
    assert c.metadata_file == "/src/hello/m.json"
    assert c.extra_files == ["/src/hello/data"]
  end

  describe "bad input is refused with the rule and what was received" do
    test "unknown keys under docker_release:" do
      e = assert_raise Error, fn -> Config.new!(@project ++ [docker_release: [tagz: []]], []) end
      assert e.reason == :invalid_config
      assert e.message =~ ":tagz"
      assert e.message =~ "known keys"
    end

    test "docker_release: that is not a keyword list" do
      e = assert_raise Error, fn -> Config.new!(@project ++ [docker_release: "x"], []) end
      assert e.message =~ "must be a keyword list"
    end

    test "invalid references" do
      for tag <- [
            "Hello:1",
            "hello:",
            "hello:-x",
            "hello@sha256:00",
            "a b",
            "hello:" <> String.duplicate("a", 129)
          ] do
        e = assert_raise Error, fn -> Config.new!(@project, tags: [tag]) end
        assert e.reason == :invalid_reference, tag
        assert e.message =~ "invalid image reference"
        assert e.message =~ inspect(tag)
      end
    end

    test "valid references with registry hosts and ports" do
      for tag <- ["localhost:5000/hello", "127.0.0.1:5000/team/hello:v1.0", "ghcr.io/a/b_c:1_x"] do
        assert %Config{tags: [^tag]} = Config.new!(@project, tags: [tag])
      end
    end

    test "numbers out of range" do
      assert_raise Error,
                   ~r/invalid uid: expected an integer from 0 to 4294967295, got: -1/,
                   fn ->
                     Config.new!(@project, uid: -1)
                   end

      assert_raise Error, ~r/invalid compression_level.*got: 10/, fn ->
        Config.new!(@project, compression_level: 10)
      end

      assert_raise Error, ~r/invalid expose.*got: \[0\]/, fn ->
        Config.new!(@project, expose: [0])
      end
    end

    test "bad env, release names and pairs" do
      assert_raise Error, ~r/invalid env/, fn -> Config.new!(@project, env: "Prod!") end

      assert_raise Error, ~r/invalid release name/, fn ->
        Config.new!(@project, release: "My-App")
      end

      assert_raise Error, ~r/invalid container_env/, fn ->
        Config.new!(@project ++ [docker_release: [container_env: [{"A=B", "x"}]]], [])
      end

      assert_raise Error, ~r/invalid labels/, fn ->
        Config.new!(@project ++ [docker_release: [labels: [a: 1]]], [])
      end
    end

    test "a value of the wrong type where a path or name is expected" do
      for {key, value} <- [
            output: %{},
            metadata_file: [a: 1],
            from_release: 42,
            registry_ca: "",
            dockerfile: :x,
            output: "out" <> <<0>> <> ".tar"
          ] do
        e =
          assert_raise Error, fn ->
            Config.new!(@project ++ [docker_release: [{key, value}]], [], "/src")
          end

        assert e.reason == :invalid_config
        assert e.message =~ "invalid #{key}: expected a path"
        assert e.message =~ inspect(value)
      end

      e =
        assert_raise Error, fn ->
          Config.new!(@project ++ [docker_release: [extra_files: ["/etc/a", %{}]]], [], "/src")
        end

      assert e.message =~ ~s(invalid extra_files: expected a list of paths)
      assert e.message =~ "%{}"

      e = assert_raise Error, fn -> Config.new!(@project, [env: %{}], "/src") end
      assert e.message =~ "invalid env: expected a name (a string), got: %{}"

      e = assert_raise Error, fn -> Config.new!(@project, [builder: 12], "/src") end
      assert e.message =~ "invalid builder: expected a string, got: 12"
    end

    test "NUL bytes in environment names and values, and labels" do
      for pairs <- [[{"A\0B", "x"}], [{"A", "x\0y"}], [{"", "x"}]] do
        e =
          assert_raise Error, fn ->
            Config.new!(@project ++ [docker_release: [container_env: pairs]], [])
          end

        assert e.message =~ "invalid container_env"
        assert e.message =~ "without = or NUL bytes"
        assert e.message =~ inspect(pairs)
      end

      assert_raise Error, ~r/invalid labels.*NUL/, fn ->
        Config.new!(@project ++ [docker_release: [labels: [{"a", "b\0"}]]], [])
      end
    end

    test "SOURCE_DATE_EPOCH outside 0..9999-12-31T23:59:59Z or not a number" do
      assert Config.source_date_epoch!(" 0 ") == 0
      assert Config.source_date_epoch!("") == nil
      assert Config.source_date_epoch!("253402300799") == 253_402_300_799

      for bad <- ["253402300800", "99999999999999", "-1", "1.5", "abc", "1e9"] do
        e = assert_raise Error, fn -> Config.source_date_epoch!(bad) end
        assert e.reason == :invalid_config
        assert e.message =~ "from 0 to 253402300799 (9999-12-31T23:59:59Z), got: #{inspect(bad)}"
      end
    end

    test "a project without version" do
      assert_raise Error, ~r/no :version/, fn -> Config.new!([app: :x], []) end
    end
  end

  describe "platforms" do
    test "none: one image for the release's own platform, as before" do
      c = Config.new!(@project, [], "/src")
      assert {c.platforms, c.platform_images, c.emulate} == {[], [], false}
    end

    test "platforms and their images are read, normalised, and flags override mix.exs" do
      project =
        @project ++
          [
            docker_release: [
              builder: "b:1",
              platforms: ["linux/amd64", "linux/aarch64"],
              platform_images: [{"linux/arm64/v8", "127.0.0.1:5000/b:arm64"}]
            ]
          ]

      c = Config.new!(project, [], "/src")
      assert c.platforms == ["linux/amd64", "linux/arm64/v8"]
      assert c.platform_images == [{"linux/arm64/v8", "127.0.0.1:5000/b:arm64"}]
      refute c.emulate

      c = Config.new!(project, [platforms: ["linux/arm64"], emulate: true], "/src")
      assert c.platforms == ["linux/arm64/v8"]
      assert c.platform_images == [{"linux/arm64/v8", "127.0.0.1:5000/b:arm64"}]
      assert c.emulate
    end

    test "bad platforms, images and combinations are refused with the rule and the value" do
      for {opts, says} <- [
            {[platforms: ["linux/sparc"]],
             ~s(invalid platform "linux/sparc": unknown architecture)},
            {[platforms: ["darwin/arm64"]], "the OS must be linux"},
            {[platforms: ["linux/arm64", "linux/arm64/v8"]],
             "--platform lists linux/arm64/v8 twice"},
            {[platform_images: [{"linux/arm64", "b:1"}]],
             "--platform-image linux/arm64=b:1 needs --platform"},
            {[platforms: ["linux/amd64"], platform_images: [{"linux/arm64", "b:1"}]],
             "names a platform --platform does not list (linux/amd64)"},
            {[platforms: ["linux/arm64"], platform_images: [{"linux/arm64", "Bad:1"}]],
             "invalid --platform-image linux/arm64=Bad:1"},
            {[emulate: true], "--emulate needs --platform"},
            {[platforms: ["linux/arm64"], emulate: true],
             "--emulate builds the release in a builder"},
            {[platforms: ["linux/arm64"], base: "debian:12"],
             "--platform and --base exclude each other"},
            {[platforms: ["linux/arm64"], build_dockerfile: "Dockerfile.build"],
             "--platform does not apply to the two-Dockerfile flow"},
            {[platforms: "linux/arm64"],
             ~s(invalid platforms: expected a list of platforms like "linux/arm64", got: "linux/arm64")},
            {[platforms: ["linux/arm64"], platform_images: [{"linux/arm64", :img}]],
             ~s(invalid platform_images: expected a list of {"PLATFORM", "IMAGE"} string pairs)},
            {[platforms: ["linux/arm64"], emulate: "yes"],
             ~s(invalid emulate: expected true or false, got: "yes")}
          ] do
        e =
          assert_raise Error, fn ->
            Config.new!(@project ++ [docker_release: opts], [], "/src")
          end

        assert e.reason == :invalid_config
        assert e.message =~ says, "#{inspect(opts)}: #{e.message}"
      end
    end

    test "a build on this machine refuses another platform without its image, before building" do
      host =
        if :erlang.system_info(:system_architecture) |> to_string() =~ "aarch64",
          do: "linux/amd64",
          else: "linux/arm64"

      e =
        assert_raise Error, fn ->
          Config.new!(@project ++ [docker_release: [platforms: [host]]], [], "/src")
        end

      assert e.reason == :invalid_config
      assert e.message =~ "--platform-image"
      assert e.message =~ "or build in a builder (--builder IMAGE)"

      # With its image, or in a builder, it is accepted.
      c = Config.new!(@project, [platforms: [host], platform_images: [{host, "b:1"}]], "/src")
      assert c.platform_images != []
      assert Config.new!(@project, [platforms: [host], builder: "b:1"], "/src").builder == "b:1"
    end
  end

  test "an umbrella root is named after its release" do
    umbrella = [
      apps_path: "apps",
      version: "0.1.0",
      releases: [shop: [applications: [web: :permanent]]]
    ]

    c = Config.new!(umbrella, [], "/p")
    assert c.app == :shop
    assert c.tags == ["shop:0.1.0", "shop:latest"]
    assert %Release{name: "shop", named?: true, dir: "/p/_build/prod/rel/shop"} = c.mix_release
  end

  test "the default tags and the version are the release's own version" do
    project = @project ++ [releases: [hello: [version: "0.0.1"]]]
    c = Config.new!(project, [], "/p")
    assert c.version == "0.0.1"
    assert c.tags == ["hello:0.0.1", "hello:latest"]
    labels = DockerRelease.labels(%{c | project_dir: System.tmp_dir!()})
    assert {"org.opencontainers.image.version", "0.0.1"} in labels
  end

  describe "release selection" do
    test "the default release of a project without releases:, the only one, the one named" do
      c = Config.new!(@project, [], "/p")

      assert %Release{name: "hello", named?: false, dir: "/p/_build/prod/rel/hello"} =
               c.mix_release

      assert c.release == "hello"
      assert Config.new!(@project, [release: "hello"], "/p").mix_release.named? == false

      project = @project ++ [releases: [web: [], worker: [path: "out/worker"]]]
      c = Config.new!(project, [release: "worker", env: "staging"], "/p")
      assert %Release{name: "worker", named?: true, dir: "/p/out/worker"} = c.mix_release
      c = Config.new!(project, [release: "web", env: "staging"], "/p")
      assert %Release{name: "web", dir: "/p/_build/staging/rel/web"} = c.mix_release

      project = @project ++ [build_path: "../shared/_build", releases: [only: []]]
      c = Config.new!(project, [], "/p/app")

      assert %Release{name: "only", named?: true, dir: "/p/shared/_build/prod/rel/only"} =
               c.mix_release
    end

    test "default_release: picks one of several" do
      project = @project ++ [default_release: :worker, releases: [web: [], worker: []]]
      assert Config.new!(project, [], "/p").mix_release.name == "worker"
      assert Config.new!(project, [release: "web"], "/p").mix_release.name == "web"
    end

    test "several releases and none picked, an unknown name" do
      project = @project ++ [releases: [web: [], worker: []]]
      e = assert_raise Error, fn -> Config.new!(project, [], "/p") end
      assert e.reason == :no_release
      assert e.message =~ "several releases (web, worker) and no default_release"
      assert e.message =~ "--release NAME"
      assert e.message =~ "default_release: :web"

      e = assert_raise Error, fn -> Config.new!(project, [release: "nope"], "/p") end
      assert e.message =~ ~s(no release named "nope"; its releases: web, worker)

      e = assert_raise Error, fn -> Config.new!(@project, [release: "nope"], "/p") end
      assert e.message =~ ~s(no release named "nope")
      assert e.message =~ "no releases: key, so its only release is the default one, hello"
    end

    test "on every output path, an umbrella without releases: gets one message naming its apps" do
      dir = umbrella_dir!(~w(core web))
      umbrella = [apps_path: "apps", version: "0.1.0"]

      for opts <- [[], [release: "r"], [output: "x.tar"], [push: true, tags: ["r.io/a/b:1"]]] do
        e = assert_raise Error, fn -> Config.new!(umbrella, opts, dir) end
        assert e.reason == :no_release
        assert e.message =~ "umbrella project defines no release"
        assert e.message =~ "applications: [core: :permanent, web: :permanent]"
        assert e.message =~ "releases: ["
        refute e.message =~ "no :app"
      end

      e = assert_raise Error, fn -> Config.new!(umbrella, [release: "r"], dir) end
      assert e.message =~ ~s(there is no release named "r")
      assert e.message =~ "r: [applications: [core: :permanent, web: :permanent]]"
    end

    test "an umbrella release without applications, include_erts: false, no :unix executables" do
      dir = umbrella_dir!(~w(core))
      umbrella = [apps_path: "apps", version: "0.1.0", releases: [r: []]]
      e = assert_raise Error, fn -> Config.new!(umbrella, [], dir) end
      assert e.message =~ "release r of this umbrella project lists no applications"

      e =
        assert_raise Error, fn ->
          Config.new!(@project ++ [releases: [hello: [include_erts: false]]], [], "/p")
        end

      assert e.reason == :invalid_config
      assert e.message =~ "include_erts: false"
      assert e.message =~ "remove include_erts: false"

      e =
        assert_raise Error, fn ->
          Config.new!(
            @project ++ [releases: [hello: [include_executables_for: [:windows]]]],
            [],
            "/p"
          )
        end

      assert e.message =~ "include_executables_for: [:windows]"
      assert e.message =~ "add :unix"
    end

    test "--from-release in an umbrella is named after the release's bin script" do
      dir = umbrella_dir!(~w(core))
      rel = Path.join(dir, "rel")
      File.mkdir_p!(Path.join(rel, "bin"))
      File.write!(Path.join(rel, "bin/shop"), "")
      c = Config.new!([apps_path: "apps", version: "1.0.0"], [from_release: "rel"], dir)
      assert {c.app, c.tags, c.mix_release} == {:shop, ["shop:1.0.0", "shop:latest"], nil}
    end
  end
end
