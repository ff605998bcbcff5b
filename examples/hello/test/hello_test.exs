defmodule HelloTest do
  use ExUnit.Case, async: true

  defp request(raw) do
    {:ok, socket} = :gen_tcp.connect(~c"127.0.0.1", Hello.Server.port(), [:binary, active: false])
    :ok = :gen_tcp.send(socket, raw)
    {:ok, response} = recv_all(socket, "")
    [head, body] = String.split(response, "\r\n\r\n", parts: 2)
    [status_line | _headers] = String.split(head, "\r\n")
    {status_line, body}
  end

  # The server closes the connection after one response.
  defp recv_all(socket, acc) do
    case :gen_tcp.recv(socket, 0, 5_000) do
      {:ok, data} -> recv_all(socket, acc <> data)
      {:error, :closed} -> {:ok, acc}
    end
  end

  defp get(path), do: request("GET #{path} HTTP/1.1\r\nhost: localhost\r\n\r\n")

  test "listens on a random port in test" do
    assert Hello.Server.port() > 0
  end

  test "GET / greets with the version, OTP release and sha256 of the path" do
    {status, body} = get("/")
    assert status == "HTTP/1.1 200 OK"
    digest = :crypto.hash(:sha256, "/") |> Base.encode16(case: :lower)
    otp = :erlang.system_info(:otp_release)
    assert body == "hello from hello 0.1.0 on OTP #{otp}, sha256(path)=#{digest}\n"
  end

  test "GET /health answers ok" do
    assert get("/health") == {"HTTP/1.1 200 OK", "ok"}
  end

  test "unknown paths are 404, other methods 405, garbage 400" do
    assert {"HTTP/1.1 404 Not Found", _} = get("/nope")
    assert {"HTTP/1.1 405 Method Not Allowed", _} = request("POST / HTTP/1.1\r\n\r\n")
    assert {"HTTP/1.1 400 Bad Request", _} = request("\x00\x01 nonsense\r\n\r\n")
  end
end
