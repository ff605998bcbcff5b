defmodule DockerRelease.LabelsTest do
  # The OCI labels from git, on real repositories made with the git CLI.
  use ExUnit.Case, async: true

  alias DockerRelease.Config

  setup do
    dir = Path.join(System.tmp_dir!(), "dr-labels-test-#{System.unique_integer([:positive])}")
    File.mkdir_p!(dir)
    on_exit(fn -> File.rm_rf(dir) end)

    git!(dir, ["init", "-q"])
    File.write!(Path.join(dir, "mix.exs"), "tracked\n")
    git!(dir, ["add", "mix.exs"])

    git!(dir, [
      "-c",
      "user.name=t",
      "-c",
      "user.email=t@example.com",
      "commit",
      "-q",
      "-m",
      "one"
    ])

    rev = git!(dir, ["rev-parse", "HEAD"])
    config = Config.new!([app: :hello, version: "1.0.0"], [], dir)
    %{dir: dir, rev: rev, config: config}
  end

  defp git!(dir, args) do
    {out, 0} = System.cmd("git", args, cd: dir, stderr_to_stdout: true)
    String.trim(out)
  end

  defp labels(config), do: Map.new(DockerRelease.labels(config))

  test "a clean tree gets its revision; an https remote is kept without its credentials", ctx do
    git!(ctx.dir, ["remote", "add", "origin", "https://me:secret@example.com/acme/hello.git?x=1"])
    labels = labels(ctx.config)
    assert labels["org.opencontainers.image.revision"] == ctx.rev
    assert labels["org.opencontainers.image.source"] == "https://example.com/acme/hello.git"
    assert labels["org.opencontainers.image.version"] == "1.0.0"
    assert labels["org.opencontainers.image.title"] == "hello"
  end

  test "a remote that is a local path gives no source label", ctx do
    git!(ctx.dir, ["remote", "add", "origin", "/home/me/repos/hello.git"])
    labels = labels(ctx.config)
    refute Map.has_key?(labels, "org.opencontainers.image.source")
    assert labels["org.opencontainers.image.revision"] == ctx.rev
  end

  test "an scp-like remote becomes https", ctx do
    git!(ctx.dir, ["remote", "add", "origin", "git@github.com:acme/hello.git"])

    assert labels(ctx.config)["org.opencontainers.image.source"] ==
             "https://github.com/acme/hello.git"
  end

  test "uncommitted changes to a tracked file: no revision label; untracked files don't count",
       ctx do
    File.write!(Path.join(ctx.dir, "untracked.txt"), "x")
    refute DockerRelease.dirty?(ctx.dir)
    assert labels(ctx.config)["org.opencontainers.image.revision"] == ctx.rev

    File.write!(Path.join(ctx.dir, "mix.exs"), "changed\n")
    assert DockerRelease.dirty?(ctx.dir)
    refute Map.has_key?(labels(ctx.config), "org.opencontainers.image.revision")

    # Staged but not committed is still not the commit.
    git!(ctx.dir, ["add", "mix.exs"])
    assert DockerRelease.dirty?(ctx.dir)
  end

  test "outside a work tree there are no git labels" do
    dir = Path.join(System.tmp_dir!(), "dr-labels-nogit-#{System.unique_integer([:positive])}")
    File.mkdir_p!(dir)
    on_exit(fn -> File.rm_rf(dir) end)
    labels = labels(Config.new!([app: :hello, version: "1.0.0"], [], dir))

    assert Map.keys(labels) |> Enum.sort() == [
             "org.opencontainers.image.title",
             "org.opencontainers.image.version"
           ]

    refute DockerRelease.dirty?(dir)
  end
end
