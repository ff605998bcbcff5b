defmodule Mix.Tasks.Compile.DockerReleaseNative do
  @moduledoc """
  Installs docker_release's NIF as `priv/native/libdocker_release_nif.so` in the
  application's build directory.

  Listed in `compilers:` after `:elixir`, so it also runs when docker_release is a dependency.
  By default it installs the prebuilt library for this machine's target, verified against the
  package's checksum file (see the README, "Install"); with `DOCKER_RELEASE_BUILD=1`, or when
  no prebuilt library exists for the target, it builds one with `cargo build --release` (Rust
  1.91 or newer and a C compiler), again only when a file under `native/`, `Cargo.toml` or
  `Cargo.lock` is newer than the installed library.

  It never fails `mix compile` for a missing toolchain, an unreachable download or a
  checksum that does not match: it says so, and `mix docker.release` tries again (and
  fails with that message) when it needs the library.
  """
  use Mix.Task.Compiler

  alias DockerRelease.NativeLib

  @impl true
  def run(_args) do
    dest = Path.join([Mix.Project.app_path(), "priv/native/libdocker_release_nif.so"])

    case NativeLib.ensure(dest) do
      :noop ->
        {:noop, []}

      {:installed, what} ->
        Mix.shell().info("==> docker_release: installed #{what}")
        {:ok, []}

      {:error, :build, message} ->
        Mix.raise(message)

      {:error, _kind, message} ->
        Mix.shell().error(
          "warning: docker_release's NIF is not installed: #{message}. " <>
            "`mix docker.release` tries again when it needs it."
        )

        {:ok, []}
    end
  end
end
