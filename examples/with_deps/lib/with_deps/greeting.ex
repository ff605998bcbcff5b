defmodule WithDeps.Greeting do
  @moduledoc "The first word of `GET /`. Tests edit this one line to see an app-only change."

  def text, do: "hello"
end
