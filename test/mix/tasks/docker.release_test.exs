defmodule Mix.Tasks.Docker.ReleaseTest do
  use ExUnit.Case, async: false

  alias Mix.Tasks.Docker.Release, as: Task

  setup do
    Mix.shell(Mix.Shell.Process)
    on_exit(fn -> Mix.shell(Mix.Shell.IO) end)
  end

  test "flags are parsed strictly into config options" do
    opts = Task.parse!(~w(--env staging --release web -t a:1 --tag b:2 --output x.tar
                     --metadata-file m.json --extra-file /a --extra-file /b --uid 10 --gid 20
                     --expose 4000 --expose 4001 --compression-level 9 --from-release rel))

    assert opts[:tags] == ["a:1", "b:2"]
    assert opts[:extra_files] == ["/a", "/b"]
    assert opts[:expose] == [4000, 4001]
    assert opts[:env] == "staging"
    assert opts[:release] == "web"
    assert opts[:output] == "x.tar"
    assert opts[:metadata_file] == "m.json"
    assert {opts[:uid], opts[:gid], opts[:compression_level]} == {10, 20, 9}
    assert opts[:from_release] == "rel"
  end

  test "--platform takes comma-separated lists and repeats; --platform-image PLATFORM=IMAGE" do
    opts = Task.parse!(~w(--platform linux/amd64,linux/arm64 --platform linux/s390x --emulate
                     --platform-image linux/arm64=reg.example.com:5000/b:1=x
                     --platform-image linux/s390x=b@sha256:#{String.duplicate("a", 64)}))

    assert opts[:platforms] == ["linux/amd64", "linux/arm64", "linux/s390x"]

    assert opts[:platform_images] == [
             {"linux/arm64", "reg.example.com:5000/b:1=x"},
             {"linux/s390x", "b@sha256:" <> String.duplicate("a", 64)}
           ]

    assert opts[:emulate] == true
    refute Keyword.has_key?(opts, :platform)
    refute Keyword.has_key?(opts, :platform_image)
    assert Task.parse!([])[:platforms] == []

    for bad <- ["linux/arm64", "=b:1", "linux/arm64="] do
      e = assert_raise Mix.Error, fn -> Task.parse!(["--platform-image", bad]) end
      assert e.message =~ "--platform-image takes PLATFORM=IMAGE"
      assert e.message =~ inspect(bad)
    end
  end

  test "a bad --platform stops the task before any build, with the rule" do
    e = assert_raise Mix.Error, fn -> Task.run(["--platform", "linux/arm64,linux/risc"]) end
    assert e.message =~ ~s(invalid platform "linux/risc": unknown architecture)
    refute_received {:mix_shell, :info, ["==> building release" <> _]}
  end

  test "an unknown flag is an error that points to the help" do
    e = assert_raise Mix.Error, fn -> Task.run(["--nope"]) end
    assert e.message =~ "--nope"
    assert e.message =~ "mix help docker.release"
  end

  test "a mistyped value and stray arguments are errors" do
    assert_raise Mix.Error, ~r/--uid : Expected type integer, got "abc"/, fn ->
      Task.run(["--uid", "abc"])
    end

    assert_raise Mix.Error, ~r/unexpected argument\(s\) extra/, fn -> Task.run(["extra"]) end

    assert_raise Mix.Error, ~r/--expose takes a port number/, fn ->
      Task.run(["--expose", "http"])
    end
  end

  test "an invalid tag stops the task before any build, with the rule" do
    e = assert_raise Mix.Error, fn -> Task.run(["--tag", "Bad:Tag"]) end
    assert e.message =~ ~s(invalid image reference "Bad:Tag")
    refute_received {:mix_shell, :info, ["==> building release" <> _]}
  end

  test "sizes are printed in the unit that shows them" do
    assert Task.size(0) == "0 B"
    assert Task.size(999) == "999 B"
    assert Task.size(1000) == "1.0 kB"
    assert Task.size(45_900) == "45.9 kB"
    assert Task.size(999_949) == "999.9 kB"
    assert Task.size(999_950) == "1.0 MB"
    assert Task.size(28_012_345) == "28.0 MB"
    assert Task.size(1_234_567_890) == "1.2 GB"
  end

  test "every option is documented in mix help" do
    doc = Mix.Task.moduledoc(Task)

    for flag <- ~w(--env --release --from-release --tag --output --metadata-file --extra-file
                   --uid --gid --expose --compression-level --list-files --label --annotation
                   --container-env --sbom --sbom-format --no-sbom --sign-key) do
      assert doc =~ "`#{flag}", "#{flag} is not documented"
    end

    assert Mix.Task.shortdoc(Task) =~ "minimal container image"
  end
end
