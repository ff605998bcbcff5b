defmodule DockerRelease.E2E.SchedulerTest do
  # A build through the library API, in this VM, must not hold a scheduler: the Rust work runs
  # on its own threads and only messages come back. While it runs, :erlang.system_monitor
  # reports every process or port that ran longer than 20 ms without being scheduled out.
  use ExUnit.Case, async: false
  import DockerRelease.E2E

  @moduletag :engine

  @long_ms 20
  @project [app: :hello, version: "0.1.0"]

  setup_all do
    tmp = tmp_dir!()
    rel = release_copy!(Path.join(tmp, "rel"))
    big = big_release_copy!(rel, Path.join(tmp, "big"))

    # The build's scratch files go under this project directory, not examples/hello.
    project_dir = Path.join(tmp, "project")
    File.mkdir_p!(project_dir)
    %{rel: rel, big: big, tmp: tmp, project_dir: project_dir}
  end

  setup do
    shell = Mix.shell()
    Mix.shell(Mix.Shell.Process)
    on_exit(fn -> Mix.shell(shell) end)
    :ok
  end

  test "a build of the hello release holds no scheduler", ctx do
    {outcome, ms, events} = monitored_build(ctx, ctx.rel, "small")
    assert outcome.archive_size > 1_000_000
    report("hello release", ms, events)
    assert ours(events) == [], "long schedules in the build's processes: #{inspect(ours(events))}"
  end

  test "a build of a release with a 200 MB file holds no scheduler", ctx do
    {outcome, ms, events} = monitored_build(ctx, ctx.big, "big")
    # Random bytes do not compress: the archive holds all of them.
    assert outcome.archive_size > 200 * 1024 * 1024
    report("hello release + 200 MB", ms, events)
    assert ours(events) == [], "long schedules in the build's processes: #{inspect(ours(events))}"
  end

  # Builds `rel` into an archive while the system monitor watches; returns the outcome, the
  # build's wall time and every long_schedule event seen during the build.
  defp monitored_build(ctx, rel, name) do
    output = Path.join(ctx.tmp, "#{name}.tar")

    config =
      DockerRelease.Config.new!(
        @project,
        [from_release: rel, output: output, tags: ["dr-e2e/hello:sched"]],
        ctx.project_dir
      )

    # Config.new! has loaded the NIF (it parses the tags with it): loading is not measured.
    ticker = start_ticker()
    previous = :erlang.system_monitor(self(), [{:long_schedule, @long_ms}])

    {micros, result} =
      try do
        :timer.tc(fn -> DockerRelease.build(config, @project) end)
      after
        restore_monitor(previous)
      end

    lateness = stop_ticker(ticker)
    assert {:ok, outcome} = result
    assert outcome.archive == output
    assert File.exists?(output)
    IO.puts("\n#{name}: a process sleeping 5 ms at a time woke up at most #{lateness} ms late")
    # A blocked scheduler would starve it for the whole build (seconds).
    assert lateness < 1_000
    {outcome, div(micros, 1000), collect_events([])}
  end

  defp restore_monitor(:undefined), do: :erlang.system_monitor(:undefined)
  defp restore_monitor({pid, opts}), do: :erlang.system_monitor(pid, opts)

  defp collect_events(acc) do
    receive do
      {:monitor, who, :long_schedule, info} -> collect_events([{who, info} | acc])
    after
      0 -> Enum.reverse(acc)
    end
  end

  # Events of the processes that run our code: this test process (it calls the NIF and receives
  # the build's messages) and any port (the build opens none itself; git is run through one).
  defp ours(events) do
    me = self()
    Enum.filter(events, fn {who, _info} -> who == me or is_port(who) end)
  end

  defp report(what, ms, events) do
    IO.puts(
      "#{what}: built in #{ms} ms, #{length(events)} long_schedule event(s) (> #{@long_ms} ms)"
    )

    for {who, info} <- events do
      IO.puts("  #{inspect(who)} #{inspect(info)} #{inspect(describe(who))}")
    end
  end

  defp describe(pid) when is_pid(pid),
    do: Process.info(pid, [:registered_name, :initial_call, :current_function])

  defp describe(port) when is_port(port), do: Port.info(port, :name)

  # A process that sleeps 5 ms at a time and records how late it wakes up.
  defp start_ticker do
    parent = self()

    spawn_link(fn ->
      tick = fn tick, worst ->
        t0 = System.monotonic_time(:millisecond)

        receive do
          :stop -> send(parent, {:ticker, worst})
        after
          5 -> tick.(tick, max(worst, System.monotonic_time(:millisecond) - t0 - 5))
        end
      end

      tick.(tick, 0)
    end)
  end

  defp stop_ticker(pid) do
    send(pid, :stop)

    receive do
      {:ticker, worst} -> worst
    after
      5_000 -> flunk("the ticker did not answer")
    end
  end
end
