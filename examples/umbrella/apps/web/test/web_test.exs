defmodule WebTest do
  use ExUnit.Case, async: true

  defp get(path) do
    {:ok, socket} = :gen_tcp.connect(~c"127.0.0.1", Web.Server.port(), [:binary, active: false])
    :ok = :gen_tcp.send(socket, "GET #{path} HTTP/1.1\r\nhost: localhost\r\n\r\n")
    [head, body] = socket |> recv_all("") |> String.split("\r\n\r\n", parts: 2)
    [status_line | _headers] = String.split(head, "\r\n")
    {status_line, body}
  end

  # The server closes the connection after one response.
  defp recv_all(socket, acc) do
    case :gen_tcp.recv(socket, 0, 5_000) do
      {:ok, data} -> recv_all(socket, acc <> data)
      {:error, :closed} -> acc
    end
  end

  test "GET / answers with the OTP release and what core says" do
    otp = :erlang.system_info(:otp_release)

    assert get("/") ==
             {"HTTP/1.1 200 OK", "umbrella web on OTP #{otp}, core says hello from core\n"}
  end

  test "GET /otp answers the OTP release; unknown paths are 404" do
    assert get("/otp") == {"HTTP/1.1 200 OK", List.to_string(:erlang.system_info(:otp_release))}
    assert {"HTTP/1.1 404 Not Found", _} = get("/nope")
  end
end
