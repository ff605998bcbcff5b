defmodule DockerRelease.E2E.ReleaseInVmTest do
  # `MIX_ENV=prod mix docker.release` in a project that declares docker_release for prod too:
  # the release is built in the task's own VM (no second `mix`), as a user does for the
  # quickest rebuilds; the image runs the change, and a release that does not compile fails
  # with the compiler's message, a non-zero exit and no image.
  use ExUnit.Case, async: false
  import DockerRelease.E2E
  import DockerRelease.E2E.Builder, only: [example_copy!: 2]

  @moduletag :engine

  setup do
    dir = example_copy!("hello", "dr-e2e-in-vm")
    mix = Path.join(dir, "mix.exs")
    text = File.read!(mix)
    assert text =~ "only: :dev, runtime: false"

    File.write!(
      mix,
      String.replace(text, "only: :dev, runtime: false", "only: [:dev, :prod], runtime: false")
    )

    tag = "#{unique_repo()}/hello:in-vm"
    on_exit(fn -> rm_images([tag]) end)
    %{dir: dir, tag: tag}
  end

  defp prod_release(dir, args) do
    cmd("mix", ["docker.release" | args], cd: dir, env: [{"MIX_ENV", "prod"}], timeout: 600)
  end

  test "the release is built in the task's VM, and the image runs it", %{dir: dir, tag: tag} do
    server = Path.join(dir, "lib/hello/server.ex")

    File.write!(
      server,
      File.read!(server) <> "\ndefmodule Hello.InVm do\n  def mark, do: :in_vm_7\nend\n"
    )

    {out, status} = prod_release(dir, ["--tag", tag])
    assert status == 0, out
    assert out =~ "(MIX_ENV=prod mix release hello --overwrite, in this VM)", out
    # One release build, in this VM: Mix printed its result once.
    assert length(Regex.scan(~r/^Release created at /m, out)) == 1, out
    _ = printed_id!(out)

    {run, 0} = docker(["run", "--rm", tag, "eval", "IO.puts(Hello.InVm.mark())"])
    assert run =~ "in_vm_7", run
  end

  test "a compile error fails with the compiler's message and leaves no image",
       %{dir: dir, tag: tag} do
    File.write!(Path.join(dir, "lib/broken.ex"), "defmodule Broken do\n  def x, do: (\nend\n")

    {out, status} = prod_release(dir, ["--tag", tag])
    assert status != 0, out
    assert out =~ "lib/broken.ex", out
    assert out =~ "`MIX_ENV=prod mix release hello --overwrite` failed", out
    refute image_exists?(tag)
  end

  test "from dev, the release is built by a separate mix", %{dir: dir, tag: tag} do
    {out, status} = mix_release(["--tag", tag], cd: dir)
    assert status == 0, out
    assert out =~ "==> building release hello (MIX_ENV=prod mix release hello --overwrite)\n", out
  end
end
