defmodule WithDepsTest do
  use ExUnit.Case, async: true

  defp get(path) do
    {:ok, socket} =
      :gen_tcp.connect(~c"127.0.0.1", WithDeps.Server.port(), [:binary, active: false])

    :ok = :gen_tcp.send(socket, "GET #{path} HTTP/1.1\r\nhost: localhost\r\n\r\n")
    response = recv_all(socket, "")
    [head, body] = String.split(response, "\r\n\r\n", parts: 2)
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

  test "the path dependencies are real applications with 220 generated modules" do
    counts = for app <- WithDeps.dep_apps(), do: {app, length(Application.spec(app, :modules))}
    assert counts == [alpha: 61, beta: 61, gamma: 51, delta: 51]
    assert Beta.Mod007.value() == 2 * Alpha.Mod007.value()
    assert Delta.Mod050.value() == Gamma.Mod050.value() + 50
    assert Alpha.Mod060.name() == "alpha/060"
  end

  test "GET / reports the greeting, version, OTP release, dependency modules and their sum" do
    otp = :erlang.system_info(:otp_release)

    assert get("/") ==
             {"HTTP/1.1 200 OK",
              "hello from with_deps 0.1.0 on OTP #{otp}, modules: 224, sum: 14415\n"}
  end

  test "GET /otp answers the OTP release, GET /health ok, other paths 404" do
    assert get("/otp") == {"HTTP/1.1 200 OK", List.to_string(:erlang.system_info(:otp_release))}
    assert get("/health") == {"HTTP/1.1 200 OK", "ok"}
    assert {"HTTP/1.1 404 Not Found", _} = get("/nope")
  end
end
