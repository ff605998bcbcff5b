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

  # Variables that a build script among our dependencies watches (`cargo:rerun-if-env-changed`
  # in target/release/build/*/output) but that cannot change the library, so cargo is not
  # given them: a new value would rebuild crates for nothing. SOURCE_DATE_EPOCH (which CI sets
  # per commit) is watched by cc for GCC's __DATE__ and __TIME__, which ring's C code does not
  # use; a new value rebuilt ring and the 8 crates above it (about a minute). The other two
  # only make cc's and libc's build scripts verbose.
  @cargo_env_dropped ~w(SOURCE_DATE_EPOCH CC_ENABLE_DEBUG_OUTPUT LIBC_BUILD_VERBOSE)

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

    opts = [
      cd: root,
      env: Enum.map(@cargo_env_dropped, &{&1, nil}),
      stderr_to_stdout: true,
      into: IO.stream(:stdio, :line)
    ]

    case System.cmd(cargo, args, opts) do
      {_, 0} -> :ok
      {_, status} -> Mix.raise("cargo build failed (exit status #{status}); see the output above")
    end
  end
end
