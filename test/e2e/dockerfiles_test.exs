defmodule DockerRelease.E2E.DockerfilesTest do
  # The article's two-Dockerfile flow, driven through `mix docker.release` as a user would, on a
  # copy of test/fixtures/article_app (Dockerfile.build FROM a local builder image, Dockerfile
  # FROM a local Debian minbase image; both made by test/support/make-builder-image.sh).
  use ExUnit.Case, async: false
  @moduletag :engine

  import DockerRelease.E2E

  import DockerRelease.E2E.Builder,
    only: [
      run_release: 2,
      owned_containers: 1,
      ensure_builder!: 1,
      article_copy!: 1,
      article_args: 1
    ]

  setup_all do
    # The builder image Dockerfile.build is FROM, the minbase Dockerfile is FROM.
    ensure_builder!("bookworm")
    ensure_builder!("minbase")
    :ok
  end

  setup do
    dir = article_copy!("dr-e2e-article")
    repo = unique_repo("dr-e2e-article")
    on_exit(fn -> rm_images_where(&String.starts_with?(&1, repo)) end)

    %{dir: dir, repo: repo}
  end

  # The run as a separate OS process; its temporary containers are those labelled with its
  # owner (other runs on the same engine have their own).
  defp flow(ctx, extra) do
    run_release(article_args("#{ctx.repo}-build:t") ++ extra, cd: ctx.dir)
  end

  test "builds the release image, copies the tarball out, builds and tags the final image", ctx do
    %{out: out, status: status, owner: owner} =
      flow(ctx, ["--tag", "#{ctx.repo}/app:1", "--tag", "#{ctx.repo}/app:latest"])

    assert status == 0, out

    # One line per step, as the article's script prints.
    for step <- [
          "==> building the release in #{ctx.repo}-build:t",
          "==> creating a temporary container",
          "==> copying /tmp/article_app.tar.gz",
          "==> removing the temporary container",
          "==> building the final image #{ctx.repo}/app:1"
        ] do
      assert out =~ step
    end

    # Each build's output is streamed.
    assert out =~ "Step 1/"
    assert image_exists?("#{ctx.repo}-build:t")
    id = image_inspect!("#{ctx.repo}/app:1", "{{.Id}}")
    assert image_inspect!("#{ctx.repo}/app:latest", "{{.Id}}") == id
    assert out =~ id

    {run_out, 0} =
      docker([
        "run",
        "--rm",
        "#{ctx.repo}/app:1",
        "/opt/article_app/bin/article_app",
        "eval",
        "IO.puts(:ok)"
      ])

    assert run_out =~ "ok"
    assert owned_containers(owner) == []
  end

  test "a failing Dockerfile.build names the step, shows the engine's error, leaves nothing",
       ctx do
    path = Path.join(ctx.dir, "Dockerfile.build")
    File.write!(path, String.replace(File.read!(path), "RUN mix release", "RUN false"))

    %{out: out, status: status, owner: owner} = flow(ctx, ["--tag", "#{ctx.repo}/app:1"])
    assert status != 0
    assert out =~ "building the release image"
    assert out =~ "returned a non-zero code: 1"
    refute image_exists?("#{ctx.repo}/app:1")
    assert owned_containers(owner) == []
  end

  test "a failing final Dockerfile puts the tags back: the build tag names its old image", ctx do
    # The tags before the run: the build tag names some image, the final tags none.
    old = image_inspect!("docker-release-test/minbase:bookworm", "{{.Id}}")
    docker!(["tag", "docker-release-test/minbase:bookworm", "#{ctx.repo}-build:t"])
    path = Path.join(ctx.dir, "Dockerfile")
    File.write!(path, File.read!(path) <> "RUN false\n")

    %{out: out, status: status, owner: owner} =
      flow(ctx, ["--tag", "#{ctx.repo}/app:1", "--tag", "#{ctx.repo}/app:latest"])

    assert status != 0, out
    # The build image was built and tagged, then the final build failed.
    assert out =~ "creating a temporary container", out
    assert out =~ "returned a non-zero code: 1", out
    refute out =~ "could not put back", out
    assert image_inspect!("#{ctx.repo}-build:t", "{{.Id}}") == old
    refute image_exists?("#{ctx.repo}/app:1")
    refute image_exists?("#{ctx.repo}/app:latest")
    assert owned_containers(owner) == []
  end

  test "a build image without the tarball is a clear error and leaves no container", ctx do
    path = Path.join(ctx.dir, "Dockerfile.build")

    File.write!(
      path,
      String.replace(File.read!(path), "/tmp/article_app.tar.gz", "/tmp/elsewhere.tar.gz")
    )

    %{out: out, status: status, owner: owner} = flow(ctx, ["--tag", "#{ctx.repo}/app:1"])
    assert status != 0
    assert out =~ "has no /tmp/article_app.tar.gz"
    assert out =~ "Dockerfile.build must leave the release tarball there"
    refute image_exists?("#{ctx.repo}/app:1")
    assert owned_containers(owner) == []
  end

  test "a missing Dockerfile is refused before anything is built", ctx do
    {out, status} =
      mix_release(["--build-dockerfile", "Dockerfile.nope", "--tag", "#{ctx.repo}/app:1"],
        cd: ctx.dir
      )

    assert status != 0
    assert out =~ "Dockerfile.nope"
    refute out =~ "==> building"
  end
end
