defmodule DockerRelease.E2E.BadInputTest do
  # Wrong input and failing engines: each run exits non-zero with a message that says what was
  # wrong, leaves no container behind, creates no tag, and never damages an existing --output file.
  use ExUnit.Case, async: false
  import DockerRelease.E2E
  alias DockerRelease.E2E.FakeEngine

  @moduletag :engine

  setup_all do
    tmp = tmp_dir!()
    %{rel: release_copy!(Path.join(tmp, "rel")), repo: unique_repo()}
  end

  # Runs `mix docker.release ARGS`, asserting it fails and starts no container; returns the output.
  defp assert_fails(args, opts \\ []) do
    before = all_containers()
    {out, status} = mix_release(args, opts)
    assert status != 0, "expected mix docker.release #{Enum.join(args, " ")} to fail:\n#{out}"
    assert_no_new_containers(before)
    out
  end

  # Containers that appeared during the run must be gone within 5 s: other users of the engine
  # may start and remove short-lived containers meanwhile; a leaked one stays.
  defp assert_no_new_containers(before) do
    if all_containers() -- before != [] do
      wait_until("containers started during a failed run to go away", 5_000, fn ->
        all_containers() -- before == []
      end)
    end
  end

  test "an unknown flag", %{repo: repo} do
    out = assert_fails(["--nope", "--tag", "#{repo}/hello:x"])
    assert out =~ "--nope"
    assert out =~ ~r/unknown option/i
    assert out =~ "mix help docker.release"
  end

  test "an invalid reference", %{repo: repo} do
    out = assert_fails(["--tag", "Bad:Tag"])
    assert out =~ ~s(invalid image reference "Bad:Tag")
    assert out =~ ~r/lower-case/i

    out = assert_fails(["--tag", "#{repo}/hello:-bad"])
    assert out =~ ~s(invalid image reference "#{repo}/hello:-bad")
    assert out =~ ~r/\btag\b/

    long = String.duplicate("x", 129)
    out = assert_fails(["--tag", "#{repo}/hello:#{long}"])
    assert out =~ "invalid image reference"
    assert out =~ ~r/\btag\b/
  end

  test "an unknown release name", %{repo: repo} do
    out = assert_fails(["--release", "nope", "--tag", "#{repo}/hello:x"])
    assert out =~ ~s(no release named "nope")
    assert out =~ "hello"
  end

  test "a --from-release directory that does not exist", %{repo: repo} do
    out = assert_fails(["--from-release", "/nonexistent", "--tag", "#{repo}/hello:x"])
    assert out =~ "/nonexistent"
    assert out =~ "not an assembled release"
  end

  # A copy of examples/hello whose project/0 gets `extra` (keyword entries as source text).
  defp hello_project!(extra \\ "") do
    project = Path.join(tmp_dir!(), "hello")
    File.mkdir_p!(project)

    for entry <- ["config", "lib"],
        do: File.cp_r!(Path.join(hello_dir(), entry), Path.join(project, entry))

    mix_exs =
      File.read!(Path.join(hello_dir(), "mix.exs"))
      |> String.replace(~s(path: "../.."), ~s(path: #{inspect(root())}))
      |> String.replace("deps: deps(),", "deps: deps(),#{extra}")

    assert mix_exs =~ ~s(path: #{inspect(root())})
    File.write!(Path.join(project, "mix.exs"), mix_exs)
    project
  end

  test "a release build that fails", %{repo: repo} do
    project = hello_project!()

    File.write!(
      Path.join(project, "lib/broken.ex"),
      "defmodule Hello.Broken do\n  def oops( do: :x\nend\n"
    )

    tag = "#{repo}/hello:broken"
    out = assert_fails(["--tag", tag], cd: project)
    assert out =~ "lib/broken.ex"
    assert out =~ ~r/SyntaxError|syntax error/
    assert out =~ "mix release hello --overwrite` failed"
    refute image_exists?(tag)
  end

  test "SOURCE_DATE_EPOCH past year 9999 is refused before any work", %{rel: rel, repo: repo} do
    tag = "#{repo}/hello:year10000"

    out =
      assert_fails(["--from-release", rel, "--tag", tag],
        env: [{"SOURCE_DATE_EPOCH", "253402300800"}]
      )

    assert out =~ "invalid SOURCE_DATE_EPOCH"
    assert out =~ "from 0 to 253402300799 (9999-12-31T23:59:59Z), got: \"253402300800\""
    refute out =~ "resolving runtime files"
    refute image_exists?(tag)
  end

  test "a map where mix.exs needs a path, a NUL in an env name: the rule, not a stack trace" do
    for {extra, says} <- [
          {~s( docker_release: [output: %{a: 1}],), "invalid output: expected a path"},
          {~s( docker_release: [extra_files: [%{}]],), "invalid extra_files"},
          {~S( docker_release: [container_env: [{"A\0B", "x"}]],), "invalid container_env"}
        ] do
      out = assert_fails([], cd: hello_project!(extra))
      assert out =~ says
      refute out =~ "UndefinedError"
      refute out =~ ~r/^\s+\(\w+ [\d.]+\) lib\//m, "a stack trace:\n#{out}"
    end
  end

  test "--extra-file of /proc, /dev or a FIFO says why it cannot go into an image", ctx do
    fifo = Path.join(tmp_dir!(), "pipe")
    {_, 0} = cmd("mkfifo", [fifo])

    for {extra, says} <- [
          {"/proc/cpuinfo", "is under /proc: the container runtime mounts its own"},
          {"/dev/null", "is under /dev: the container runtime mounts its own"},
          {fifo, "is a device, FIFO or socket"}
        ] do
      tag = "#{ctx.repo}/hello:extra"
      out = assert_fails(["--from-release", ctx.rel, "--tag", tag, "--extra-file", extra])
      assert out =~ "extra_files: #{extra} #{says}"
      refute out =~ "retry"
      refute image_exists?(tag)
    end
  end

  test "--extra-file of a file others cannot read stays private in the image, and says so", ctx do
    dir = tmp_dir!()
    secret = Path.join(dir, "secret.conf")
    File.write!(secret, "password=x\n")
    File.chmod!(secret, 0o640)
    archive = Path.join(dir, "hello.tar")

    {out, _} =
      mix_release!([
        "--from-release",
        ctx.rel,
        "--tag",
        "#{ctx.repo}/hello:private",
        "--extra-file",
        secret,
        "--output",
        archive
      ])

    assert out =~ "stay private in the image"
    assert out =~ secret

    files = tar_files!(archive)
    {_config, layers} = manifest_paths!(files["manifest.json"])
    [runtime | _] = layers
    layer = Path.join(dir, "runtime.tar.gz")
    File.write!(layer, files[runtime])
    {listing, 0} = cmd("tar", ["-tvzf", layer])
    line = listing |> String.split("\n") |> Enum.find(&String.ends_with?(&1, "secret.conf"))
    assert line =~ ~r{^-rw------- 0/0 }, listing
  end

  test "an engine socket with no listener", %{rel: rel, repo: repo} do
    dir = tmp_dir!()
    sock = Path.join(dir, "engine.sock")
    {:ok, l} = :gen_tcp.listen(0, ifaddr: {:local, sock})
    :ok = :gen_tcp.close(l)
    assert File.exists?(sock)

    tag = "#{repo}/hello:refused"

    out =
      assert_fails(["--from-release", rel, "--tag", tag],
        env: [{"DOCKER_HOST", "unix://#{sock}"}]
      )

    assert out =~ "Docker engine at unix://#{sock} did not answer"
    refute image_exists?(tag)

    # A plain file where the socket should be is refused the same way.
    plain = Path.join(dir, "plain.sock")
    File.write!(plain, "")

    out =
      assert_fails(["--from-release", rel, "--tag", tag],
        env: [{"DOCKER_HOST", "unix://#{plain}"}]
      )

    assert out =~ "Docker engine at unix://#{plain} did not answer"
  end

  test "a TCP engine address where nothing listens", %{rel: rel, repo: repo} do
    port = free_port()
    tag = "#{repo}/hello:tcp"

    out =
      assert_fails(["--from-release", rel, "--tag", tag],
        env: [{"DOCKER_HOST", "tcp://127.0.0.1:#{port}"}]
      )

    assert out =~ "Docker engine at tcp://127.0.0.1:#{port} did not answer"
    refute image_exists?(tag)
  end

  test "an engine that hangs up in the middle of the load", %{rel: rel, repo: repo} do
    sock = Path.join(tmp_dir!(), "fake.sock")
    engine = FakeEngine.start!(sock, self())
    on_exit(fn -> FakeEngine.stop(engine, sock) end)
    tag = "#{repo}/hello:vanish"

    out =
      assert_fails(["--from-release", rel, "--tag", tag],
        env: [{"DOCKER_HOST", "unix://#{sock}"}]
      )

    # The fake engine negotiated the version, received part of the upload, and hung up.
    # (bollard 0.21.1 sends unversioned paths after negotiating: /images/load, not /v1.41/...)
    assert_received {:fake_engine, "GET", "/version"}
    assert_received {:fake_engine, "POST", load_path}
    assert load_path =~ ~r{^(/v[0-9.]+)?/images/load\b}
    assert_received {:fake_engine, :cut, n} when n > 0
    assert out =~ ~r/loading the image into the Docker engine failed/i
    refute out =~ ~r/^ID\s/m
    # Nothing was tagged, there or in the real engine.
    refute_received {:fake_engine, "POST", _}
    refute image_exists?(tag)
  end

  test "an unwritable --output path", %{rel: rel, repo: repo} do
    out =
      assert_fails([
        "--from-release",
        rel,
        "--tag",
        "#{repo}/hello:x",
        "--output",
        "/proc/nope/x.tar"
      ])

    assert out =~ "cannot write /proc/nope/x.tar"
  end

  describe "an existing file at --output stays byte-identical when the run fails" do
    setup do
      dir = tmp_dir!()
      path = Path.join(dir, "hello.tar")
      bytes = :rand.bytes(4096)
      File.write!(path, bytes)
      %{dir: dir, path: path, bytes: bytes}
    end

    defp assert_untouched(%{dir: dir, path: path, bytes: bytes}) do
      assert File.read!(path) == bytes, "#{path} was changed by a failed run"
      assert File.ls!(dir) == ["hello.tar"], "left behind: #{inspect(File.ls!(dir))}"
    end

    test "when the release directory does not exist", ctx do
      out = assert_fails(["--from-release", "/nonexistent", "--output", ctx.path])
      assert out =~ "/nonexistent"
      assert_untouched(ctx)
    end

    test "when an --extra-file does not exist (after the build started)", ctx do
      out =
        assert_fails([
          "--from-release",
          ctx.rel,
          "--extra-file",
          "/nonexistent/file",
          "--output",
          ctx.path
        ])

      assert out =~ "/nonexistent/file"
      assert_untouched(ctx)
    end

    # The archive and the metadata file are written last; a metadata file that cannot be
    # written must not leave a new archive at --output (outputs commit together).
    test "when the --metadata-file cannot be written (the last step)", ctx do
      out =
        assert_fails([
          "--from-release",
          ctx.rel,
          "--output",
          ctx.path,
          "--metadata-file",
          "/proc/nope/meta.json"
        ])

      assert out =~ "/proc/nope/meta.json"
      assert_untouched(ctx)
    end
  end

  test "an unwritable --metadata-file fails before the engine gets the image", ctx do
    tag = "#{ctx.repo}/hello:meta"

    out =
      assert_fails([
        "--from-release",
        ctx.rel,
        "--tag",
        tag,
        "--metadata-file",
        "/proc/nope/meta.json"
      ])

    assert out =~ "/proc/nope/meta.json"
    refute image_exists?(tag)
  end

  test "--output naming an existing directory fails and leaves it as it was", %{rel: rel} do
    parent = tmp_dir!()
    target = Path.join(parent, "out")
    File.mkdir_p!(target)
    File.write!(Path.join(target, "keep"), "keep")

    out = assert_fails(["--from-release", rel, "--output", target])
    assert out =~ "cannot write #{target}"
    assert File.ls!(parent) == ["out"]
    assert File.ls!(target) == ["keep"]
  end
end
