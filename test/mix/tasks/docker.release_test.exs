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
