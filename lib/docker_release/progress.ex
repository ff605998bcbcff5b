defmodule DockerRelease.Progress do
  @moduledoc false
  # Byte progress of long steps (the upload into a builder and reads from it, layer writing,
  # engine load, archive writing, registry push), from the NIF's `{:bytes, step, done}`
  # messages (at most ten a second):
  #
  #   * on a terminal, one line that rewrites itself: `    app layer: 12.3 MB, 45.6 MB/s`;
  #     it is ended with a newline before anything else is printed;
  #   * off a terminal (CI logs), a plain line every `interval` seconds (default 10, or
  #     DOCKER_RELEASE_PROGRESS_EVERY) while a step runs longer than that;
  #   * quiet: nothing.
  #
  # Pure: `bytes/4`, `tick/2` and `interrupt/1` return the text to print and the new state;
  # `DockerRelease.await/2` prints it.

  defstruct mode: :plain,
            interval: 10_000,
            step: nil,
            started: 0,
            base: 0,
            done: 0,
            total: nil,
            live: false,
            printed: 0

  @type t :: %__MODULE__{}

  @doc "A progress state for `mode` (`:tty`, `:plain` or `:quiet`); `interval` in ms."
  def new(mode, interval \\ 10_000), do: %__MODULE__{mode: mode, interval: interval}

  @doc """
  The mode for the current shell: `:quiet` for `Mix.Shell.Quiet`, `:tty` when Mix prints to a
  terminal, else `:plain`. A terminal is what `elixir` saw at start: stdout and stderr both
  terminals turn ANSI on (`:io.columns/0` cannot tell under `-noshell` before OTP 26).
  """
  def mode do
    cond do
      Mix.shell() == Mix.Shell.Quiet -> :quiet
      Mix.shell() == Mix.Shell.IO and IO.ANSI.enabled?() -> :tty
      true -> :plain
    end
  end

  @doc """
  The interval of plain lines in ms, from DOCKER_RELEASE_PROGRESS_EVERY (seconds, `2` or `0.5`),
  default 10 s; at least 100 ms (progress messages come at most ten a second).
  """
  def interval(env \\ System.get_env("DOCKER_RELEASE_PROGRESS_EVERY")) do
    case env && Float.parse(env) do
      {n, ""} when n > 0 -> max(round(n * 1000), 100)
      _ -> 10_000
    end
  end

  @doc "`done` bytes (of `total`, if known) in `step` at monotonic time `now` (ms)."
  def bytes(%__MODULE__{} = s, step, done, total \\ nil, now) do
    {out, s} = if step != s.step, do: interrupt(s), else: {[], s}

    s =
      if step != s.step,
        do: %{s | step: step, started: now, printed: now, base: done, done: done, total: total},
        else: %{s | done: done, total: total}

    case s.mode do
      :tty -> {[out, "\r\e[2K", line(s, now)], %{s | live: true}}
      :plain -> plain(out, s, now)
      :quiet -> {[], s}
    end
  end

  @doc "Called about once a second: off a terminal, prints a line when one is due."
  def tick(%__MODULE__{step: nil} = s, _now), do: {[], s}
  def tick(%__MODULE__{mode: :plain} = s, now), do: plain([], s, now)
  def tick(s, _now), do: {[], s}

  @doc "Before another line is printed: ends a live line and forgets the step."
  def interrupt(%__MODULE__{live: true} = s), do: {"\n", %{s | live: false, step: nil}}
  def interrupt(s), do: {[], %{s | step: nil}}

  defp plain(out, s, now) do
    if now - s.started >= s.interval and now - s.printed >= s.interval,
      do: {[out, line(s, now), "\n"], %{s | printed: now}},
      else: {out, s}
  end

  @doc """
  One progress line.

      iex> s = %DockerRelease.Progress{step: "load", started: 0, done: 46_000_000, total: nil}
      iex> IO.iodata_to_binary(DockerRelease.Progress.line(s, 2_000))
      "    load: 46.0 MB, 23.0 MB/s"
      iex> IO.iodata_to_binary(DockerRelease.Progress.line(%{s | total: 91_800_000}, 2_000))
      "    load: 46.0 MB of 91.8 MB, 23.0 MB/s"
      iex> IO.iodata_to_binary(DockerRelease.Progress.line(s, 300))
      "    load: 46.0 MB"
  """
  def line(s, now) do
    of = if s.total, do: " of #{size(s.total)}", else: ""
    # The rate counts from the step's first message (`base`): a step resumed after another
    # line (the builder's reads between planning rounds) counts bytes from its start. No rate
    # until 0.5 s.
    rate =
      if now - s.started >= 500,
        do: [", ", size(round((s.done - s.base) * 1000 / (now - s.started))), "/s"],
        else: []

    ["    ", s.step, ": ", size(s.done), of, rate]
  end

  @doc """
  A size in the unit that shows it (SI, as `docker images` prints).

      iex> DockerRelease.Progress.size(812)
      "812 B"
      iex> DockerRelease.Progress.size(45_900)
      "45.9 kB"
      iex> DockerRelease.Progress.size(999_950)
      "1.0 MB"
      iex> DockerRelease.Progress.size(1_234_567_890)
      "1.2 GB"
  """
  def size(bytes) when bytes < 1000, do: "#{bytes} B"
  def size(bytes), do: scale(bytes / 1000, ~w(kB MB GB TB))

  defp scale(value, [unit]), do: "#{:erlang.float_to_binary(value, decimals: 1)} #{unit}"

  defp scale(value, [unit | bigger]) do
    if Float.round(value, 1) < 1000, do: scale(value, [unit]), else: scale(value / 1000, bigger)
  end
end
