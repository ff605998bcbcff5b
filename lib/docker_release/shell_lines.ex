defmodule DockerRelease.ShellLines do
  @moduledoc false
  # A collectable that forwards command output to Mix.shell(), one line per call.
  defstruct []

  defimpl Collectable do
    def into(original) do
      fun = fn
        acc, {:cont, chunk} ->
          {lines, rest} = split(acc <> chunk)
          Enum.each(lines, &Mix.shell().info/1)
          rest

        acc, :done ->
          if acc != "", do: Mix.shell().info(acc)
          original

        _acc, :halt ->
          :ok
      end

      {"", fun}
    end

    defp split(text) do
      parts = String.split(text, "\n")
      {Enum.drop(parts, -1), List.last(parts)}
    end
  end
end
