defmodule DockerRelease.E2E.AtomicOutputsTest do
  # Every output of a run commits together or not at all: a run that fails after it moved an
  # engine tag or replaced a file puts them back. And --output is written the way its path asks:
  # through a symlink, into a FIFO or device, never left half-written by a killed run.
  use ExUnit.Case, async: false
  import DockerRelease.E2E
  import DockerRelease.E2E.Builder, only: [beam_pid!: 1, signal!: 2]

  @moduletag :engine

  setup_all do
    tmp = tmp_dir!()
    repo = unique_repo()
    rel = release_copy!(Path.join(tmp, "rel"))
    stable = "#{repo}/hello:stable"
    on_exit(fn -> rm_images([stable]) end)

    # The image the tags point at before each failing run: built from the same release with
    # another timestamp, so every later run makes a different image.
    {_, old_id} =
      mix_release!(["--from-release", rel, "--tag", stable],
        env: [{"SOURCE_DATE_EPOCH", "1000000000"}]
      )

    %{tmp: tmp, repo: repo, rel: rel, stable: stable, old_id: old_id}
  end

  # `mix docker.release --from-release REL ARGS`, which must fail without making an image.
  defp failing_run(ctx, args) do
    args = ["--from-release", ctx.rel | args]
    {out, status} = mix_release(args)
    assert status != 0, "expected mix docker.release #{Enum.join(args, " ")} to fail:\n#{out}"
    refute out =~ ~r/^ID\s/m
    out
  end

  # The stable tag names the image it named before the failed run again; `fresh` is gone.
  defp assert_tags_back(ctx, fresh) do
    assert image_inspect!(ctx.stable, "{{.Id}}") == ctx.old_id
    refute image_exists?(fresh)
  end

  test "a metadata file that fails after the load puts the engine's tags back", ctx do
    fresh = "#{ctx.repo}/hello:fresh"
    on_exit(fn -> rm_images([fresh]) end)
    refute image_exists?(fresh)

    # /dev/full accepts the open and fails the write: the last step of the run.
    out = failing_run(ctx, ["--tag", ctx.stable, "--tag", fresh, "--metadata-file", "/dev/full"])

    assert out =~ "cannot write /dev/full"
    assert out =~ "were put back"
    assert_tags_back(ctx, fresh)
  end

  test "--output EXISTING with a metadata file that fails leaves EXISTING as it was", ctx do
    dir = tmp_dir!()
    path = Path.join(dir, "hello.tar")
    bytes = :rand.bytes(4096)
    File.write!(path, bytes)

    out =
      failing_run(ctx, ["--tag", ctx.stable, "--output", path, "--metadata-file", "/dev/full"])

    assert out =~ "cannot write /dev/full"
    assert File.read!(path) == bytes
    assert File.ls!(dir) == ["hello.tar"]
  end

  test "--push --load with a push that fails puts the engine's tags back", ctx do
    port = free_port()
    pushed = "127.0.0.1:#{port}/#{ctx.repo}/hello:push"
    also = "127.0.0.1:#{port}/#{ctx.repo}/hello:also"
    docker!(["tag", ctx.old_id, pushed])
    on_exit(fn -> rm_images([pushed, also]) end)

    out = failing_run(ctx, ["--tag", pushed, "--tag", also, "--push", "--load"])

    assert out =~ "127.0.0.1:#{port}"
    assert out =~ "were put back"
    assert image_inspect!(pushed, "{{.Id}}") == ctx.old_id
    refute image_exists?(also)
  end

  test "a push whose metadata file then fails puts the registry's tags back", ctx do
    %{port: port} = start_registry!(tmp_dir!())
    repo = "127.0.0.1:#{port}/#{ctx.repo}/hello"

    digest = fn tag ->
      {out, status} =
        cmd("skopeo", [
          "inspect",
          "--tls-verify=false",
          "-f",
          "{{.Digest}}",
          "docker://#{repo}:#{tag}"
        ])

      if status == 0, do: String.trim(out), else: nil
    end

    {out, _} =
      mix_release!(["--from-release", ctx.rel, "--tag", "#{repo}:stable", "--push"],
        env: [{"SOURCE_DATE_EPOCH", "1000000000"}]
      )

    before = printed_digest!(out)
    assert digest.("stable") == before

    out =
      failing_run(ctx, [
        "--tag",
        "#{repo}:stable",
        "--tag",
        "#{repo}:fresh",
        "--push",
        "--metadata-file",
        "/dev/full"
      ])

    assert out =~ "cannot write /dev/full"
    # :stable names its old manifest again; :fresh cannot be removed, and the message says so.
    assert digest.("stable") == before
    assert out =~ "could not undo everything"
    assert out =~ "#{repo}:fresh was created"
    assert out =~ "skopeo delete docker://#{repo}:fresh"
    refute out =~ "#{repo}:stable"
  end

  test "a tag the engine refuses puts the tags moved before it back", ctx do
    fresh = "#{ctx.repo}/hello:before-refused"
    on_exit(fn -> rm_images([fresh]) end)
    # The engine refuses repository names of 64 hex digits (they look like image IDs).
    refused = String.duplicate("ab", 32) <> ":x"

    out = failing_run(ctx, ["--tag", ctx.stable, "--tag", fresh, "--tag", refused])

    assert out =~ "64-byte hexadecimal"
    assert_tags_back(ctx, fresh)
  end

  test "--output through a symlink replaces the file it points to; the link stays", ctx do
    dir = tmp_dir!()
    File.mkdir_p!(Path.join(dir, "store"))
    target = Path.join(dir, "store/hello.tar")
    File.write!(target, "previous")
    link = Path.join(dir, "hello.tar")
    File.ln_s!("store/hello.tar", link)

    {_, id} = mix_release!(["--from-release", ctx.rel, "--tag", ctx.stable, "--output", link])

    assert {:ok, %File.Stat{type: :symlink}} = File.lstat(link)
    assert File.read_link!(link) == "store/hello.tar"
    assert %File.Stat{type: :regular, size: size} = File.stat!(target)
    assert size > 1_000_000
    {config, _} = manifest_paths!(tar_files!(target)["manifest.json"])
    assert "sha256:" <> Path.basename(config) == id
    assert Enum.sort(File.ls!(dir)) == ["hello.tar", "store"]
    assert File.ls!(Path.join(dir, "store")) == ["hello.tar"]
  end

  test "--output onto a FIFO streams the archive to its reader", ctx do
    dir = tmp_dir!()
    fifo = Path.join(dir, "pipe")
    copy = Path.join(dir, "copy.tar")
    {_, 0} = cmd("mkfifo", [fifo])
    reader = Task.async(fn -> cmd("sh", ["-c", ~s(cat "$0" > "$1"), fifo, copy]) end)

    {_, id} = mix_release!(["--from-release", ctx.rel, "--tag", ctx.stable, "--output", fifo])

    assert {_, 0} = Task.await(reader, 60_000)
    assert {:ok, %File.Stat{type: :other}} = File.lstat(fifo)
    {config, _} = manifest_paths!(tar_files!(copy)["manifest.json"])
    assert "sha256:" <> Path.basename(config) == id
  end

  test "--output onto a FIFO nobody reads fails at once, before the engine gets the image",
       ctx do
    fifo = Path.join(tmp_dir!(), "pipe")
    {_, 0} = cmd("mkfifo", [fifo])
    tag = "#{ctx.repo}/hello:no-reader"
    out = failing_run(ctx, ["--tag", tag, "--output", fifo, "--load"])
    assert out =~ "no process has open for reading"
    refute image_exists?(tag)
  end

  test "--output onto a character device writes through it and leaves the device", ctx do
    # A private copy of /dev/null (root can make one): the real one is shared with everyone.
    null = Path.join(tmp_dir!(), "null")
    {_, 0} = cmd("mknod", ["-m", "666", null, "c", "1", "3"])

    mix_release!(["--from-release", ctx.rel, "--tag", ctx.stable, "--output", null])

    {type, 0} = cmd("stat", ["-c", "%F", null])
    assert String.trim(type) == "character special file"
  end

  describe "a killed --output run" do
    setup ctx do
      # A release with 300 MB of random bytes: its archive takes seconds to write.
      big = Path.join(tmp_dir!(), "big")
      {_, 0} = cmd("cp", ["-a", ctx.rel, big])
      priv = Path.join(big, "lib/hello-0.1.0/priv")
      File.mkdir_p!(priv)

      {bytes, 0} = cmd("head", ["-c", "300M", "/dev/urandom"], stderr: false, timeout: 60)
      File.write!(Path.join(priv, "random.bin"), bytes)
      %{big: big}
    end

    test "leaves no temporary file; one left by an older kill is removed by the next run",
         ctx do
      dir = tmp_dir!()
      path = Path.join(dir, "hello.tar")
      File.write!(path, "previous")

      run =
        start_mix_release([
          "--from-release",
          ctx.big,
          "--tag",
          ctx.stable,
          "--output",
          path
        ])

      pid = beam_pid!(run)
      await_output(run, ~r/^==> writing #{Regex.escape(path)}$/, 120_000)
      signal!(pid, "KILL")
      {out, status} = await_exit(run)
      assert status != 0, "the run ended before it was killed:\n#{out}"

      assert File.ls!(dir) == ["hello.tar"]
      assert File.read!(path) == "previous"

      # What a run of an older version (named temporary files) left when it was killed.
      leftover = Path.join(dir, ".hello.tar.partial-999999999")
      File.write!(leftover, :rand.bytes(1024))
      mix_release!(["--from-release", ctx.rel, "--tag", ctx.stable, "--output", path])
      assert File.ls!(dir) == ["hello.tar"]
    end
  end
end
