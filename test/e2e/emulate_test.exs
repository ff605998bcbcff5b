defmodule DockerRelease.E2E.EmulateTest do
  # `--emulate`, as a user runs it: a project with a C NIF of its own (which no image of another
  # platform can provide) built for amd64 natively and for arm64 in the arm64 variant of its
  # builder, run by the engine under QEMU user emulation (binfmt_misc with the F flag, set up by
  # scripts/setup.sh). The builder is published as a multi-arch image in a registry; the engine
  # has its amd64 image under that name, and pulls the arm64 one by digest (no tag moves). Both
  # images are then pulled back from the registry and run: each says its architecture and its
  # NIF answers. With arm64 alone, the release is built under emulation only. A builder that
  # cannot be had stops the run before anything is built; a build that fails under emulation
  # leaves nothing behind.
  use ExUnit.Case, async: false
  @moduletag :engine

  import DockerRelease.E2E

  import DockerRelease.E2E.Builder,
    only: [
      ensure_builder!: 1,
      example_copy!: 2,
      publish_multi_arch!: 3,
      cache_volumes: 1,
      rm_cache_volumes: 1,
      run_release: 2,
      owned_containers: 1
    ]

  setup_all do
    cc = ensure_builder!("trixie-cc")
    arm64_cc = ensure_builder!("trixie-arm64-cc")
    dir = tmp_dir!("dr-e2e-emulate")
    %{port: port} = start_registry!(dir)
    %{cc: cc, arm64_cc: arm64_cc, dir: dir, registry: "127.0.0.1:#{port}"}
  end

  # What `eval` prints in `image` (run under QEMU when it is an arm64 image).
  defp eval!(image, expr) do
    {out, status} = docker(["run", "--rm", image, "eval", expr], stderr: false, timeout: 180)
    assert status == 0, "eval in #{image} failed (#{status}):\n#{out}"
    out
  end

  test "a C NIF for amd64 and arm64: arm64 built under emulation, pushed, pulled and run", ctx do
    builder =
      publish_multi_arch!(
        "#{ctx.registry}/team/builder-cc",
        [{ctx.cc, "amd64"}, {ctx.arm64_cc, "arm64"}],
        ctx.dir
      )

    amd64_id = image_inspect!(ctx.cc, "{{.Id}}")
    s = DockerRelease.E2E.Shapes.c_nif!(tmp_dir!("dr-e2e-emulate-nif"), String.downcase(rand()))
    on_exit(fn -> rm_cache_volumes(s.dir) end)
    tag = "#{ctx.registry}/team/nif-emu:1"
    local = unique_repo("dr-e2e-emulate")
    on_exit(fn -> rm_images([builder, "#{local}:amd64", "#{local}:arm64"]) end)

    args = ["--builder", builder, "--platform", "linux/amd64,linux/arm64", "--emulate"]
    run = run_release(args ++ ["--tag", tag, "--push"], cd: s.dir, timeout: 1500)
    assert run.status == 0, "mix docker.release --emulate failed (#{run.status}):\n#{run.out}"
    out = run.out

    # The arm64 builder came from the builder's registry index, pulled by digest: the engine's
    # name for the builder still names the amd64 image.
    assert out =~
             ~r/pulling its linux\/arm64\/v8 image #{ctx.registry}\/team\/builder-cc@sha256:[0-9a-f]{64} into the engine/,
           out

    assert image_inspect!(builder, "{{.Id}}") == amd64_id
    assert out =~ "building the release for linux/arm64/v8 in #{builder} under emulation", out
    assert out =~ "built the release for linux/arm64/v8 in #{builder} (OTP ", out
    assert out =~ "writing the linux/arm64/v8 image (built under emulation in #{builder})", out

    # Two builder containers (the native one and the emulated one), both gone; each builder
    # has its own cache volumes.
    assert length(run.created) == 2
    assert owned_containers(run.owner) == []
    assert length(cache_volumes(s.dir)) == 4

    [_, index] = Regex.run(~r/^Index\s+(sha256:[0-9a-f]{64})\s*$/m, out) || flunk(out)

    # Each image has its own SBOM, attached to its manifest: the emulated one's too.
    for p <- ["linux/amd64", "linux/arm64/v8"] do
      assert out =~ ~r/^SBOM      referrer sha256:[0-9a-f]{64} \(\S+\) of #{p}, /m, out
    end

    raw = skopeo!(["inspect", "--raw", "--tls-verify=false", "docker://#{tag}"])

    assert "sha256:" <> Base.encode16(:crypto.hash(:sha256, raw), case: :lower) == index

    for {arch, triple} <- [
          {"amd64", "x86_64-pc-linux-gnu"},
          {"arm64", "aarch64-unknown-linux-gnu"}
        ] do
      skopeo!(
        ["copy", "--quiet", "--src-tls-verify=false", "--override-arch", arch] ++
          ["docker://#{tag}", "docker-daemon:#{local}:#{arch}"]
      )

      assert image_inspect!("#{local}:#{arch}", "{{.Architecture}}") == arch

      # The NIF loads (an ELF file of the wrong machine would not) and answers.
      said =
        eval!(
          "#{local}:#{arch}",
          "IO.puts(:erlang.system_info(:system_architecture)); IO.puts(#{s.mod}.hello())"
        )

      assert said =~ triple, said
      assert said =~ ~r/nif says glibc \d+\.\d+/, said
    end
  end

  test "only arm64: the release is built under emulation alone, no native build", ctx do
    project = example_copy!("hello", "dr-e2e-emulate-only")
    on_exit(fn -> rm_cache_volumes(project) end)
    tag = "#{unique_repo("dr-e2e-emulate")}:arm64"
    on_exit(fn -> rm_images([tag]) end)

    args =
      ["--builder", ctx.cc, "--platform", "linux/arm64", "--emulate"] ++
        ["--platform-image", "linux/arm64=#{ctx.arm64_cc}", "--tag", tag]

    run = run_release(args, cd: project, timeout: 900)
    assert run.status == 0, "mix docker.release --emulate failed (#{run.status}):\n#{run.out}"

    assert run.out =~
             "==> building release hello for linux/arm64/v8 with --emulate (builder #{ctx.cc}, MIX_ENV=prod)",
           run.out

    assert run.out =~ "building the release for linux/arm64/v8 in #{ctx.arm64_cc} under emulation"
    assert run.out =~ "built the release for linux/arm64/v8 in #{ctx.arm64_cc} (OTP ", run.out

    # One builder container, the arm64 one: the amd64 builder was not started, and only the
    # arm64 builder's cache volumes exist.
    refute run.out =~ "starting a builder container from #{ctx.cc}", run.out
    assert length(run.created) == 1, run.out
    assert owned_containers(run.owner) == []
    assert length(cache_volumes(project)) == 2

    assert image_inspect!(tag, "{{.Architecture}}") == "arm64"
    said = eval!(tag, "IO.puts(:erlang.system_info(:system_architecture))")
    assert said =~ "aarch64-unknown-linux-gnu", said
  end

  test "an arm64 --builder on the amd64 engine: built under emulation, its environment set",
       ctx do
    project = example_copy!("hello", "dr-e2e-emulate-arm-builder")
    on_exit(fn -> rm_cache_volumes(project) end)
    archive = Path.join(ctx.dir, "arm-builder.tar")

    run = run_release(["--builder", ctx.arm64_cc, "--output", archive], cd: project, timeout: 900)
    assert run.status == 0, "mix docker.release failed (#{run.status}):\n#{run.out}"

    assert run.out =~
             "the builder #{ctx.arm64_cc} is an image of linux/arm64/v8 and the engine runs linux/amd64: it runs under emulation",
           run.out

    assert length(run.created) == 1, run.out
    assert owned_containers(run.owner) == []

    # The archive's image is arm64's (its config, as `docker load` reads it).
    files = tar_files!(archive)
    {config, _} = manifest_paths!(files["manifest.json"])
    assert files[config] =~ ~s("architecture":"arm64"), files[config]
  end

  test "an arm64 --builder whose image would go into the amd64 engine is refused before the build",
       ctx do
    project = example_copy!("hello", "dr-e2e-emulate-arm-load")
    tag = "#{unique_repo("dr-e2e-emulate")}:refused"
    run = run_release(["--builder", ctx.arm64_cc, "--tag", tag], cd: project, timeout: 300)

    refute run.status == 0, run.out

    assert run.out =~
             "the builder #{ctx.arm64_cc} is an image of linux/arm64/v8, and the engine runs linux/amd64",
           run.out

    assert run.out =~ "--platform linux/arm64/v8", run.out
    refute run.out =~ "starting a builder container", run.out
    assert run.created == []
    refute image_exists?(tag)
  end

  test "a builder that cannot be had stops the run before anything is built", ctx do
    project = example_copy!("hello", "dr-e2e-emulate-missing")
    archive = Path.join(ctx.dir, "missing.tar")
    missing = "127.0.0.1:1/nowhere/builder:1"

    {out, status} =
      mix_release(
        ["--builder", ctx.cc, "--platform", "linux/amd64,linux/arm64", "--emulate"] ++
          ["--platform-image", "linux/arm64=#{missing}", "--output", archive],
        cd: project,
        timeout: 300
      )

    refute status == 0, out

    assert out =~
             "--emulate needs a builder of linux/arm64/v8 in the engine: the engine has no image #{missing}",
           out

    assert out =~ "--platform-image linux/arm64/v8=IMAGE", out
    refute out =~ "starting a builder container", out
    refute File.exists?(archive)
  end

  test "a build that fails under emulation leaves no image, tag, archive or container", ctx do
    project = example_copy!("hello", "dr-e2e-emulate-fails")
    mix = Path.join(project, "mix.exs")

    # The project refuses to build on arm64 (as a dependency that does not support it would).
    File.write!(mix, """
    if to_string(:erlang.system_info(:system_architecture)) =~ "aarch64",
      do: Mix.raise("this project does not build on arm64")

    #{File.read!(mix)}\
    """)

    archive = Path.join(ctx.dir, "fails.tar")
    tag = "#{ctx.registry}/team/hello-emu-fails:1"

    args =
      ["--builder", ctx.cc, "--platform", "linux/amd64,linux/arm64", "--emulate"] ++
        ["--platform-image", "linux/arm64=#{ctx.arm64_cc}"] ++
        ["--tag", tag, "--push", "--output", archive]

    run = run_release(args, cd: project, timeout: 900)
    refute run.status == 0, run.out
    assert run.out =~ "building the release for linux/arm64/v8 in #{ctx.arm64_cc} under emulation"
    assert run.out =~ "this project does not build on arm64", run.out
    refute File.exists?(archive)
    {_, pushed} = cmd("skopeo", ["inspect", "--raw", "--tls-verify=false", "docker://#{tag}"])
    refute pushed == 0, "the tag was pushed"
    assert length(run.created) == 2
    assert owned_containers(run.owner) == []
  end
end
