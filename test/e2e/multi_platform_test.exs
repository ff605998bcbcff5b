defmodule DockerRelease.E2E.MultiPlatformTest do
  # Multi-platform images, as a user makes them: the release built once in the amd64 Debian 13
  # builder, the arm64 image's ERTS, OTP native files and runtime files read from the arm64
  # Debian 13 builder image (never run), one image per platform and an index over them. The
  # arm64 image is then pulled from the registry and RUN under QEMU user emulation (binfmt_misc
  # with the F flag, set up by scripts/setup.sh): it says it runs on aarch64, :crypto works, the
  # app answers HTTP. A release with a NIF of its own is refused for arm64, the file named,
  # nothing written or pushed.
  use ExUnit.Case, async: false
  @moduletag :engine

  import DockerRelease.E2E

  import DockerRelease.E2E.Builder,
    only: [ensure_builder!: 1, example_copy!: 2, publish_multi_arch!: 3]

  setup_all do
    trixie = ensure_builder!("trixie")
    arm64 = ensure_builder!("trixie-arm64")
    dir = tmp_dir!("dr-e2e-multi")
    %{port: port} = start_registry!(dir)
    %{trixie: trixie, arm64: arm64, dir: dir, registry: "127.0.0.1:#{port}"}
  end

  defp platform_args(ctx, builder \\ nil) do
    [
      "--builder",
      builder || ctx.trixie,
      "--platform",
      "linux/amd64,linux/arm64",
      "--platform-image",
      "linux/arm64=#{ctx.arm64}"
    ]
  end

  # The index digest and each platform's manifest digest, as the task printed them.
  defp printed_index!(out) do
    [_, index] =
      Regex.run(~r/^Index\s+(sha256:[0-9a-f]{64})\s*$/m, out) || flunk("no index in:\n#{out}")

    platforms =
      Regex.scan(~r/^  (linux\/\S+)\s+(sha256:[0-9a-f]{64})\s*$/m, out)
      |> Map.new(fn [_, p, d] -> {p, d} end)

    assert Map.keys(platforms) == ["linux/amd64", "linux/arm64/v8"], out
    {index, platforms}
  end

  defp sha256(bytes), do: "sha256:" <> Base.encode16(:crypto.hash(:sha256, bytes), case: :lower)

  # The layer digests of a manifest document, bottom first.
  defp layer_digests(manifest) do
    [_, layers] = Regex.run(~r/"layers":\[(.*?)\]/, manifest)
    Regex.scan(~r/"digest":"(sha256:[0-9a-f]{64})"/, layers) |> Enum.map(&List.last/1)
  end

  # The files of a gzip layer blob of the archive `files`: `%{path => bytes}`.
  defp layer_files(files, "sha256:" <> hex) do
    {:ok, entries} =
      :erl_tar.extract({:binary, files["blobs/sha256/" <> hex]}, [:compressed, :memory])

    Map.new(entries, fn {name, bytes} -> {to_string(name), bytes} end)
  end

  test "pushed: the tag names an index; the arm64 image pulled and run under QEMU", ctx do
    project = example_copy!("hello", "dr-e2e-multi")
    repo = "#{ctx.registry}/team/hello-multi"
    tag = "#{repo}:1"
    meta = Path.join(ctx.dir, "hello-meta.json")
    on_exit(fn -> rm_images([tag]) end)

    # Without the SBOM, which lists each platform's packages and lives in the app layer, the
    # app layer is the same blob on both platforms (the --output test below keeps the SBOM).
    args = ["--tag", tag, "--push", "--metadata-file", meta, "--no-sbom"]
    {out, _} = mix_release!(platform_args(ctx) ++ args, cd: project, timeout: 900)

    {index, platforms} = printed_index!(out)

    # The registry serves the index under the tag, byte for byte what was printed.
    raw = skopeo!(["inspect", "--raw", "--tls-verify=false", "docker://#{tag}"])
    assert sha256(raw) == index
    assert raw =~ ~s("mediaType":"application/vnd.oci.image.index.v1+json")
    assert raw =~ ~s("architecture":"arm64") and raw =~ ~s("variant":"v8")

    # Each platform's manifest: the app layer is the same blob, ERTS and the runtime differ.
    [amd, arm] =
      for p <- ["linux/amd64", "linux/arm64/v8"] do
        m =
          skopeo!(["inspect", "--raw", "--tls-verify=false", "docker://#{repo}@#{platforms[p]}"])

        assert sha256(m) == platforms[p]
        layer_digests(m)
      end

    assert length(amd) == 3 and length(arm) == 3
    assert List.last(amd) == List.last(arm), "the app layer differs across platforms"
    assert Enum.take(amd, 2) -- Enum.take(arm, 2) == Enum.take(amd, 2)

    # Shared blobs uploaded once: 3 + 3 layers, one shared, and two configs.
    json = File.read!(meta)
    assert json =~ ~s("index_digest": "#{index}")
    for {_, d} <- platforms, do: assert(json =~ d)
    assert json =~ ~r/"uploaded_blobs": 7\b/, json

    # The engine pulls the arm64 image from the index and runs it under emulation.
    docker!(["pull", "--platform", "linux/arm64", tag], timeout: 180)
    assert image_inspect!(tag, "{{.Architecture}}") == "arm64"

    script =
      ~S|IO.puts(:erlang.system_info(:system_architecture)); | <>
        ~S|IO.puts(Base.encode16(:crypto.hash(:sha256, "x"), case: :lower))|

    run = docker!(["run", "--rm", "--platform", "linux/arm64", tag, "eval", script], timeout: 180)
    assert run =~ "aarch64-unknown-linux-gnu"
    assert run =~ sha256("x") |> String.trim_leading("sha256:")

    port = free_port()
    run_detached!(["--platform", "linux/arm64", "-p", "127.0.0.1:#{port}:4000", tag])
    assert wait_http!(port, "/health", 180_000) == "ok"
  end

  test "--output: one archive with the index; skopeo copies all of it, docker load gets amd64; same index from another directory",
       ctx do
    name = unique_repo("dr-e2e-multi-wd")
    tag = "#{name}:1"
    on_exit(fn -> rm_images([tag]) end)

    [{a, index_a}, {_b, index_b}] =
      for i <- 1..2 do
        project = example_copy!("with_deps", "dr-e2e-multi-#{i}")
        archive = Path.join(ctx.dir, "wd-#{i}.tar")

        {out, _} =
          mix_release!(platform_args(ctx) ++ ["--tag", tag, "--output", archive],
            cd: project,
            timeout: 900
          )

        {index, _} = printed_index!(out)
        {archive, index}
      end

    assert index_a == index_b, "the same project in two directories gave two index digests"

    # The layout's index: deps and app layers shared across the two platforms.
    files = tar_files!(a)
    raw = files["blobs/sha256/" <> String.trim_leading(index_a, "sha256:")]
    manifests = Regex.scan(~r/"digest":"sha256:([0-9a-f]{64})"/, raw) |> Enum.map(&List.last/1)
    assert length(manifests) == 2
    [l1, l2] = Enum.map(manifests, &layer_digests(files["blobs/sha256/" <> &1]))
    refute Enum.at(l1, 1) == Enum.at(l2, 1), "the erts layers are the same"

    # deps is the same blob. app differs by its SBOM only (each lists its platform's packages):
    # the same files, and every file but the SBOM the same bytes.
    assert Enum.at(l1, 2) == Enum.at(l2, 2), "the deps layers differ"
    [app1, app2] = Enum.map([l1, l2], &layer_files(files, List.last(&1)))
    assert Map.keys(app1) == Map.keys(app2)
    assert Map.drop(app1, ["sbom.spdx.json"]) == Map.drop(app2, ["sbom.spdx.json"])
    refute app1["sbom.spdx.json"] == app2["sbom.spdx.json"]

    # skopeo takes the whole index to a registry, digests kept.
    dest = "#{ctx.registry}/team/wd-multi:1"

    skopeo!(["copy", "--all", "--dest-tls-verify=false", "oci-archive:#{a}:1", "docker://#{dest}"])

    pushed = skopeo!(["inspect", "--raw", "--tls-verify=false", "docker://#{dest}"])
    assert sha256(pushed) == index_a

    # docker load takes the image manifest.json names: the engine's platform's.
    docker!(["load", "-i", a], timeout: 180)
    assert image_inspect!(tag, "{{.Architecture}}") == "amd64"
  end

  test "a release with a NIF of its own is refused for arm64, the file named; nothing written or pushed",
       ctx do
    cc = ensure_builder!("trixie-cc")
    root = tmp_dir!("dr-e2e-multi-nif")
    s = DockerRelease.E2E.Shapes.c_nif!(root, String.downcase(rand()))
    archive = Path.join(ctx.dir, "nif.tar")
    tag = "#{ctx.registry}/team/nif-multi:1"

    {out, status} =
      mix_release(
        platform_args(ctx, cc) ++ ["--tag", tag, "--output", archive, "--push"],
        cd: s.dir,
        timeout: 900
      )

    refute status == 0, out
    assert out =~ "cannot make the linux/arm64/v8 image from #{ctx.arm64}", out
    assert out =~ "lib/#{s.app}-0.1.0/priv/shapes_nif.so (the project's :#{s.app})", out
    assert out =~ "--emulate", out
    refute File.exists?(archive)
    {_, missing} = cmd("skopeo", ["inspect", "--raw", "--tls-verify=false", "docker://#{tag}"])
    refute missing == 0, "the tag was pushed"
  end

  test "by default the builder's variant for arm64 comes from the builder's registry index",
       ctx do
    # The two Debian 13 builders pushed to the registry under one index, as a multi-arch
    # builder image is published; the engine has the amd64 one under that name (it runs it).
    builder =
      publish_multi_arch!(
        "#{ctx.registry}/team/builder",
        [{ctx.trixie, "amd64"}, {ctx.arm64, "arm64"}],
        ctx.dir
      )

    on_exit(fn -> rm_images([builder]) end)

    project = example_copy!("hello", "dr-e2e-multi-default")
    archive = Path.join(ctx.dir, "hello-default.tar")

    {out, _} =
      mix_release!(
        ["--builder", builder, "--platform", "linux/amd64,linux/arm64"] ++
          ["--tag", unique_repo("dr-e2e-multi-def") <> ":1", "--output", archive],
        cd: project,
        timeout: 900
      )

    assert out =~ "#{builder} for linux/arm64/v8 read from", out
    assert out =~ ctx.registry
    {_index, platforms} = printed_index!(out)

    # The arm64 image's ERTS is the arm64 builder's: its beam.smp is an aarch64 ELF file.
    files = tar_files!(archive)
    arm = files["blobs/sha256/" <> String.trim_leading(platforms["linux/arm64/v8"], "sha256:")]
    erts = layer_digests(arm) |> Enum.at(1)
    erts_files = layer_files(files, erts)
    {name, beam} = Enum.find(erts_files, fn {n, _} -> String.ends_with?(n, "/bin/beam.smp") end)
    # e_machine (offset 18, little-endian) 183 is EM_AARCH64.
    assert <<_::binary-size(18), 183, 0, _::binary>> = beam, "#{name} is not aarch64"
  end
end
