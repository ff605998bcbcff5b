defmodule Mix.Tasks.Compile.DockerReleaseNative do
  @moduledoc """
  Builds docker_release's Rust NIF with `cargo build --release` and installs it as
  `priv/native/libdocker_release_nif.so` in the application's build directory.

  Listed in `compilers:` after `:elixir`, so it also runs when docker_release is a dependency.
  It rebuilds only when a file under `native/`, `Cargo.toml` or `Cargo.lock` is newer than the
  installed library. Needs `cargo` (Rust 1.91 or newer, e.g. from https://rustup.rs).
  """
  use Mix.Task.Compiler

  @lib "libdocker_release_nif.so"

  @impl true
  def run(_args) do
    root = Path.expand("../../..", __DIR__)
    dest_dir = Path.join(Mix.Project.app_path(), "priv/native")
    dest = Path.join(dest_dir, @lib)

    if stale?(root, dest) do
      build!(root)
      File.mkdir_p!(dest_dir)
      # Remove before copying: overwriting a loaded library in place can crash a running VM.
      File.rm(dest)
      File.cp!(Path.join([target_dir(root), "release", @lib]), dest)
      {:ok, []}
    else
      {:noop, []}
    end
  end

  defp stale?(root, dest) do
    case File.stat(dest, time: :posix) do
      {:ok, %{mtime: built}} ->
        sources =
          Path.wildcard(Path.join(root, "native/**/*.{rs,toml}")) ++
            Enum.map(["Cargo.toml", "Cargo.lock"], &Path.join(root, &1))

        Enum.any?(sources, fn src ->
          match?({:ok, %{mtime: t}} when t > built, File.stat(src, time: :posix))
        end)

      {:error, _} ->
        true
    end
  end

  defp target_dir(root), do: System.get_env("CARGO_TARGET_DIR") || Path.join(root, "target")

  defp build!(root) do
    cargo =
      System.find_executable("cargo") ||
        Enum.find(
          [Path.expand("~/.cargo/bin/cargo")],
          &File.exists?/1
        ) ||
        Mix.raise("""
        docker_release needs Rust to build its native code, and `cargo` was not found on PATH.
        Install Rust 1.91 or newer (https://rustup.rs: `curl https://sh.rustup.rs -sSf | sh`),
        then open a new shell (or `. ~/.cargo/env`) and run the command again.
        """)

    Mix.shell().info("==> docker_release: building native code (cargo build --release)")

    args = ["build", "--release", "--locked", "-p", "docker_release_nif"]

    case System.cmd(cargo, args, cd: root, stderr_to_stdout: true, into: IO.stream(:stdio, :line)) do
      {_, 0} -> :ok
      {_, status} -> Mix.raise("cargo build failed (exit status #{status}); see the output above")
    end
  end
end
