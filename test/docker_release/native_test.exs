defmodule DockerRelease.NativeTest do
  # The NIF contract: a job answers at once, reports by messages, always ends with exactly one
  # final message carrying a matchable reason, and is cancelled when its caller dies.
  use ExUnit.Case, async: false

  alias DockerRelease.Native

  @hello Path.expand("../../examples/hello", __DIR__)

  setup_all do
    {out, status} =
      System.cmd("mix", ["release", "--overwrite", "--quiet"],
        cd: @hello,
        env: [{"MIX_ENV", "prod"}],
        stderr_to_stdout: true
      )

    assert status == 0, out
    %{release: Path.join(@hello, "_build/prod/rel/hello")}
  end

  setup do
    dir = Path.join(System.tmp_dir!(), "dr-native-#{System.unique_integer([:positive])}")
    File.mkdir_p!(dir)
    on_exit(fn -> File.rm_rf!(dir) end)
    %{tmp: dir}
  end

  defp request(release, tmp, overrides \\ []) do
    struct!(
      %Native.Request{
        release_dir: release,
        release_name: "hello",
        own_apps: ["hello"],
        otp_apps: ["kernel", "stdlib", "elixir", "logger", "crypto", "compiler", "sasl"],
        tags: ["dr-native/hello:test"],
        work_dir: Path.join(tmp, "work"),
        output: Path.join(tmp, "image.tar"),
        fallback_output: Path.join(tmp, "fallback.tar"),
        created: 1_700_000_000
      },
      overrides
    )
  end

  defp collect(id, acc \\ []) do
    receive do
      {:docker_release, ^id, {:ok, _} = final} -> Enum.reverse([final | acc])
      {:docker_release, ^id, {:error, _, _} = final} -> Enum.reverse([final | acc])
      {:docker_release, ^id, other} -> collect(id, [other | acc])
    after
      60_000 -> flunk("no final message after 60 s; got #{inspect(Enum.reverse(acc))}")
    end
  end

  test "a build answers at once, reports steps, ends with one :ok carrying the image", ctx do
    {micros, {:ok, job, id}} =
      :timer.tc(fn -> Native.image_build(request(ctx.release, ctx.tmp)) end)

    assert is_reference(job)
    # The NIF only starts the job: it must return well within a millisecond-scale budget.
    assert micros < 50_000

    messages = collect(id)
    assert {:step, "resolving runtime files"} in messages
    assert {:ok, outcome} = List.last(messages)
    assert Enum.count(messages, &(elem(&1, 0) in [:ok, :error])) == 1
    assert "sha256:" <> hex = outcome.image_id
    assert byte_size(hex) == 64
    assert outcome.engine == nil and outcome.pushed == nil
    assert outcome.archive == Path.join(ctx.tmp, "image.tar")
    assert File.stat!(outcome.archive).size == outcome.archive_size
    names = Enum.map(outcome.layers, & &1.name)
    assert hd(names) == "runtime" and List.last(names) == "app"
    assert names -- ["runtime", "erts", "deps", "app"] == []
    assert Enum.any?(outcome.runtime_files, fn {path, _} -> path == "/etc/passwd" end)

    # Same inputs, same image.
    {:ok, _job, id2} = Native.image_build(request(ctx.release, ctx.tmp, tags: ["dr-native/x:y"]))
    assert {:ok, again} = List.last(collect(id2))
    assert again.image_id == outcome.image_id
  end

  # OTP 27's compiler does not keep a variable live after its last use, so a job handle bound
  # and never used again is garbage: the build must not depend on the caller keeping it.
  test "a job whose handle is dropped and garbage-collected still ends with its result", ctx do
    {:ok, _job, id} = Native.image_build(request(ctx.release, ctx.tmp))
    :erlang.garbage_collect()
    assert_receive {:docker_release, ^id, {:step, _}}, 10_000
    :erlang.garbage_collect()
    assert {:ok, %{image_id: "sha256:" <> _}} = List.last(collect(id))
  end

  test "errors arrive as a matchable reason plus a readable message", ctx do
    {:ok, _job, id} = Native.image_build(request("/nonexistent/rel", ctx.tmp))

    assert [{:error, :not_a_release, message}] =
             collect(id) -- [{:step, "resolving runtime files"}]

    assert message =~ "/nonexistent/rel is not an assembled release"

    {:ok, _job, id} = Native.image_build(request(ctx.release, ctx.tmp, tags: ["Bad:Tag"]))
    assert [{:error, :invalid_reference, message}] = collect(id)
    assert message =~ ~s(invalid image reference "Bad:Tag")

    {:ok, _job, id} =
      Native.image_build(request(ctx.release, ctx.tmp, extra_files: ["/nonexistent/lib.so"]))

    assert {:error, reason, message} = List.last(collect(id))
    assert reason in [:missing_runtime_file, :read_error]
    assert message =~ "/nonexistent/lib.so"
    refute File.exists?(Path.join(ctx.tmp, "image.tar"))
  end

  test "bad argument types raise instead of crashing the VM", ctx do
    assert_raise ArgumentError, fn -> Native.image_build(%{release_dir: 1}) end
    assert_raise ArgumentError, fn -> Native.reference_parse(:not_a_string) end

    assert_raise ErlangError, ~r/Could not decode field :uid/, fn ->
      Native.image_build(%{request(ctx.release, ctx.tmp) | uid: -1})
    end
  end

  test "a panic inside a job ends it with one :internal error; the VM goes on" do
    {:ok, job, id} = Native.job_panic_probe()
    assert is_reference(job)

    assert [{:step, "about to panic on purpose"}, {:error, :internal, message}] = collect(id)
    assert message =~ "crashed"
    assert message =~ "report this as a bug"
    # Exactly one final message: nothing else arrives for this job.
    refute_receive {:docker_release, ^id, _}, 500
    # The NIF still answers.
    assert {:ok, {"alpine", "3"}} = Native.reference_parse("alpine:3")
  end

  test "a job whose caller dies is cancelled and writes nothing", ctx do
    big = Path.join(ctx.tmp, "big")
    File.cp_r!(ctx.release, big)
    blob = Path.join(big, "lib/hello-0.1.0/priv/blob.bin")
    File.mkdir_p!(Path.dirname(blob))
    {_, 0} = System.cmd("head", ["-c", "300M", "/dev/urandom"], into: File.stream!(blob))

    parent = self()

    caller =
      spawn(fn ->
        {:ok, job, id} = Native.image_build(request(big, ctx.tmp, compression_level: 9))
        # Hold the job like DockerRelease.build/2 does (a dropped job is cancelled at once).
        Process.put(:job, job)
        send(parent, {:started, id})

        wait_for_step(id, ": app")
        send(parent, :in_app_layer)
        Process.sleep(:infinity)
      end)

    assert_receive {:started, _id}, 10_000
    assert_receive :in_app_layer, 60_000
    Process.exit(caller, :kill)

    # Level-9 compression of 300 MB of random bytes takes far longer than this; a job that
    # kept running would leave its partial blob growing, and finally the archive.
    Process.sleep(1_500)
    partials = Path.wildcard(Path.join(ctx.tmp, "work/blobs/.*.partial"))
    assert partials == []
    Process.sleep(1_500)
    refute File.exists?(Path.join(ctx.tmp, "image.tar"))
  end

  defp wait_for_step(id, suffix) do
    receive do
      {:docker_release, ^id, {:step, step}} ->
        if String.ends_with?(step, suffix), do: :ok, else: wait_for_step(id, suffix)

      {:docker_release, ^id, {final, _, _} = m} when final in [:ok, :error] ->
        raise "the job ended before #{suffix}: #{inspect(m)}"

      {:docker_release, ^id, {:ok, _} = m} ->
        raise "the job ended before #{suffix}: #{inspect(m)}"

      {:docker_release, ^id, _} ->
        wait_for_step(id, suffix)
    end
  end
end
