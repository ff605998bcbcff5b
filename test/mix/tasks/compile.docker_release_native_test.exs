defmodule Mix.Tasks.Compile.DockerReleaseNativeTest do
  # Our cargo compiler, run as a user's `mix compile` runs it: a separate OS process, with a
  # build path of its own so that it finds no library installed and calls cargo (on the
  # target dir the suite's own compile uses).
  use ExUnit.Case, async: false

  @root Path.expand("../../..", __DIR__)
  @lib "lib/docker_release/priv/native/libdocker_release_nif.so"

  setup do
    build = Path.join(System.tmp_dir!(), "dr-native-build-#{System.unique_integer([:positive])}")
    on_exit(fn -> File.rm_rf!(build) end)
    %{build: build}
  end

  defp mix_compile!(build, env) do
    {out, status} =
      System.cmd("mix", ["compile"],
        cd: @root,
        env: [{"MIX_ENV", "dev"}, {"MIX_BUILD_PATH", build}, {"DOCKER_RELEASE_BUILD", "1"} | env],
        stderr_to_stdout: true
      )

    assert status == 0, out
    assert out =~ "==> docker_release: building its NIF from source", out
    assert File.regular?(Path.join(build, @lib)), out
    out
  end

  # cargo's own lines ("   Compiling ring v0.17.14"), not Mix's ("Compiling 9 files (.ex)").
  defp crates_compiled(out), do: Regex.scan(~r/^\s+Compiling (\S+) v\d/m, out)

  test "a new SOURCE_DATE_EPOCH (CI sets one per commit) makes cargo rebuild nothing", ctx do
    epoch = System.os_time(:second)
    mix_compile!(ctx.build, [{"SOURCE_DATE_EPOCH", "#{epoch}"}])

    # The library is removed, so the compiler runs cargo again, with another value.
    File.rm!(Path.join(ctx.build, @lib))
    out = mix_compile!(ctx.build, [{"SOURCE_DATE_EPOCH", "#{epoch + 1}"}])
    assert crates_compiled(out) == [], out
    assert out =~ ~r/Finished `release` profile/, out
  end
end
