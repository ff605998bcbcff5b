defmodule DockerRelease.E2E.SshServer do
  @moduledoc """
  A real SSH server for `ssh://` engine endpoints: Debian's dropbear on a free 127.0.0.1 port,
  under nss_wrapper so that the login user's home (where dropbear reads `authorized_keys`) is
  a temporary directory instead of the machine's `/root`. Logging in runs commands as the
  test's user on this machine, so `docker system dial-stdio` there reaches the real engine.

  The client is the real OpenSSH `ssh`; its configuration (key, known host) comes from a file,
  which a small `ssh` on PATH passes with `-F` (and logs the arguments it was given).
  """

  import ExUnit.Assertions

  @doc """
  Starts the server. Returns `%{port: port, user: user, path: dir_for_PATH, args_log: file,
  known: key_file}`; the server stops with the calling test.
  """
  def start!(dir) do
    tools = for t <- ~w(dropbear dropbearkey ssh ssh-keygen), do: {t, find!(t)}
    tool = &Keyword.fetch!(Enum.map(tools, fn {k, v} -> {String.to_atom(k), v} end), &1)

    nss =
      Enum.find(
        Path.wildcard("/usr/lib/*/libnss_wrapper.so") ++ ["/usr/lib/libnss_wrapper.so"],
        &File.exists?/1
      ) || flunk("libnss_wrapper.so is missing: apt-get install libnss-wrapper")

    home = Path.join(dir, "home")
    File.mkdir_p!(Path.join(home, ".ssh"))
    File.chmod!(home, 0o700)
    File.chmod!(Path.join(home, ".ssh"), 0o700)
    key = Path.join(dir, "id")
    {_, 0} = System.cmd(tool.(:"ssh-keygen"), ["-q", "-t", "ed25519", "-N", "", "-f", key])

    {_, 0} =
      System.cmd(tool.(:"ssh-keygen"), ["-q", "-t", "ed25519", "-N", "", "-f", key <> "-other"])

    keys = Path.join(home, ".ssh/authorized_keys")
    File.cp!(key <> ".pub", keys)
    File.chmod!(keys, 0o600)

    {user, uid, gid} = whoami()
    File.write!(Path.join(dir, "passwd"), "#{user}:x:#{uid}:#{gid}:#{user}:#{home}:/bin/sh\n")
    File.write!(Path.join(dir, "group"), "#{user}:x:#{gid}:\n")

    hostkey = Path.join(dir, "hostkey")

    {_, 0} =
      System.cmd(tool.(:dropbearkey), ["-t", "ed25519", "-f", hostkey], stderr_to_stdout: true)

    {pub, 0} = System.cmd(tool.(:dropbearkey), ["-y", "-f", hostkey], stderr_to_stdout: true)
    [host_pub] = for l <- String.split(pub, "\n"), String.starts_with?(l, "ssh-"), do: l

    port = DockerRelease.E2E.free_port()
    log = Path.join(dir, "dropbear.log")

    env = [
      {"LD_PRELOAD", nss},
      {"NSS_WRAPPER_PASSWD", Path.join(dir, "passwd")},
      {"NSS_WRAPPER_GROUP", Path.join(dir, "group")},
      # The remote `docker` must use the default engine, whatever this test sets.
      {"DOCKER_HOST", nil},
      {"DOCKER_CONTEXT", nil}
    ]

    # -F foreground, -E log to stderr, -e pass this environment (PATH with docker) on,
    # -s no passwords.
    server =
      Port.open({:spawn_executable, System.find_executable("sh")}, [
        :binary,
        :exit_status,
        args: [
          "-c",
          ~s(exec "$0" "$@" >#{log} 2>&1),
          tool.(:dropbear),
          "-F",
          "-E",
          "-e",
          "-s",
          "-r",
          hostkey,
          "-p",
          "127.0.0.1:#{port}",
          "-P",
          Path.join(dir, "dropbear.pid")
        ],
        env:
          Enum.map(env, fn {k, v} ->
            {String.to_charlist(k), if(v, do: String.to_charlist(v), else: false)}
          end)
      ])

    {:os_pid, os_pid} = Port.info(server, :os_pid)
    ExUnit.Callbacks.on_exit(fn -> System.cmd("kill", ["#{os_pid}"]) end)

    known = Path.join(dir, "known_hosts")
    File.write!(known, "[127.0.0.1]:#{port} #{host_pub}\n")
    config = Path.join(dir, "ssh_config")

    File.write!(config, """
    Host *
      IdentityFile #{key}
      IdentitiesOnly yes
      UserKnownHostsFile #{known}
      StrictHostKeyChecking yes
      BatchMode yes
    """)

    bin = Path.join(dir, "bin")
    File.mkdir_p!(bin)
    args_log = Path.join(dir, "ssh-args.log")
    shim = Path.join(bin, "ssh")

    File.write!(shim, """
    #!/bin/sh
    echo "$@" >> #{args_log}
    exec #{tool.(:ssh)} -F "${DR_TEST_SSH_CONFIG:-#{config}}" "$@"
    """)

    File.chmod!(shim, 0o755)
    wait_listening!(port, log)

    other_config = Path.join(dir, "ssh_config_other_key")
    File.write!(other_config, String.replace(File.read!(config), key, key <> "-other"))

    %{port: port, user: user, path: bin, args_log: args_log, other_config: other_config}
  end

  defp find!(tool) do
    System.find_executable(tool) ||
      flunk("#{tool} is missing: apt-get install dropbear-bin openssh-client")
  end

  defp whoami do
    {user, 0} = System.cmd("id", ["-un"])
    {uid, 0} = System.cmd("id", ["-u"])
    {gid, 0} = System.cmd("id", ["-g"])
    {String.trim(user), String.trim(uid), String.trim(gid)}
  end

  defp wait_listening!(port, log) do
    DockerRelease.E2E.wait_until("dropbear on 127.0.0.1:#{port} (#{log})", 10_000, fn ->
      case :gen_tcp.connect({127, 0, 0, 1}, port, [:binary, active: false], 500) do
        {:ok, s} ->
          :gen_tcp.close(s)
          true

        _ ->
          false
      end
    end)
  end
end
