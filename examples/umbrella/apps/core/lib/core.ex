defmodule Core do
  @moduledoc "The umbrella's library app: no processes, one function."

  @doc "What the web app reports that core says."
  def hello, do: "hello from core"
end
