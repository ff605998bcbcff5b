defmodule Web.Server do
  @moduledoc """
  A tiny HTTP/1.1 server on `:gen_tcp` (the approach of examples/hello): one acceptor,
  one process per connection, one request per connection (`Connection: close`).
  """
  use GenServer
  require Logger

  @recv_timeout 5_000

  def start_link(opts), do: GenServer.start_link(__MODULE__, opts, name: __MODULE__)

  @doc "The port actually listened on (useful when configured with port 0)."
  def port, do: GenServer.call(__MODULE__, :port)

  @impl true
  def init(opts) do
    tcp_opts = [:binary, packet: :http_bin, active: false, reuseaddr: true, backlog: 128]
    {:ok, listen} = :gen_tcp.listen(Keyword.fetch!(opts, :port), tcp_opts)
    {:ok, port} = :inet.port(listen)
    spawn_link(fn -> accept_loop(listen) end)
    Logger.info("web listening on port #{port}")
    {:ok, %{listen: listen, port: port}}
  end

  @impl true
  def handle_call(:port, _from, state), do: {:reply, state.port, state}

  defp accept_loop(listen) do
    case :gen_tcp.accept(listen) do
      {:ok, socket} ->
        {:ok, pid} =
          Task.Supervisor.start_child(Web.ConnectionSupervisor, fn ->
            receive do: (:go -> serve(socket))
          end)

        :ok = :gen_tcp.controlling_process(socket, pid)
        send(pid, :go)

      {:error, :closed} ->
        exit(:normal)

      {:error, reason} ->
        Logger.warning("accept failed: #{inspect(reason)}")
    end

    accept_loop(listen)
  end

  defp serve(socket) do
    {status, body} =
      case :gen_tcp.recv(socket, 0, @recv_timeout) do
        {:ok, {:http_request, :GET, {:abs_path, path}, _vsn}} ->
          if skip_headers(socket) == :ok, do: route(path), else: {400, "bad request\n"}

        {:ok, {:http_request, _method, _uri, _vsn}} ->
          {405, "method not allowed\n"}

        _other ->
          {400, "bad request\n"}
      end

    :gen_tcp.send(socket, [
      "HTTP/1.1 #{status} #{reason(status)}\r\n",
      "content-type: text/plain; charset=utf-8\r\n",
      "content-length: #{byte_size(body)}\r\n",
      "connection: close\r\n\r\n",
      body
    ])

    :gen_tcp.close(socket)
  end

  defp skip_headers(socket) do
    case :gen_tcp.recv(socket, 0, @recv_timeout) do
      {:ok, :http_eoh} -> :ok
      {:ok, {:http_header, _, _, _, _}} -> skip_headers(socket)
      _other -> :error
    end
  end

  defp route(path) do
    case path |> String.split("?", parts: 2) |> hd() do
      "/" -> {200, Web.summary()}
      # No trailing newline: easy to compare in tests.
      "/otp" -> {200, List.to_string(:erlang.system_info(:otp_release))}
      "/health" -> {200, "ok"}
      _ -> {404, "not found\n"}
    end
  end

  defp reason(200), do: "OK"
  defp reason(400), do: "Bad Request"
  defp reason(404), do: "Not Found"
  defp reason(405), do: "Method Not Allowed"
end
