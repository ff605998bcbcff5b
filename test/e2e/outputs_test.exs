defmodule DockerRelease.E2E.OutputsTest do
  # Where the image goes: the fallback archive when there is no engine, and an --output archive
  # that docker, skopeo (oci-archive and docker-archive), umoci and podman all read; plus the
  # --metadata-file summary.
  use ExUnit.Case, async: false
  import DockerRelease.E2E

  @moduletag :engine

  setup_all do
    repo = unique_repo()
    tmp = tmp_dir!()
    rel = release_copy!(Path.join(tmp, "rel"))
    tag = "#{repo}/hello:out"
    archive = Path.join(tmp, "out/hello.tar")
    metadata = Path.join(tmp, "out/meta/hello.json")
    File.mkdir_p!(Path.dirname(metadata))
    on_exit(fn -> rm_images([tag]) end)

    {out, id} =
      mix_release!([
        "--from-release",
        rel,
        "--tag",
        tag,
        "--output",
        archive,
        "--metadata-file",
        metadata
      ])

    %{
      repo: repo,
      rel: rel,
      tmp: tmp,
      tag: tag,
      archive: archive,
      metadata: metadata,
      id: id,
      digest: printed_digest!(out),
      out: out
    }
  end

  test "with no engine socket the task writes the fallback archive, says so, and it loads", ctx do
    tag = "#{ctx.repo}/hello:fallback"
    on_exit(fn -> rm_images([tag]) end)
    fallback = Path.join(hello_dir(), "_build/docker_release/hello-0.1.0.tar")
    existed? = File.exists?(fallback)
    on_exit(fn -> unless existed?, do: File.rm(fallback) end)

    # A machine without an engine: the run gets a mount namespace of its own in which /run
    # (where /var/run/docker.sock lives) is an empty tmpfs. Nothing names another engine.
    # (An explicit DOCKER_HOST that does not exist is an error: engine_endpoints_test.exs.)
    run = Path.dirname(realpath!("/var/run/docker.sock"))
    hide = ~s(mount -t tmpfs docker_release-test "#{run}" && exec "$@")

    {out, status} =
      cmd(
        "unshare",
        ["-m", "sh", "-c", hide, "sh", System.find_executable("mix"), "docker.release"] ++
          ["--from-release", ctx.rel, "--tag", tag],
        cd: hello_dir(),
        env: [
          {"MIX_ENV", nil},
          {"DOCKER_HOST", nil},
          {"DOCKER_CONTEXT", nil},
          {"DOCKER_CONFIG", tmp_dir!()}
        ],
        timeout: 300
      )

    assert status == 0, out
    id = printed_id!(out)
    assert out =~ "no Docker engine socket at /var/run/docker.sock (the default"
    assert out =~ "writing an image archive to #{fallback}"
    assert out =~ ~r/^Archive\s+#{Regex.escape(fallback)}$/m
    refute image_exists?(tag)

    load = docker!(["load", "-i", fallback])
    assert load =~ "Loaded image: #{tag}"
    assert image_inspect!(tag, "{{.Id}}") == id
    {run, 0} = docker(["run", "--rm", tag, "eval", "IO.puts(:ok)"])
    assert "ok" in String.split(run, "\n", trim: true), run
  end

  defp realpath!(path) do
    {out, 0} = cmd("realpath", [path])
    String.trim(out)
  end

  test "docker load accepts the --output archive and the image runs", ctx do
    refute image_exists?(ctx.tag)
    load = docker!(["load", "-i", ctx.archive])
    assert load =~ "Loaded image: #{ctx.tag}"
    assert image_inspect!(ctx.tag, "{{.Id}}") == ctx.id
    {run, 0} = docker(["run", "--rm", ctx.tag, "eval", "IO.puts(:ok)"])
    assert "ok" in String.split(run, "\n", trim: true), run
  end

  test "skopeo reads the archive as oci-archive and as docker-archive", ctx do
    {oci, status} = cmd("skopeo", ["inspect", "oci-archive:#{ctx.archive}"], stderr: false)
    assert status == 0, oci
    assert oci =~ ~s("Digest": "#{ctx.digest}")
    assert oci =~ ~s("Os": "linux")
    assert length(Regex.scan(~r/"sha256:[0-9a-f]{64}"/, section(oci, "Layers"))) == 3

    {dock, status} = cmd("skopeo", ["inspect", "docker-archive:#{ctx.archive}"], stderr: false)
    assert status == 0, dock
    assert dock =~ ~s("Os": "linux")
    assert length(Regex.scan(~r/"sha256:[0-9a-f]{64}"/, section(dock, "Layers"))) == 3

    {config, 0} =
      cmd("skopeo", ["inspect", "--config", "docker-archive:#{ctx.archive}"], stderr: false)

    assert config =~ ~r/"User": "\d+:\d+"/
  end

  test "umoci unpacks the image (through skopeo copy to an OCI layout)", ctx do
    layout = Path.join(ctx.tmp, "layout")
    bundle = Path.join(ctx.tmp, "bundle")
    {out, 0} = cmd("skopeo", ["copy", "oci-archive:#{ctx.archive}", "oci:#{layout}:e2e"])
    assert out =~ "Writing manifest"

    {ls, 0} = cmd("umoci", ["ls", "--layout", layout])
    assert "e2e" in String.split(ls)

    {out, status} = cmd("umoci", ["unpack", "--image", "#{layout}:e2e", bundle])
    assert status == 0, out
    rootfs = Path.join(bundle, "rootfs")
    assert %File.Stat{type: :regular, mode: mode} = File.stat!(Path.join(rootfs, "app/bin/hello"))
    assert Bitwise.band(mode, 0o111) != 0
    assert File.exists?(Path.join(rootfs, "bin/sh"))
    refute File.exists?(Path.join(rootfs, "app/releases/COOKIE"))
  end

  test "podman loads and runs the archive", ctx do
    case System.find_executable("podman") do
      nil ->
        missing!("podman is not installed (apt-get install podman): `podman load` not checked")

      _ ->
        on_exit(fn -> cmd("podman", ["image", "rm", "-f", ctx.tag]) end)
        {out, status} = cmd("podman", ["load", "-i", ctx.archive])
        assert status == 0, out
        # Podman qualifies the unqualified name (docker.io/ here).
        assert out =~ ~r{Loaded image: (docker\.io/|localhost/)?#{Regex.escape(ctx.tag)}\n}

        {id, 0} = cmd("podman", ["image", "inspect", "-f", "{{.Id}}", ctx.tag], stderr: false)
        assert "sha256:" <> String.trim(id) == ctx.id

        # This machine lets no process raise RLIMIT_NOFILE/NPROC (no CAP_SYS_RESOURCE), and
        # podman's defaults raise them: run with limits below the current ones.
        {run, status} =
          cmd("podman", [
            "run",
            "--rm",
            "--ulimit",
            "nofile=1024:1024",
            "--ulimit",
            "nproc=1024:1024",
            ctx.tag,
            "eval",
            "IO.puts(:ok)"
          ])

        assert status == 0, run
        assert "ok" in String.split(run, "\n", trim: true), run
    end
  end

  test "--metadata-file holds the image ID, the tags and the layers", ctx do
    assert ctx.out =~ "Metadata  #{ctx.metadata}"
    json = File.read!(ctx.metadata)
    assert json =~ ~s("image_id": "#{ctx.id}")
    assert json =~ ~s("manifest_digest": "#{ctx.digest}")
    assert json =~ ~r/"tags": \[\s*"#{Regex.escape(ctx.tag)}"\s*\]/
    assert json =~ ~s("archive": "#{ctx.archive}")

    layers = section(json, "layers")
    names = Regex.scan(~r/"name": "([^"]+)"/, layers, capture: :all_but_first) |> List.flatten()
    assert names == ["runtime", "erts", "app"]
    assert length(Regex.scan(~r/"digest": "sha256:[0-9a-f]{64}"/, layers)) == 3
    assert length(Regex.scan(~r/"diff_id": "sha256:[0-9a-f]{64}"/, layers)) == 3
    assert length(Regex.scan(~r/"size": [1-9]\d*/, layers)) == 3

    # The layer digests are the archive's layer blobs.
    {_config, blobs} = manifest_paths!(tar_files!(ctx.archive)["manifest.json"])

    for "blobs/sha256/" <> hex <- blobs do
      assert layers =~ ~s("digest": "sha256:#{hex}")
    end
  end

  # The text of a JSON array value `"key": [ ... ]` (no nested arrays in the ones we read).
  defp section(json, key) do
    [_, inner] = Regex.run(~r/"#{key}"\s*:\s*\[(.*?)\]/s, json)
    inner
  end
end
