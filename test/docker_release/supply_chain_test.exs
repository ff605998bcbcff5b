defmodule DockerRelease.SupplyChainTest do
  # Labels, annotations and environment from the command line over mix.exs; the SBOM and
  # signing-key settings, refused with the rule before any image work; mix.lock read as
  # literal terms. (The image side: test/e2e/supply_chain_test.exs and the Rust tests.)
  use ExUnit.Case, async: false

  alias DockerRelease.{Config, Deps, Error}
  alias Mix.Tasks.Docker.Release, as: Task

  @project [app: :hello, version: "0.1.0"]
  @keys Path.expand("../../native/image_core/tests/fixtures/keys", __DIR__)

  defp key(name), do: Path.join(@keys, name)

  setup do
    previous = System.get_env("DOCKER_RELEASE_SIGN_KEY")
    System.delete_env("DOCKER_RELEASE_SIGN_KEY")

    on_exit(fn ->
      if previous,
        do: System.put_env("DOCKER_RELEASE_SIGN_KEY", previous),
        else: System.delete_env("DOCKER_RELEASE_SIGN_KEY")
    end)

    dir = Path.join(System.tmp_dir!(), "dr-supply-#{System.unique_integer([:positive])}")
    File.mkdir_p!(dir)
    on_exit(fn -> File.rm_rf(dir) end)
    %{dir: dir}
  end

  describe "--label, --annotation, --container-env" do
    test "KEY=VALUE, repeatable, split at the first =; the value may be empty or hold =" do
      opts =
        Task.parse!(
          ~w(--label team=core --label a=b=c --annotation x= --container-env PORT=4000 --container-env A=1)
        )

      assert opts[:labels] == [{"team", "core"}, {"a", "b=c"}]
      assert opts[:annotations] == [{"x", ""}]
      assert opts[:container_env] == [{"PORT", "4000"}, {"A", "1"}]
    end

    test "without = or with an empty key: the rule and the value received" do
      for {args, message} <- [
            {~w(--label foo), ~s|--label takes KEY=VALUE (with =), got: "foo"|},
            {~w(--label =x), ~s|--label takes KEY=VALUE with a non-empty key, got: "=x"|},
            {~w(--annotation nope), ~s|--annotation takes KEY=VALUE (with =), got: "nope"|},
            {["--container-env", ""], "--container-env takes NAME=VALUE, got an empty argument"}
          ] do
        e = assert_raise Mix.Error, fn -> Task.parse!(args) end
        assert e.message == message
      end
    end

    test "merged over mix.exs: a key given both ways takes the flag's value, in mix.exs's place" do
      project =
        @project ++
          [
            docker_release: [
              labels: [{"a", "1"}, {"b", "2"}],
              container_env: [{"X", "1"}],
              annotations: [{"k", "v"}]
            ]
          ]

      opts = Task.parse!(~w(--label b=flag --label c=3 --label c=4 --container-env Y=2))
      c = Config.new!(project, opts, "/src")
      assert c.labels == [{"a", "1"}, {"b", "flag"}, {"c", "4"}]
      assert c.container_env == [{"X", "1"}, {"Y", "2"}]
      assert c.annotations == [{"k", "v"}]
    end

    test "the task's own labels and annotations lose to the user's; created from the timestamp" do
      c = Config.new!(@project, [labels: [{"org.opencontainers.image.title", "mine"}]], "/tmp")
      labels = DockerRelease.labels(c, 1_700_000_000)
      assert {"org.opencontainers.image.title", "mine"} in labels
      assert {"org.opencontainers.image.created", "2023-11-14T22:13:20Z"} in labels

      c = %{c | annotations: [{"org.opencontainers.image.version", "override"}]}
      annotations = DockerRelease.annotations(c, labels, 1_700_000_000)
      assert {"org.opencontainers.image.version", "override"} in annotations
      assert {"org.opencontainers.image.created", "2023-11-14T22:13:20Z"} in annotations
      assert length(annotations) == length(Enum.uniq_by(annotations, &elem(&1, 0)))
    end

    test "annotations in mix.exs are checked like labels" do
      assert_raise Error, ~r/invalid annotations/, fn ->
        Config.new!(@project ++ [docker_release: [annotations: [{"", "x"}]]], [])
      end

      assert_raise Error, ~r/invalid annotations.*NUL/, fn ->
        Config.new!(@project ++ [docker_release: [annotations: [{"k", "a\0b"}]]], [])
      end
    end
  end

  describe "the SBOM settings" do
    test "SPDX by default, CycloneDX on request, anything else refused" do
      assert Config.new!(@project, []).sbom_format == "spdx"
      assert Config.new!(@project, sbom_format: "cyclonedx").sbom_format == "cyclonedx"

      assert Config.new!(@project ++ [docker_release: [sbom_format: :cyclonedx]], []).sbom_format ==
               "cyclonedx"

      e = assert_raise Error, fn -> Config.new!(@project, sbom_format: "spdx-tag") end

      assert e.message ==
               ~s|invalid sbom_format: expected spdx (SPDX 2.3 JSON) or cyclonedx (CycloneDX 1.5 JSON), got: "spdx-tag"|
    end

    test "--sbom must be writable, and is checked without leaving anything", %{dir: dir} do
      path = Path.join(dir, "sbom.json")
      assert Config.new!(@project, [sbom: path], dir).sbom == path
      assert File.ls!(dir) == []

      File.write!(path, "old")
      Config.new!(@project, [sbom: path], dir)
      assert File.read!(path) == "old"

      e = assert_raise Error, fn -> Config.new!(@project, [sbom: "/proc/nope/x.json"], dir) end
      assert e.message =~ "--sbom /proc/nope/x.json cannot be written: its directory /proc/nope"

      e = assert_raise Error, fn -> Config.new!(@project, [sbom: dir], dir) end
      assert e.message =~ "--sbom #{dir} is a directory"

      e = assert_raise Error, fn -> Config.new!(@project, [sbom: Path.join(path, "x")], dir) end
      assert e.message =~ "is not a directory"

      e = assert_raise Error, fn -> Config.new!(@project, [sbom: "/proc/version.json"], dir) end

      assert e.message =~ "--sbom /proc/version.json cannot be written"
    end

    test "with several platforms --sbom must name a file, not a device or FIFO", %{dir: dir} do
      two = [platforms: ["linux/amd64", "linux/arm64"], builder: "b:1"]
      path = Path.join(dir, "sbom.spdx.json")
      assert Config.new!(@project, [sbom: path] ++ two, dir).sbom == path
      # One platform: one file, which a device may take.
      one = [platforms: ["linux/amd64"], builder: "b:1"]
      assert Config.new!(@project, [sbom: "/dev/null"] ++ one, dir).sbom == "/dev/null"

      e = assert_raise Error, fn -> Config.new!(@project, [sbom: "/dev/null"] ++ two, dir) end
      assert e.reason == :invalid_config

      assert e.message =~
               "--sbom /dev/null with several platforms (linux/amd64, linux/arm64/v8): one SBOM file is written per platform"

      assert e.message =~ "(sbom-linux-amd64.spdx.json for sbom.spdx.json)"
      assert e.message =~ "Give the path of a file"
    end

    test "--no-sbom and --sbom exclude each other", %{dir: dir} do
      e =
        assert_raise Error, fn ->
          Config.new!(@project, [no_sbom: true, sbom: Path.join(dir, "x.json")], dir)
        end

      assert e.message =~ "--no-sbom and --sbom exclude each other"
    end
  end

  describe "the signing key" do
    test "plain PEM ECDSA P-256 keys, SEC1 or PKCS#8" do
      for name <- ["p256-sec1.pem", "p256-pkcs8.pem"] do
        c = Config.new!(@project, sign_key: key(name))
        assert c.sign_key_pem == File.read!(key(name))
        assert c.sign_key_source == "--sign-key #{key(name)}"
      end
    end

    test "anything else is refused, saying why, and the key never shows" do
      for {name, why} <- [
            {"p384-sec1.pem", "is an ECDSA P-384 key, not ECDSA P-256"},
            {"p384-pkcs8.pem", "is an ECDSA P-384 key, not ECDSA P-256"},
            {"rsa-pkcs8.pem", "is an RSA key, not ECDSA P-256"},
            {"ed25519.pem", "is an Ed25519 key"},
            {"p256-encrypted.pem", "is encrypted (ENCRYPTED PRIVATE KEY)"},
            {"cosign-encrypted.pem", "is an encrypted cosign key"},
            {"p256-public.pem", "is a public key"},
            {"README.md", "is not a PEM private key"}
          ] do
        e = assert_raise Error, fn -> Config.new!(@project, sign_key: key(name)) end
        assert e.reason == :invalid_config
        assert e.message =~ "invalid signing key: --sign-key #{key(name)} #{why}", e.message

        for line <- String.split(File.read!(key(name)), "\n"),
            String.length(line) > 20,
            not String.starts_with?(line, "-----") do
          refute e.message =~ line
        end
      end

      e = assert_raise Error, fn -> Config.new!(@project, sign_key: "/nonexistent/key.pem") end

      assert e.message ==
               "--sign-key /nonexistent/key.pem cannot be read: no such file or directory"
    end

    test "DOCKER_RELEASE_SIGN_KEY holds the PEM text; the flag wins over it, it over mix.exs" do
      System.put_env("DOCKER_RELEASE_SIGN_KEY", File.read!(key("p256-pkcs8.pem")))
      c = Config.new!(@project, [])
      assert c.sign_key_source == "DOCKER_RELEASE_SIGN_KEY"

      c = Config.new!(@project ++ [docker_release: [sign_key: key("p384-sec1.pem")]], [])
      assert c.sign_key_source == "DOCKER_RELEASE_SIGN_KEY"

      c = Config.new!(@project, sign_key: key("p256-sec1.pem"))
      assert c.sign_key_source == "--sign-key #{key("p256-sec1.pem")}"

      System.put_env("DOCKER_RELEASE_SIGN_KEY", "not a key")
      e = assert_raise Error, fn -> Config.new!(@project, []) end
      assert e.message =~ "invalid signing key: DOCKER_RELEASE_SIGN_KEY is not a PEM private key"
      refute e.message =~ "not a key"
    end

    test "inspecting the config or the request never shows the key" do
      c = Config.new!(@project, sign_key: key("p256-sec1.pem"))
      secret = c.sign_key_pem |> String.split("\n") |> Enum.at(4)
      refute inspect(c) =~ secret

      request = %DockerRelease.Native.Request{
        release_dir: "/r",
        release_name: "hello",
        tags: [],
        work_dir: "/w",
        fallback_output: "/f",
        created: 0,
        sign_key: c.sign_key_pem
      }

      refute inspect(request) =~ secret
    end
  end

  describe "mix.lock" do
    @lock """
    %{
      "decimal": {:hex, :decimal, "2.1.1", "inner", [:mix], [], "hexpm", "53cfe5f497ed0e7771ae1a475575603d77425099ba5faef9394932b35020ffcc"},
      "jason": {:hex, :jason, "1.4.1", "inner", [:mix], [{:decimal, "~> 1.0 or ~> 2.0", [hex: :decimal, repo: "hexpm", optional: true]}], "hexpm", "fbb01ecdfd565b56261302f7e1fcc27c4fb8f32d56eab74db621fc154604a7a1"},
      "private": {:hex, :priv_pkg, "0.1.0", "inner", [:mix], [], "hexpm:acme", "00"},
      "old": {:hex, :old, "1.0.0", "inner", [:mix], []},
      "from_git": {:git, "https://github.com/acme/from_git.git", "0123456789abcdef0123456789abcdef01234567", [branch: "main"]},
    }
    """

    test "hex entries with their checksums and deps, git entries with their revisions" do
      {:ok, deps} = Deps.parse_lock(@lock)
      by = Map.new(deps, &{&1.app, &1})
      assert by["jason"].kind == "hex"
      assert by["jason"].repo == "hexpm"
      assert by["jason"].checksum =~ ~r/^fbb01ecd/
      assert by["jason"].depends_on == ["decimal"]
      assert by["private"].package == "priv_pkg"
      assert by["private"].repo == "hexpm:acme"
      assert by["old"].checksum == nil
      assert by["from_git"].kind == "git"
      assert by["from_git"].rev == "0123456789abcdef0123456789abcdef01234567"
      assert by["from_git"].url == "https://github.com/acme/from_git.git"
    end

    test "nothing in it is evaluated" do
      assert {:error, why} =
               Deps.parse_lock(~s|%{"x": {:hex, :x, System.cmd("touch", ["/tmp/pwned"])}}|)

      assert why =~ "not a literal term"
      assert {:error, _} = Deps.parse_lock("%{")
    end

    test "a project's path dependencies, with what they depend on" do
      dir = Path.expand("../../examples/with_deps", __DIR__)
      project = DockerRelease.Release.mix_config(dir)
      deps = Map.new(Deps.sources(project, dir), &{&1.app, &1})
      assert deps["alpha"].kind == "path"
      assert deps["alpha"].path == "local_deps/alpha"
      assert "alpha" in deps["beta"].depends_on
      # :docker_release is only: :dev, so not in the prod release.
      refute Map.has_key?(deps, "docker_release")
    end

    test "a lock file that is not literal terms is refused with what to do", %{dir: dir} do
      File.write!(Path.join(dir, "mix.lock"), ~s|%{"x": Code.eval_string("1")}|)

      e = assert_raise Error, fn -> Deps.sources(@project, dir) end
      assert e.message =~ "mix.lock for the SBOM: not a literal term"
      assert e.message =~ "mix deps.get"
    end
  end
end
