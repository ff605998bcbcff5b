defmodule Web do
  @moduledoc "What `GET /` answers: the OTP release and what the `core` app says."

  @doc "The body of `GET /`."
  def summary do
    "umbrella web on OTP #{:erlang.system_info(:otp_release)}, core says #{Core.hello()}\n"
  end
end
