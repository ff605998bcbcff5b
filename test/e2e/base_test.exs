defmodule DockerRelease.E2E.BaseTest do
  # `--base IMAGE` through the task: a base that can run the release is used, one that cannot is
  # refused with what is missing. Bases are made locally (debootstrap + import) and cached.
  use ExUnit.Case, async: false
  @moduletag :engine

  import DockerRelease.E2E
  import DockerRelease.E2E.Builder, only: [ensure_builder!: 1, example_copy!: 2]

  @bases [
    {"bookworm", "docker-release-test/minbase:bookworm", "base-files"},
    {"bookworm", "docker-release-test/minbase-ssl:bookworm", "libssl3,ca-certificates"},
    {"bullseye", "docker-release-test/minbase:bullseye", "base-files"}
  ]

  setup_all do
    script = Path.join(root(), "test/support/make-builder-image.sh")

    for {suite, tag, include} <- @bases do
      {out, status} =
        cmd("bash", [script, suite, tag], env: [{"BUILDER_INCLUDE", include}], timeout: 900)

      assert status == 0, out
    end

    repo = unique_repo("dr-e2e-base")
    on_exit(fn -> rm_images(["#{repo}/hello:ok", "#{repo}/hello:no"]) end)
    %{repo: repo}
  end

  test "a base with the release's libraries runs it, keeping the base's files", ctx do
    tag = "#{ctx.repo}/hello:ok"

    {out, _id} =
      mix_release!(["--base", "docker-release-test/minbase-ssl:bookworm", "--tag", tag])

    assert out =~ "checking the base against the release"

    {run, 0} =
      docker([
        "run",
        "--rm",
        tag,
        "eval",
        ~s[IO.puts(Base.encode16(:crypto.hash(:sha256, "abc"), case: :lower)); IO.puts(File.read!("/etc/debian_version"))]
      ])

    assert run =~ "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert run =~ ~r/^12\./m
    # The numeric non-root user, also on a base.
    assert image_inspect!(tag, "{{.Config.User}}") =~ ~r/^[1-9]\d*:\d+$/
  end

  test "a release built in a builder container goes on a base checked against the builder's files",
       ctx do
    # The release and its ELF files are read from the builder container (lazily, as the image is
    # planned); the base is checked against them: bookworm's builder fits a bookworm base,
    # trixie's needs a newer glibc than bookworm has.
    builder = ensure_builder!("bookworm")
    newer = ensure_builder!("trixie")
    dir = example_copy!("hello", "dr-e2e-base-builder")
    tag = "#{ctx.repo}/hello:ok"

    {out, _id} =
      mix_release!(
        [
          "--builder",
          builder,
          "--base",
          "docker-release-test/minbase-ssl:bookworm",
          "--tag",
          tag
        ],
        cd: dir,
        timeout: 600
      )

    assert out =~ "checking the base against the release"

    {run, 0} =
      docker(["run", "--rm", tag, "eval", ~s[IO.puts(File.read!("/etc/debian_version"))]])

    assert run =~ ~r/^12\./m

    {out, status} =
      mix_release(
        [
          "--builder",
          newer,
          "--base",
          "docker-release-test/minbase-ssl:bookworm",
          "--tag",
          "#{ctx.repo}/hello:no"
        ],
        cd: dir,
        timeout: 600
      )

    assert status != 0
    assert out =~ ~r/the release needs GLIBC_2\.(3[89]|4\d)/
    # The base's glibc as a whole (libc goes up to GLIBC_2.36 where libm stops at 2.35).
    assert out =~ "provides up to GLIBC_2.36 (glibc 2.36, Debian GNU/Linux 12 (bookworm))"
    refute image_exists?("#{ctx.repo}/hello:no")
  end

  test "a base without a needed library is refused, naming it and what to install", ctx do
    {out, status} =
      mix_release([
        "--base",
        "docker-release-test/minbase:bookworm",
        "--tag",
        "#{ctx.repo}/hello:no"
      ])

    assert status != 0
    assert out =~ "has no libcrypto.so.3"
    assert out =~ "libssl3"
    refute image_exists?("#{ctx.repo}/hello:no")
  end

  test "a base with an older glibc than the release needs is refused with the versions", ctx do
    {out, status} =
      mix_release([
        "--base",
        "docker-release-test/minbase:bullseye",
        "--tag",
        "#{ctx.repo}/hello:no"
      ])

    assert status != 0
    assert out =~ ~r/the release needs GLIBC_2\.3\d/
    assert out =~ "glibc 2.31"
    refute image_exists?("#{ctx.repo}/hello:no")
  end

  test "a base that does not exist is a clear error", ctx do
    {out, status} =
      mix_release(["--base", "docker-release-test/nope:1", "--tag", "#{ctx.repo}/hello:no"])

    assert status != 0
    assert out =~ "docker-release-test/nope:1"
  end
end
