defmodule DockerRelease.E2E.CleanTest do
  # `mix docker.release.clean`, as a user runs it, after real builder builds: this project's
  # cache volumes, layer cache and finished scratch directories go, another project's volumes
  # stay, and the task says what it freed. (`--all-projects` would remove every project's
  # volumes on this shared engine, so it is tested against a fake engine in
  # native/image_io/src/clean.rs.)
  use ExUnit.Case, async: false
  @moduletag :engine

  import DockerRelease.E2E
  import DockerRelease.E2E.Builder

  setup_all do
    %{builder: ensure_builder!("bookworm")}
  end

  test "removes this project's volumes, layer cache and old scratch files, and says so", ctx do
    repo = unique_repo("dr-e2e-clean")
    on_exit(fn -> rm_images(["#{repo}/a:1", "#{repo}/b:1"]) end)
    a = example_copy!("hello", "dr-e2e-clean")
    b = example_copy!("hello", "dr-e2e-clean")

    for {dir, tag} <- [{a, "#{repo}/a:1"}, {b, "#{repo}/b:1"}] do
      run = run_release(["--builder", ctx.builder, "--tag", tag], cd: dir)
      assert run.status == 0, run.out
    end

    [_, _] = volumes = Enum.sort(cache_volumes(a))
    assert [_, _] = cache_volumes(b)
    layers = Path.join(a, "_build/docker_release/layers")
    assert File.ls!(layers) != []
    # A scratch directory left by a run that was killed (its process is gone).
    stale = Path.join(a, "_build/docker_release/runs/hello-999999999-1")
    File.mkdir_p!(stale)
    File.write!(Path.join(stale, "blob"), :binary.copy("x", 2_000))

    {out, status} = cmd("mix", ["docker.release.clean"], cd: a, env: [{"MIX_ENV", nil}])
    assert status == 0, out
    assert out =~ ~r/Removed   the layer cache and 1 scratch directory: [\d.]+ (kB|MB)/, out
    assert out =~ "Removed   2 builder cache volume(s) of #{a}", out
    for v <- volumes, do: assert(out =~ "\n          #{v}", out)

    assert cache_volumes(a) == []
    assert [_, _] = cache_volumes(b)
    refute File.exists?(layers)
    refute File.exists?(stale)

    # Nothing left: it says so, and succeeds.
    {out, status} = cmd("mix", ["docker.release.clean"], cd: a, env: [{"MIX_ENV", nil}])
    assert status == 0, out
    assert out =~ "Removed   the layer cache and 0 scratch directories: 0 B"
    assert out =~ "Removed   0 builder cache volume(s) of #{a}"
  end
end
