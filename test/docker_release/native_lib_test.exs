defmodule DockerRelease.NativeLibTest do
  # RustlerPrecompiled's naming, so that it can replace DockerRelease.NativeLib later.
  use ExUnit.Case, async: true

  alias DockerRelease.NativeLib

  test "the VM's architecture string becomes the Rust target of the artifact" do
    for {arch, triple} <- [
          {~c"x86_64-pc-linux-gnu", "x86_64-unknown-linux-gnu"},
          {~c"aarch64-unknown-linux-gnu", "aarch64-unknown-linux-gnu"},
          {~c"x86_64-alpine-linux-musl", "x86_64-unknown-linux-musl"},
          {~c"aarch64-alpine-linux-musl", "aarch64-unknown-linux-musl"},
          {~c"x86_64-redhat-linux", "x86_64-unknown-linux-gnu"},
          {~c"aarch64-apple-darwin23.1.0", "aarch64-apple-darwin"},
          {~c"arm-apple-darwin21.6.0", "aarch64-apple-darwin"},
          {~c"x86_64-apple-darwin21.6.0", "x86_64-apple-darwin"}
        ] do
      assert NativeLib.target(arch, "2.16") == {:ok, "2.16", triple}, List.to_string(arch)
    end

    assert {:error, "no prebuilt NIF is made for this system (win32)"} =
             NativeLib.target(~c"win32", "2.16")
  end

  test "a newer VM loads the newest older NIF version; an older one has none" do
    assert {:ok, "2.16", _} = NativeLib.target(~c"x86_64-pc-linux-gnu", "2.17")
    assert {:error, message} = NativeLib.target(~c"x86_64-pc-linux-gnu", "2.15")
    assert message =~ "NIF version 2.15 is older than 2.16"
  end

  test "artifact names follow RustlerPrecompiled" do
    assert NativeLib.artifact_name("2.16", "x86_64-unknown-linux-gnu", "1.2.3") ==
             "libdocker_release_nif-v1.2.3-nif-2.16-x86_64-unknown-linux-gnu.so.tar.gz"
  end

  test "DOCKER_RELEASE_BUILD asks for a source build; this checkout lists no prebuilt NIF" do
    assert NativeLib.plan(&%{"DOCKER_RELEASE_BUILD" => "1"}[&1]) ==
             {:source, "DOCKER_RELEASE_BUILD is set"}

    assert NativeLib.checksums() == %{}
    assert {:source, why} = NativeLib.plan(fn _ -> nil end)
    assert why =~ ~r/^docker_release \S+ has no prebuilt NIF for \S+ \(NIF 2\.16\)$/
  end

  test "the default base URL is the release page of this version" do
    config = Mix.Project.config()

    assert NativeLib.default_base_url() ==
             "#{config[:source_url]}/releases/download/v#{config[:version]}"

    assert config[:package][:links]["GitHub"] == config[:source_url]
  end
end
