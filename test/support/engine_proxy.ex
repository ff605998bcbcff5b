defmodule DockerRelease.E2E.EngineProxy do
  @moduledoc """
  A proxy of the tests' own in front of the real engine (`/var/run/docker.sock`): listens on
  a Unix socket, or on a TLS port of 127.0.0.1 that requires a client certificate, and passes
  every connection through, except those whose request line matches a rule:

    * `:swallow` - read the request (and anything after it), never answer: a hung engine;
    * `{:status, code}` - answer `code` with a JSON message, without asking the engine.

  Every request line seen is sent to the owner as `{:engine_proxy, line}`.
  """

  @engine "/var/run/docker.sock"

  @doc """
  Starts the proxy. `listen` is `{:unix, path}` or `{:tls, ssl_options}` (a free port of
  127.0.0.1 is chosen); `rules` is a list of `{regex, fault}`. Returns `%{pid: pid, port:
  port | nil, path: path | nil}`; the proxy stops with the calling test.
  """
  def start!(listen, rules, owner \\ self()) do
    unless File.exists?(@engine),
      do: raise("the engine proxy needs a Docker engine at #{@engine}")

    {mod, lsock, info} =
      case listen do
        {:unix, path} ->
          File.rm(path)

          {:ok, l} =
            :gen_tcp.listen(0, [
              :binary,
              ifaddr: {:local, path},
              active: false,
              packet: :raw,
              # A client's half-close (a hijacked `docker run` done sending) must not close
              # the socket: the engine's answer still comes back through it.
              exit_on_close: false
            ])

          {:gen_tcp, l, %{path: path, port: nil}}

        {:tls, ssl_opts} ->
          {:ok, _} = Application.ensure_all_started(:ssl)

          {:ok, l} =
            :ssl.listen(
              0,
              [:binary, ip: {127, 0, 0, 1}, active: false, packet: :raw, reuseaddr: true] ++
                [exit_on_close: false] ++
                ssl_opts
            )

          {:ok, {_, port}} = :ssl.sockname(l)
          {:ssl, l, %{path: nil, port: port}}
      end

    pid = spawn(fn -> accept_loop(mod, lsock, rules, owner) end)

    case mod do
      :gen_tcp -> :ok = :gen_tcp.controlling_process(lsock, pid)
      :ssl -> :ok = :ssl.controlling_process(lsock, pid)
    end

    ExUnit.Callbacks.on_exit(fn ->
      Process.exit(pid, :kill)
      if info.path, do: File.rm(info.path)
    end)

    Map.put(info, :pid, pid)
  end

  defp accept_loop(mod, lsock, rules, owner) do
    case accept(mod, lsock) do
      {:ok, client} ->
        handler = spawn(fn -> receive(do: (:go -> serve(mod, client, rules, owner))) end)
        give(mod, client, handler)
        send(handler, :go)
        accept_loop(mod, lsock, rules, owner)

      {:error, :closed} ->
        :ok

      {:error, _handshake_failure} ->
        # A client the TLS listener refused (no or a wrong client certificate): go on.
        accept_loop(mod, lsock, rules, owner)
    end
  end

  defp accept(:gen_tcp, lsock), do: :gen_tcp.accept(lsock)

  defp accept(:ssl, lsock) do
    with {:ok, t} <- :ssl.transport_accept(lsock), do: :ssl.handshake(t, 10_000)
  end

  defp give(:gen_tcp, s, pid), do: :gen_tcp.controlling_process(s, pid)
  defp give(:ssl, s, pid), do: :ssl.controlling_process(s, pid)

  defp serve(mod, client, rules, owner) do
    case read_head(mod, client, "") do
      {:ok, head} ->
        line = head |> String.split("\r\n", parts: 2) |> hd()
        send(owner, {:engine_proxy, line})

        case Enum.find(rules, fn {re, _} -> line =~ re end) do
          {_, :swallow} ->
            drain(mod, client)

          {_, {:status, code}} ->
            body = ~s({"message":"engine proxy: #{code} on purpose"})

            mod.send(client, [
              "HTTP/1.1 #{code} Fault\r\nContent-Type: application/json\r\n",
              "Api-Version: 1.41\r\nContent-Length: #{byte_size(body)}\r\n",
              "Connection: close\r\n\r\n",
              body
            ])

            mod.close(client)

          nil ->
            relay(mod, client, head)
        end

      :closed ->
        :ok
    end
  end

  defp read_head(mod, s, acc) do
    if String.contains?(acc, "\r\n\r\n") do
      {:ok, acc}
    else
      case mod.recv(s, 0, 60_000) do
        {:ok, data} -> read_head(mod, s, acc <> data)
        {:error, _} -> :closed
      end
    end
  end

  defp drain(mod, s) do
    case mod.recv(s, 0, :infinity) do
      {:ok, _} -> drain(mod, s)
      {:error, _} -> :ok
    end
  end

  defp relay(mod, client, head) do
    {:ok, engine} = :gen_tcp.connect({:local, @engine}, 0, [:binary, active: true, packet: :raw])

    :ok = :gen_tcp.send(engine, head)
    :ok = setopts(mod, client, active: true)
    relay_loop(mod, client, engine)
  end

  defp relay_loop(mod, client, engine) do
    receive do
      {:tcp, ^engine, data} ->
        _ = mod.send(client, data)
        relay_loop(mod, client, engine)

      {:tcp_closed, ^engine} ->
        mod.close(client)

      {tag, ^client, data} when tag in [:tcp, :ssl] ->
        :ok = :gen_tcp.send(engine, data)
        relay_loop(mod, client, engine)

      {tag, ^client} when tag in [:tcp_closed, :ssl_closed] ->
        # The client is done sending (a hijacked `docker run` half-closes its side): pass the
        # end on and keep relaying the engine's answer until the engine closes.
        _ = :gen_tcp.shutdown(engine, :write)
        drain_engine(mod, client, engine)

      {tag, _, _} when tag in [:tcp_error, :ssl_error] ->
        mod.close(client)
        :gen_tcp.close(engine)
    end
  end

  defp drain_engine(mod, client, engine) do
    receive do
      {:tcp, ^engine, data} ->
        _ = mod.send(client, data)
        drain_engine(mod, client, engine)

      {tag, ^engine} when tag in [:tcp_closed, :tcp_error] ->
        mod.close(client)
    after
      60_000 -> :gen_tcp.close(engine)
    end
  end

  defp setopts(:gen_tcp, s, opts), do: :inet.setopts(s, opts)
  defp setopts(:ssl, s, opts), do: :ssl.setopts(s, opts)

  @doc """
  A TLS endpoint for the engine made by `socat` (OpenSSL), requiring the client certificate of
  `tls` (from `make_tls!/1`), as GitLab's docker-in-docker port 2376 does. Unlike the `:ssl`
  listener of `start!/3`, it keeps a TLS half-close: a hijacked `docker run` that is done
  sending (`close_notify`) still gets the container's output, which Erlang's `:ssl` would cut.
  Returns the port on 127.0.0.1; socat stops with the calling test.
  """
  def start_tls_socat!(tls) do
    socat =
      System.find_executable("socat") ||
        raise "socat is not installed (apt-get install socat; scripts/setup.sh installs it)"

    port = DockerRelease.E2E.free_port()
    ca = Path.join(tls.cert_path, "ca.pem")

    listen =
      "OPENSSL-LISTEN:#{port},bind=127.0.0.1,reuseaddr,fork," <>
        "cert=#{tls.server[:certfile]},key=#{tls.server[:keyfile]},cafile=#{ca},verify=1"

    p =
      Port.open({:spawn_executable, socat}, [
        :binary,
        :exit_status,
        :stderr_to_stdout,
        # -t: after the client's half-close, wait for the engine's answer (socat's default of
        # 0.5 s would cut a container's output).
        args: ["-t", "600", listen, "UNIX-CONNECT:#{@engine}"]
      ])

    {:os_pid, os_pid} = Port.info(p, :os_pid)
    ExUnit.Callbacks.on_exit(fn -> System.cmd("kill", ["#{os_pid}"]) end)
    wait_listening!(port, 50)
    port
  end

  defp wait_listening!(port, 0), do: raise("socat did not listen on 127.0.0.1:#{port}")

  defp wait_listening!(port, n) do
    case :gen_tcp.connect({127, 0, 0, 1}, port, [], 200) do
      {:ok, s} ->
        :gen_tcp.close(s)

      {:error, _} ->
        Process.sleep(100)
        wait_listening!(port, n - 1)
    end
  end

  @doc """
  A CA, a server certificate for 127.0.0.1 and a client certificate, made with `openssl` in
  `dir`. Returns `%{server: ssl_options, cert_path: dir_for_DOCKER_CERT_PATH}`; the
  `DOCKER_CERT_PATH` directory holds `ca.pem`, `cert.pem` and `key.pem`, as `docker context`
  and GitLab's docker-in-docker lay them out.
  """
  def make_tls!(dir) do
    openssl = System.find_executable("openssl") || raise "openssl is not installed"
    f = &Path.join(dir, &1)

    run = fn args ->
      {out, status} = System.cmd(openssl, args, stderr_to_stdout: true)
      if status != 0, do: raise("openssl #{Enum.join(args, " ")} failed:\n#{out}")
    end

    run.(
      ~w(req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=docker_release-test-CA) ++
        ["-keyout", f.("ca.key"), "-out", f.("ca.crt")]
    )

    for {name, ext} <- [
          server: "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
          client: "extendedKeyUsage=clientAuth\n"
        ] do
      File.write!(f.("#{name}.ext"), "basicConstraints=CA:FALSE\n" <> ext)

      run.(
        ~w(req -newkey rsa:2048 -nodes -subj /CN=#{name}) ++
          ["-keyout", f.("#{name}.key"), "-out", f.("#{name}.csr")]
      )

      run.(
        ~w(x509 -req -days 2 -CAcreateserial) ++
          ["-in", f.("#{name}.csr"), "-CA", f.("ca.crt"), "-CAkey", f.("ca.key")] ++
          ["-out", f.("#{name}.crt"), "-extfile", f.("#{name}.ext")]
      )
    end

    cert_path = f.("client")
    File.mkdir_p!(cert_path)
    File.cp!(f.("ca.crt"), Path.join(cert_path, "ca.pem"))
    File.cp!(f.("client.crt"), Path.join(cert_path, "cert.pem"))
    File.cp!(f.("client.key"), Path.join(cert_path, "key.pem"))

    %{
      server: [
        certfile: String.to_charlist(f.("server.crt")),
        keyfile: String.to_charlist(f.("server.key")),
        cacertfile: String.to_charlist(f.("ca.crt")),
        verify: :verify_peer,
        fail_if_no_peer_cert: true
      ],
      cert_path: cert_path
    }
  end
end
