defmodule WithDeps do
  @moduledoc """
  What `GET /` reports: that the path dependencies are in the release and work.
  """

  @dep_apps [:alpha, :beta, :gamma, :delta]

  @doc "The applications of the local path dependencies."
  def dep_apps, do: @dep_apps

  @doc """
  How many modules of the dependencies are loaded (loading them if needed; in a release they
  are all loaded at boot).
  """
  def loaded_dep_modules do
    @dep_apps
    |> Enum.flat_map(&Application.spec(&1, :modules))
    |> Enum.count(&Code.ensure_loaded?/1)
  end

  @doc "The sum of `value/0` over every generated module (alpha 1830 + beta 3660 + gamma 3825 + delta 5100)."
  def sum, do: Alpha.sum() + Beta.sum() + Gamma.sum() + Delta.sum()

  @doc "The body of `GET /`."
  def summary do
    vsn = Application.spec(:with_deps, :vsn)
    otp = :erlang.system_info(:otp_release)

    "#{WithDeps.Greeting.text()} from with_deps #{vsn} on OTP #{otp}, " <>
      "modules: #{loaded_dep_modules()}, sum: #{sum()}\n"
  end
end
