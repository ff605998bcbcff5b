defmodule DockerRelease.ConfigTest do
  use ExUnit.Case, async: true

  alias DockerRelease.{Config, Error}

  doctest DockerRelease.Config
  doctest DockerRelease

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

  test "an umbrella root is named after its release" do
    umbrella = [
      apps_path: "apps",
      version: "0.1.0",
      releases: [shop: [applications: [web: :permanent]]]
    ]

    c = Config.new!(umbrella, [], "/p")
    assert c.app == :shop
    assert c.tags == ["shop:0.1.0", "shop:latest"]
    assert {"shop", "/p/_build/prod/rel/shop"} = DockerRelease.HostBuild.release!(c, umbrella)
  end

  describe "release selection" do
    alias DockerRelease.HostBuild

    test "the only release, the app's default, or the one named" do
      c = Config.new!(@project, [], "/p")
      assert {"hello", "/p/_build/prod/rel/hello"} = HostBuild.release!(c, @project)

      project = @project ++ [releases: [web: [], worker: [path: "out/worker"]]]
      c = Config.new!(project, [release: "worker", env: "staging"], "/p")
      assert {"worker", "/p/out/worker"} = HostBuild.release!(c, project)
      c = Config.new!(project, [release: "web", env: "staging"], "/p")
      assert {"web", "/p/_build/staging/rel/web"} = HostBuild.release!(c, project)
    end

    test "several releases and none picked, an unknown name, an umbrella without releases" do
      project = @project ++ [releases: [web: [], worker: []]]

      e =
        assert_raise Error, fn -> HostBuild.release!(Config.new!(project, [], "/p"), project) end

      assert e.reason == :no_release
      assert e.message =~ "several releases (web, worker)"
      assert e.message =~ "--release NAME"

      e =
        assert_raise Error, fn ->
          HostBuild.release!(Config.new!(project, [release: "nope"], "/p"), project)
        end

      assert e.message =~ ~s(no release named "nope")

      umbrella = [apps_path: "apps", version: "0.1.0"]
      e = assert_raise Error, fn -> Config.new!(umbrella, [], "/p") end
      assert e.message =~ "no single release to name the image after"

      e =
        assert_raise Error, fn ->
          HostBuild.release!(Config.new!(umbrella, [release: "r"], "/p"), umbrella)
        end

      assert e.message =~ ~s(no release named "r")
    end
  end
end
