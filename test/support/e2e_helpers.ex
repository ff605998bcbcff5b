defmodule DockerRelease.E2E do
  @moduledoc """
  Helpers for the end-to-end tests in `test/e2e/` (all tagged `:engine`): run
  `mix docker.release` in `examples/hello` as a user would, drive the `docker` CLI with time
  limits, wait for containers, and clean up what a test created.

  Every external command runs under coreutils' `timeout` (which signals the command's whole
  process group), so a hung engine or VM fails the test instead of stalling the suite.
  """

  import ExUnit.Assertions

  @root Path.expand("../..", __DIR__)

  @doc "The docker_release repository."
  def root, do: @root

  @doc "The example project the tests build."
  def hello_dir, do: Path.join(@root, "examples/hello")

  @doc "The release `mix release` assembles in examples/hello."
  def hello_release_dir, do: Path.join(hello_dir(), "_build/prod/rel/hello")

  @doc "A short random lowercase suffix, valid in image names, container names and hostnames."
  # :rand, not :crypto: the docker_release application does not depend on :crypto.
  def rand(bytes \\ 5), do: bytes |> :rand.bytes() |> Base.encode32(case: :lower, padding: false)

  @doc "A tag prefix unique to this run, e.g. `dr-e2e-abcd1234`."
  def unique_repo(prefix \\ "dr-e2e"), do: "#{prefix}-#{rand()}"

  @doc """
  A `unique_repo/1` whose images (`REPO/NAME:TAG`) are removed from the engine when the calling
  test (or setup_all) ends.
  """
  def unique_repo_removed_on_exit(prefix) do
    repo = unique_repo(prefix)
    ExUnit.Callbacks.on_exit(fn -> rm_images_where(&String.starts_with?(&1, repo <> "/")) end)
    repo
  end

  @doc """
  A directory with an empty `apps/NAME/mix.exs` for each of `apps` (an umbrella's layout, for
  the config's umbrella rules), removed when the calling test ends.
  """
  def umbrella_dir!(apps) do
    dir = tmp_dir!("dr-umbrella")

    for app <- apps do
      File.mkdir_p!(Path.join([dir, "apps", app]))
      File.write!(Path.join([dir, "apps", app, "mix.exs"]), "")
    end

    dir
  end

  @doc "A fresh temporary directory, removed when the calling test (or setup_all) ends."
  def tmp_dir!(prefix \\ "dr-e2e") do
    dir = Path.join(System.tmp_dir!(), "#{prefix}-#{rand()}")
    File.mkdir_p!(dir)
    ExUnit.Callbacks.on_exit(fn -> File.rm_rf(dir) end)
    dir
  end

  @doc """
  A prerequisite of the calling test is missing: in CI (`CI` set to anything but empty, `0` or
  `false`, or `DOCKER_RELEASE_REQUIRE_ALL=1`) the test fails; elsewhere it prints SKIP and the
  caller goes on without the check. A suite that passes while testing nothing proves nothing.
  """
  def missing!(what) do
    if required?(),
      do: flunk("missing prerequisite: #{what}; scripts/setup.sh installs what the suite needs"),
      else: IO.puts("\nSKIP: #{what}")
  end

  defp required?, do: Enum.any?(["CI", "DOCKER_RELEASE_REQUIRE_ALL"], &set?/1)

  defp set?(var),
    do: String.trim(System.get_env(var) || "") not in ["", "0", "false", "FALSE", "False"]

  @doc "Runs `skopeo ARGS` (stderr left out), asserting success; returns its output."
  def skopeo!(args, timeout \\ 300) do
    {out, status} = cmd("skopeo", args, stderr: false, timeout: timeout)
    assert status == 0, "skopeo #{Enum.join(args, " ")} failed (#{status}):\n#{out}"
    out
  end

  @doc """
  The virtualenv with the SBOM validators (`pyspdxtools`, ...), made by scripts/setup.sh
  (`DOCKER_RELEASE_SBOMCHECK` overrides where); `nil`, after `missing!/1`, when it is not there.
  """
  def sbom_venv! do
    dir = System.get_env("DOCKER_RELEASE_SBOMCHECK") || "/var/cache/docker_release/sbomcheck"

    if File.exists?(Path.join(dir, "bin/pyspdxtools")) do
      dir
    else
      missing!("the SBOM validators' virtualenv #{dir} (scripts/setup.sh makes it)")
      nil
    end
  end

  @doc "A TCP port on 127.0.0.1 that was free a moment ago."
  def free_port do
    {:ok, s} = :gen_tcp.listen(0, ip: {127, 0, 0, 1}, reuseaddr: true)
    {:ok, port} = :inet.port(s)
    :ok = :gen_tcp.close(s)
    port
  end

  ## Commands

  @doc """
  Runs `exe args` with a time limit (seconds). Returns `{output, exit_status}`; stderr is merged
  into the output unless `stderr: false`. Options: `:cd`, `:env` (a nil value unsets),
  `:timeout` (default 120), `:stderr`.
  """
  def cmd(exe, args, opts \\ []) do
    timeout = Keyword.get(opts, :timeout, 120)
    path = System.find_executable(exe) || flunk("#{exe} is not on PATH")

    cmd_opts =
      [stderr_to_stdout: Keyword.get(opts, :stderr, true)] ++
        Keyword.take(opts, [:cd, :env])

    {out, status} = System.cmd("timeout", ["-k", "5", "#{timeout}", path | args], cmd_opts)

    if status == 124,
      do: flunk("#{exe} #{Enum.join(args, " ")} timed out after #{timeout}s:\n#{out}")

    {out, status}
  end

  @doc """
  Runs `mix docker.release ARGS` in examples/hello (or `:cd`) as a separate OS process, with
  MIX_ENV unset and `:env` added. Returns `{output, exit_status}`.
  """
  def mix_release(args, opts \\ []) do
    env = [{"MIX_ENV", nil} | Keyword.get(opts, :env, [])]

    cmd("mix", ["docker.release" | args],
      cd: Keyword.get(opts, :cd, hello_dir()),
      env: env,
      timeout: Keyword.get(opts, :timeout, 300)
    )
  end

  @doc "Like `mix_release/2`, asserting success. Returns `{output, printed_image_id}`."
  def mix_release!(args, opts \\ []) do
    {out, status} = mix_release(args, opts)
    assert status == 0, "mix docker.release #{Enum.join(args, " ")} failed (#{status}):\n#{out}"
    {out, printed_id!(out)}
  end

  @doc "The image ID the task printed (`ID        sha256:...`)."
  def printed_id!(out) do
    case Regex.run(~r/^ID\s+(sha256:[0-9a-f]{64})\s*$/m, out) do
      [_, id] -> id
      nil -> flunk("no image ID in the output:\n#{out}")
    end
  end

  @doc "The manifest digest the task printed (`Digest    sha256:...`)."
  def printed_digest!(out) do
    case Regex.run(~r/^Digest\s+(sha256:[0-9a-f]{64})\s*$/m, out) do
      [_, d] -> d
      nil -> flunk("no manifest digest in the output:\n#{out}")
    end
  end

  @doc """
  Starts `mix docker.release ARGS` in the background (like `mix_release/2`) and returns a
  handle for `await_output/3` and `await_exit/2`; its output arrives line by line. It is
  ended after `opts[:timeout]` seconds (default 300).
  """
  def start_mix_release(args, opts \\ []) do
    env =
      [{"MIX_ENV", false} | Keyword.get(opts, :env, [])]
      |> Enum.map(fn {k, v} -> {String.to_charlist(k), v && String.to_charlist(v)} end)

    port =
      Port.open({:spawn_executable, System.find_executable("timeout")}, [
        :binary,
        :exit_status,
        :stderr_to_stdout,
        {:line, 65_536},
        args: [
          "-k",
          "5",
          "#{Keyword.get(opts, :timeout, 300)}",
          System.find_executable("mix"),
          "docker.release" | args
        ],
        cd: Keyword.get(opts, :cd, hello_dir()),
        env: env
      ])

    {port, make_ref()}
  end

  @doc "Waits until the background run printed a line matching `regex`; returns its output so far."
  def await_output({port, ref}, regex, timeout_ms \\ 60_000) do
    deadline = System.monotonic_time(:millisecond) + timeout_ms
    do_await_output(port, ref, regex, deadline)
  end

  defp do_await_output(port, ref, regex, deadline) do
    left = max(deadline - System.monotonic_time(:millisecond), 0)

    receive do
      {^port, {:data, {_, line}}} ->
        acc = [line | Process.get(ref, [])]
        Process.put(ref, acc)
        if line =~ regex, do: output(ref), else: do_await_output(port, ref, regex, deadline)

      {^port, {:exit_status, status}} ->
        flunk("the run ended (#{status}) before printing #{inspect(regex)}:\n#{output(ref)}")
    after
      left -> flunk("no line matching #{inspect(regex)} in time:\n#{output(ref)}")
    end
  end

  @doc "Waits for the background run to end: `{whole_output, exit_status}`."
  def await_exit({port, ref}, timeout_ms \\ 300_000) do
    receive do
      {^port, {:data, {_, line}}} ->
        Process.put(ref, [line | Process.get(ref, [])])
        await_exit({port, ref}, timeout_ms)

      {^port, {:exit_status, status}} ->
        {output(ref), status}
    after
      timeout_ms -> flunk("the run did not end in time:\n#{output(ref)}")
    end
  end

  defp output(ref), do: ref |> Process.get([]) |> Enum.reverse() |> Enum.join("\n")

  @doc """
  Assembles the hello release (`MIX_ENV=prod mix release hello --overwrite` in examples/hello)
  and copies it to `dest` (a directory that must not exist yet), so the tests build from a copy
  nobody else rebuilds while they run. Returns `dest`.
  """
  def release_copy!(dest) do
    {out, status} =
      cmd("mix", ["release", "hello", "--overwrite"],
        cd: hello_dir(),
        env: [{"MIX_ENV", "prod"}],
        timeout: 300
      )

    assert status == 0, "mix release failed:\n#{out}"
    File.mkdir_p!(Path.dirname(dest))
    {out, status} = cmd("cp", ["-a", hello_release_dir(), dest])
    assert status == 0, out
    dest
  end

  @doc """
  Copies the release `rel` to `dest` with 200 MB of random bytes added to its application's
  `priv` (a release whose build takes long enough to watch). Returns `dest`.
  """
  def big_release_copy!(rel, dest) do
    {_, 0} = cmd("cp", ["-a", rel, dest])
    priv = Path.join(dest, "lib/hello-0.1.0/priv")
    File.mkdir_p!(priv)
    {bytes, 0} = cmd("head", ["-c", "200M", "/dev/urandom"], stderr: false, timeout: 60)
    File.write!(Path.join(priv, "random.bin"), bytes)
    dest
  end

  ## docker

  @doc "`docker ARGS` → `{output, status}` (stderr merged unless `stderr: false`)."
  def docker(args, opts \\ []), do: cmd("docker", args, Keyword.put_new(opts, :timeout, 60))

  @doc "`docker ARGS`, asserting success; returns the trimmed output."
  def docker!(args, opts \\ []) do
    {out, status} = docker(args, opts)
    assert status == 0, "docker #{Enum.join(args, " ")} failed (#{status}):\n#{out}"
    String.trim(out)
  end

  @doc "Starts a detached container (`docker run -d ARGS`), removed when the test ends. Returns its ID."
  def run_detached!(args) do
    id = docker!(["run", "-d" | args])
    ExUnit.Callbacks.on_exit(fn -> rm_containers([id]) end)
    id
  end

  @doc "`docker rm -f` each container (ignores ones already gone)."
  def rm_containers(ids) do
    if ids != [], do: docker(["rm", "-f" | ids])
    :ok
  end

  @doc "Removes image references (tags) from the engine, if present; never forces."
  def rm_images(refs) do
    for ref <- refs, image_exists?(ref), do: docker(["image", "rm", ref])
    :ok
  end

  @doc "Removes the engine's image references (`REPOSITORY:TAG`) for which `match?` is true."
  def rm_images_where(match?) do
    {out, _} = docker(["image", "ls", "--format", "{{.Repository}}:{{.Tag}}"])
    out |> String.split() |> Enum.filter(match?) |> rm_images()
  end

  @doc "Whether the engine has an image (ID or reference)."
  def image_exists?(ref), do: match?({_, 0}, docker(["image", "inspect", "-f", "{{.Id}}", ref]))

  @doc "`docker image inspect -f FORMAT REF`."
  def image_inspect!(ref, format), do: docker!(["image", "inspect", "-f", format, ref])

  @doc "Every container of the engine, running or not."
  def all_containers, do: docker!(["ps", "-aq", "--no-trunc"]) |> String.split()

  @doc "A container's logs (stdout and stderr)."
  def logs(container), do: docker!(["logs", container])

  @doc "Polls `fun` every 100 ms until it returns a truthy value; fails after `timeout_ms`."
  def wait_until(what, timeout_ms \\ 30_000, fun) do
    deadline = System.monotonic_time(:millisecond) + timeout_ms
    do_wait(what, deadline, fun, timeout_ms)
  end

  defp do_wait(what, deadline, fun, timeout_ms) do
    case fun.() do
      result when result not in [nil, false] ->
        result

      _ ->
        if System.monotonic_time(:millisecond) > deadline,
          do: flunk("timed out after #{timeout_ms} ms waiting for #{what}")

        Process.sleep(100)
        do_wait(what, deadline, fun, timeout_ms)
    end
  end

  @doc "Waits until the hello server in `container` has logged that it listens."
  def wait_listening!(container, timeout_ms \\ 30_000) do
    wait_until("#{container} to listen", timeout_ms, fn ->
      case docker(["logs", container]) do
        {out, 0} ->
          if out =~ "hello listening on port", do: true, else: running_or_flunk(container, out)

        _ ->
          false
      end
    end)
  end

  defp running_or_flunk(container, logs) do
    case docker(["inspect", "-f", "{{.State.Status}}", container]) do
      {"exited" <> _, 0} -> flunk("container #{container} exited before listening:\n#{logs}")
      _ -> false
    end
  end

  ## HTTP

  @doc "GET `path` from 127.0.0.1:`port` once: `{:ok, status, body}` or `{:error, reason}`."
  def http_get(port, path \\ "/") do
    with {:ok, s} <- :gen_tcp.connect({127, 0, 0, 1}, port, [:binary, active: false], 2_000),
         :ok <-
           :gen_tcp.send(
             s,
             "GET #{path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
           ),
         {:ok, resp} <- recv_all(s, "") do
      case Regex.run(~r/\AHTTP\/1\.[01] (\d{3})[^\r]*\r\n.*?\r\n\r\n(.*)\z/s, resp) do
        [_, status, body] -> {:ok, String.to_integer(status), body}
        nil -> {:error, {:bad_response, resp}}
      end
    end
  end

  defp recv_all(s, acc) do
    case :gen_tcp.recv(s, 0, 5_000) do
      {:ok, data} -> recv_all(s, acc <> data)
      {:error, :closed} -> {:ok, acc}
      {:error, reason} -> {:error, reason}
    end
  end

  @doc """
  Starts Debian's `docker-registry` on a free 127.0.0.1 port, storing under `dir`, with its
  access log in `dir/registry.log`; stops it on exit. Retries on another port when the one
  picked was taken in the meantime; any other early exit fails with the registry's own output.
  With `htpasswd: path` the registry asks for basic authentication against that file (bcrypt,
  `htpasswd -Bbn`). Returns `%{port: port, log: path}`.
  """
  def start_registry!(dir, opts \\ []) do
    attempts = Keyword.get(opts, :attempts, 3)

    registry =
      System.find_executable("docker-registry") ||
        flunk("docker-registry is not installed (apt-get install docker-registry)")

    port = free_port()
    config = Path.join(dir, "registry.yml")
    log = Path.join(dir, "registry.log")

    File.write!(
      config,
      """
      version: 0.1
      log:
        level: info
        accesslog:
          disabled: false
      storage:
        filesystem:
          rootdirectory: #{dir}/data
      http:
        addr: 127.0.0.1:#{port}
      """ <> auth_yaml(opts[:htpasswd])
    )

    File.rm(log)

    port_ref =
      Port.open({:spawn_executable, registry}, [
        :binary,
        :exit_status,
        :stderr_to_stdout,
        args: ["serve", config]
      ])

    case await_registry(port_ref, port, log, System.monotonic_time(:millisecond) + 20_000) do
      {:ok, os_pid} ->
        ExUnit.Callbacks.on_exit(fn -> System.cmd("kill", ["#{os_pid}"]) end)
        %{port: port, log: log}

      {:exited, status} ->
        output = File.read!(log)

        if attempts > 1 and output =~ "address already in use",
          do: start_registry!(dir, Keyword.put(opts, :attempts, attempts - 1)),
          else: flunk("docker-registry exited with status #{status} before answering:\n#{output}")
    end
  end

  defp auth_yaml(nil), do: ""

  defp auth_yaml(htpasswd) do
    """
    auth:
      htpasswd:
        realm: docker_release-test
        path: #{htpasswd}
    """
  end

  # The registry's output goes to `log` (a file, so the access log can be read while it runs).
  defp await_registry(port_ref, port, log, deadline) do
    receive do
      {^port_ref, {:data, data}} ->
        File.write!(log, data, [:append])
        await_registry(port_ref, port, log, deadline)

      {^port_ref, {:exit_status, status}} ->
        {:exited, status}
    after
      100 ->
        cond do
          match?({:ok, status, _} when status in [200, 401], http_get(port, "/v2/")) ->
            {:os_pid, os_pid} = Port.info(port_ref, :os_pid)
            keep_logging(port_ref, log)
            {:ok, os_pid}

          System.monotonic_time(:millisecond) > deadline ->
            flunk("docker-registry did not answer on 127.0.0.1:#{port} within 20 s")

          true ->
            await_registry(port_ref, port, log, deadline)
        end
    end
  end

  # Hands the port to a process that appends everything the registry prints to `log`.
  defp keep_logging(port_ref, log) do
    pid =
      spawn(fn ->
        receive do
          :go -> log_loop(port_ref, log)
        end
      end)

    Port.connect(port_ref, pid)
    Process.unlink(port_ref)
    send(pid, :go)
  end

  defp log_loop(port_ref, log) do
    receive do
      {^port_ref, {:data, data}} ->
        File.write!(log, data, [:append])
        log_loop(port_ref, log)

      {^port_ref, {:exit_status, _}} ->
        :ok
    end
  end

  @doc "Polls until GET `path` on `port` answers 200; returns the body."
  def wait_http!(port, path \\ "/", timeout_ms \\ 30_000) do
    wait_until("HTTP 200 on 127.0.0.1:#{port}#{path}", timeout_ms, fn ->
      case http_get(port, path) do
        {:ok, 200, body} -> body
        _ -> false
      end
    end)
  end

  ## Archives

  @doc "The files of a tar archive, in memory: `%{name => bytes}`."
  def tar_files!(path) do
    {:ok, files} = :erl_tar.extract(String.to_charlist(path), [:memory])
    Map.new(files, fn {name, bytes} -> {to_string(name), bytes} end)
  end

  @doc "`{config_path, [layer_path]}` of the first image of an archive's manifest.json."
  def manifest_paths!(manifest_json) do
    [_, config] = Regex.run(~r/"Config"\s*:\s*"(blobs\/sha256\/[0-9a-f]{64})"/, manifest_json)
    [_, layers] = Regex.run(~r/"Layers"\s*:\s*\[([^\]]*)\]/, manifest_json)
    {config, Regex.scan(~r/"([^"]+)"/, layers, capture: :all_but_first) |> List.flatten()}
  end
end

defmodule DockerRelease.E2E.FakeEngine do
  @moduledoc """
  A fake Docker engine on a Unix socket: answers the version negotiation (`GET /version`,
  `GET /vX.Y/version`) and `/_ping` like Engine 20.10, then on `POST .../images/load` reads
  `:cut_after` bytes of the upload and hangs up. Every request is reported to `owner` as
  `{:fake_engine, method, path}`; the hang-up as `{:fake_engine, :cut, bytes_read}`.
  """

  @version ~s({"ApiVersion":"1.41","MinAPIVersion":"1.12","Os":"linux","Arch":"amd64","Version":"20.10.24"})

  @doc "Starts listening at `path`. Returns the listener pid (linked to the caller)."
  def start!(path, owner, cut_after \\ 256 * 1024) do
    File.rm(path)

    {:ok, listen} =
      :gen_tcp.listen(0, [:binary, ifaddr: {:local, path}, active: false, packet: :raw])

    pid = spawn_link(fn -> accept(listen, owner, cut_after) end)
    :ok = :gen_tcp.controlling_process(listen, pid)
    pid
  end

  @doc "Stops the fake engine started at `path`."
  def stop(pid, path) do
    Process.unlink(pid)
    Process.exit(pid, :kill)
    File.rm(path)
    :ok
  end

  defp accept(listen, owner, cut_after) do
    case :gen_tcp.accept(listen) do
      {:ok, s} ->
        pid = spawn(fn -> receive(do: (:go -> serve(s, "", owner, cut_after))) end)
        :ok = :gen_tcp.controlling_process(s, pid)
        send(pid, :go)
        accept(listen, owner, cut_after)

      {:error, _} ->
        :ok
    end
  end

  defp serve(s, buf, owner, cut_after) do
    case :binary.split(buf, "\r\n\r\n") do
      [head, rest] ->
        [request_line | header_lines] = String.split(head, "\r\n")
        [method, path | _] = String.split(request_line, " ")
        headers = Map.new(header_lines, &header/1)
        send(owner, {:fake_engine, method, path})

        if method == "POST" and path =~ ~r{/images/load} do
          n = read_at_least(s, byte_size(rest), cut_after)
          send(owner, {:fake_engine, :cut, n})
          :gen_tcp.close(s)
        else
          rest = skip_body(s, rest, String.to_integer(Map.get(headers, "content-length", "0")))
          :gen_tcp.send(s, response(path))
          serve(s, rest, owner, cut_after)
        end

      [_incomplete] ->
        case :gen_tcp.recv(s, 0, 30_000) do
          {:ok, data} -> serve(s, buf <> data, owner, cut_after)
          {:error, _} -> :gen_tcp.close(s)
        end
    end
  end

  defp header(line) do
    [k, v] = String.split(line, ":", parts: 2)
    {String.downcase(String.trim(k)), String.trim(v)}
  end

  defp read_at_least(_s, n, want) when n >= want, do: n

  defp read_at_least(s, n, want) do
    case :gen_tcp.recv(s, 0, 30_000) do
      {:ok, data} -> read_at_least(s, n + byte_size(data), want)
      {:error, _} -> n
    end
  end

  defp skip_body(_s, rest, len) when byte_size(rest) >= len,
    do: binary_part(rest, len, byte_size(rest) - len)

  defp skip_body(s, rest, len) do
    {:ok, data} = :gen_tcp.recv(s, 0, 30_000)
    skip_body(s, rest <> data, len)
  end

  defp response(path) do
    {status, type, body} =
      cond do
        path =~ ~r{/_ping$} -> {"200 OK", "text/plain", "OK"}
        path =~ ~r{/version$} -> {"200 OK", "application/json", @version}
        true -> {"404 Not Found", "application/json", ~s({"message":"not found"})}
      end

    [
      "HTTP/1.1 #{status}\r\n",
      "Content-Type: #{type}\r\n",
      "Api-Version: 1.41\r\n",
      "Content-Length: #{byte_size(body)}\r\n\r\n",
      body
    ]
  end
end

defmodule DockerRelease.E2E.Builder do
  @moduledoc """
  Helpers for the `--builder` end-to-end tests: copies of the examples that tests may edit,
  the BEAM behind a background `mix docker.release`, the builder's temporary containers and
  cache volumes (labels as in `native/image_io/src/builder.rs`).
  """

  import ExUnit.Assertions
  import DockerRelease.E2E

  @builders %{
    "bookworm" => "docker-release-test/builder:bookworm",
    "trixie" => "docker-release-test/builder:trixie",
    # Debian 13 with a C toolchain, for projects that compile C code (a NIF) as they build.
    "trixie-cc" => "docker-release-test/builder:trixie-cc",
    # Debian 13 for arm64 (made without emulation; the same OTP as "trixie"): another
    # platform's files, read by multi-platform builds, run under QEMU by their tests. With
    # dpkg's database (the tag without -dpkgdb had none), as every real arm64 image has.
    "trixie-arm64" => "docker-release-test/builder:trixie-arm64-dpkgdb",
    # The same with the C toolchain of "trixie-cc": a builder run under QEMU (--emulate).
    "trixie-arm64-cc" => "docker-release-test/builder:trixie-arm64-cc-dpkgdb",
    # Debian 12 minbase (base-files only): what the article's final Dockerfile is FROM.
    "minbase" => "docker-release-test/minbase:bookworm"
  }

  @cc_include "elixir,erlang-dev,ca-certificates,gcc,make,libc6-dev"

  @doc """
  The builder image of a Debian suite (`"bookworm"`, `"trixie"`, `"trixie-cc"`,
  `"trixie-arm64"`, `"trixie-arm64-cc"`).
  """
  def builder_image(suite), do: Map.fetch!(@builders, suite)

  @doc """
  Makes the builder image of `suite` with test/support/make-builder-image.sh unless it exists
  (`"trixie-cc"`: trixie plus gcc, make and libc6-dev; `"trixie-arm64"`: with
  test/support/make-foreign-builder-image.sh, after `"trixie"`, whose OTP it must match;
  `"trixie-arm64-cc"`: the same after `"trixie-cc"`, with its C toolchain).
  Returns its tag.
  """
  def ensure_builder!(suite) when suite in ["trixie-arm64", "trixie-arm64-cc"] do
    {native, env} =
      if suite == "trixie-arm64-cc",
        do: {ensure_builder!("trixie-cc"), [{"BUILDER_INCLUDE", @cc_include}]},
        else: {ensure_builder!("trixie"), []}

    script = Path.join(root(), "test/support/make-foreign-builder-image.sh")
    args = [script, "trixie", "arm64", builder_image(suite), native]
    {out, status} = cmd("bash", args, timeout: 900, env: env)

    assert status == 0, "could not make the #{suite} builder image:\n#{out}"
    builder_image(suite)
  end

  def ensure_builder!(suite) do
    script = Path.join(root(), "test/support/make-builder-image.sh")

    {debian, env} =
      case suite do
        "trixie-cc" -> {"trixie", [{"BUILDER_INCLUDE", @cc_include}]}
        "minbase" -> {"bookworm", [{"BUILDER_INCLUDE", "base-files"}]}
        other -> {other, []}
      end

    {out, status} = cmd("bash", [script, debian, builder_image(suite)], timeout: 900, env: env)
    assert status == 0, "could not make the #{suite} builder image:\n#{out}"
    builder_image(suite)
  end

  @doc """
  Publishes a multi-arch builder as one is published: each `{image, arch}` of the engine copied
  to `repo:ARCH` (skopeo), and an OCI index over them put at `repo:multi` (curl); the engine's
  `repo:multi` then names the first image (the engine's own platform's, which it runs). `dir`
  holds the index file. Returns `"repo:multi"`.
  """
  def publish_multi_arch!(repo, images, dir) do
    [registry | path] = String.split(repo, "/")

    entries =
      for {image, arch} <- images do
        skopeo!([
          "copy",
          "--dest-tls-verify=false",
          "docker-daemon:#{image}",
          "docker://#{repo}:#{arch}"
        ])

        raw = skopeo!(["inspect", "--raw", "--tls-verify=false", "docker://#{repo}:#{arch}"])
        [_, media] = Regex.run(~r/"mediaType":\s*"([^"]+)"/, raw)
        digest = "sha256:" <> Base.encode16(:crypto.hash(:sha256, raw), case: :lower)

        ~s({"mediaType":"#{media}","digest":"#{digest}","size":#{byte_size(raw)},) <>
          ~s("platform":{"architecture":"#{arch}","os":"linux"}})
      end

    index_file = Path.join(dir, "index-#{rand()}.json")

    File.write!(
      index_file,
      ~s({"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[) <>
        Enum.join(entries, ",") <> "]}"
    )

    url = "http://#{registry}/v2/#{Enum.join(path, "/")}/manifests/multi"
    type = "Content-Type: application/vnd.oci.image.index.v1+json"
    args = ["-sS", "-o", "/dev/null", "-w", "%{http_code}", "-X", "PUT", "-H", type]
    {put, 0} = cmd("curl", args ++ ["--data-binary", "@#{index_file}", url])
    assert put == "201", "PUT #{url} answered #{put}"
    [{first, _} | _] = images
    docker!(["tag", first, "#{repo}:multi"])
    "#{repo}:multi"
  end

  @doc """
  A copy of test/fixtures/article_app (the article's two-Dockerfile project) in a fresh
  temporary directory, listing docker_release as a dev-only dependency as a user of the task
  does. Returns the directory.
  """
  def article_copy!(prefix) do
    dir = tmp_dir!(prefix)
    File.cp_r!(Path.join(root(), "test/fixtures/article_app"), dir)
    mix = Path.join(dir, "mix.exs")
    dep = ~s(deps: [{:docker_release, path: "#{root()}", only: :dev, runtime: false}],)
    text = File.read!(mix)
    assert text =~ "deps: [],", "the article fixture's mix.exs no longer has `deps: [],`"
    File.write!(mix, String.replace(text, "deps: [],", dep))
    dir
  end

  @doc "The arguments of the article's two-Dockerfile flow for `article_copy!/1`'s project."
  def article_args(build_tag) do
    ["--build-dockerfile", "Dockerfile.build", "--dockerfile", "Dockerfile"] ++
      ["--build-tag", build_tag]
  end

  @doc "`%{otp: \"25\", elixir: \"1.14.0\"}` of a builder image, asked from a container of it."
  def builder_versions!(image) do
    script = ~s{IO.puts(:erlang.system_info(:otp_release)); IO.puts(System.version())}
    out = docker!(["run", "--rm", "--entrypoint", "elixir", image, "-e", script], stderr: false)
    [otp, elixir] = out |> String.split("\n", trim: true) |> Enum.take(-2)
    %{otp: otp, elixir: elixir}
  end

  @doc """
  Copies `examples/NAME` (without `_build` and `deps`) to a fresh temporary directory and points
  its `docker_release` path dependency at this repository. The directory and the cache volumes
  builds of it leave are removed when the test ends. Returns the directory (canonical: the
  path the cache volumes are labelled with).
  """
  def example_copy!(name, prefix \\ "dr-e2e-builder") do
    src = Path.join([root(), "examples", name])
    dir = tmp_dir!("#{prefix}-#{name}") |> realpath!()
    ExUnit.Callbacks.on_exit(fn -> rm_cache_volumes(dir) end)

    for entry <- File.ls!(src), entry not in ["_build", "deps"] do
      File.cp_r!(Path.join(src, entry), Path.join(dir, entry))
    end

    mix = Path.join(dir, "mix.exs")
    text = File.read!(mix)

    assert text =~ ~s(path: "../.."),
           "#{name}/mix.exs no longer has the docker_release dep at ../.."

    File.write!(mix, String.replace(text, ~s(path: "../.."), ~s(path: #{inspect(root())})))
    dir
  end

  defp realpath!(path) do
    {out, 0} = cmd("realpath", [path])
    String.trim(out)
  end

  @doc "The cache volumes labelled with project directory `dir`."
  def cache_volumes(dir) do
    docker!(["volume", "ls", "-q", "--filter", "label=docker_release.cache.project=#{dir}"])
    |> String.split()
  end

  @doc "Every volume labelled `docker_release.cache=true`."
  def all_cache_volumes do
    docker!(["volume", "ls", "-q", "--filter", "label=docker_release.cache=true"])
    |> String.split()
  end

  @doc "Every volume of the engine."
  def all_volumes, do: docker!(["volume", "ls", "-q"]) |> String.split()

  @doc "Removes the cache volumes of project directory `dir` (after any container of ours that holds them)."
  def rm_cache_volumes(dir) do
    case cache_volumes(dir) do
      [] -> :ok
      names -> docker(["volume", "rm" | names])
    end

    :ok
  end

  @doc "`HOSTNAME:PID`, as docker_release labels the containers of the process `pid`."
  def owner(pid) do
    {:ok, host} = :inet.gethostname()
    "#{host}:#{pid}"
  end

  @doc "Containers (running or not) labelled `docker_release.owner=OWNER`."
  def owned_containers(owner) do
    docker!(["ps", "-aq", "--no-trunc", "--filter", "label=docker_release.owner=#{owner}"])
    |> String.split()
  end

  @doc "Every container labelled `docker_release.temporary=true`."
  def temporary_containers do
    docker!(["ps", "-aq", "--no-trunc", "--filter", "label=docker_release.temporary=true"])
    |> String.split()
  end

  @doc """
  Starts recording the containers labelled `docker_release.owner` (any owner) the engine
  creates from `since` (Unix seconds) on, including those removed again; `stop_watching/1`
  returns them. The watch streams `docker events` from a process of its own: the engine replays
  `--since` from a buffer of its last 256 events only, so a query after a long run (whose
  `exec`s fill that buffer) misses what it created early.
  """
  def watch_created(since) do
    Task.async(fn ->
      port =
        Port.open({:spawn_executable, System.find_executable("docker")}, [
          :binary,
          :exit_status,
          {:line, 4096},
          args: [
            "events",
            "--since",
            "#{since - 1}",
            "--filter",
            "type=container",
            "--filter",
            "event=create",
            "--filter",
            "label=docker_release.owner",
            "--format",
            ~s({{.Actor.ID}} {{index .Actor.Attributes "docker_release.owner"}})
          ]
        ])

      watch_loop(port, [])
    end)
  end

  @doc "`[{id, owner}]` a `watch_created/1` watch saw, once the engine has been quiet for 1 s."
  def stop_watching(watch) do
    send(watch.pid, :stop)
    Task.await(watch, 15_000)
  end

  # Until :stop, collects lines; then until the stream has been quiet for `quiet` ms.
  defp watch_loop(port, seen, quiet \\ :infinity) do
    receive do
      {^port, {:data, {:eol, line}}} ->
        [id, owner] = String.split(line, " ", parts: 2)
        watch_loop(port, [{id, owner} | seen], quiet)

      {^port, {:exit_status, status}} ->
        raise "docker events stopped by itself (exit status #{status}): the watch is incomplete"

      :stop ->
        watch_loop(port, seen, 1000)
    after
      quiet ->
        {:os_pid, pid} = Port.info(port, :os_pid)
        System.cmd("kill", ["#{pid}"])

        receive do
          {^port, {:exit_status, _}} -> :ok
        after
          5000 -> raise "docker events (pid #{pid}) did not stop"
        end

        Enum.reverse(seen)
    end
  end

  @doc """
  The OS pid of the BEAM running `mix` for a handle of `start_mix_release/2`. The port runs
  coreutils' `timeout`, whose child (after `env`, `elixir` and `erl` exec each other) is
  `beam.smp`: signals meant for Mix must go there, not to `timeout`.
  """
  def beam_pid!({port, _ref}, timeout_ms \\ 10_000) do
    {:os_pid, wrapper} = Port.info(port, :os_pid)

    wait_until("the BEAM under timeout (pid #{wrapper})", timeout_ms, fn ->
      with {:ok, children} <- File.read("/proc/#{wrapper}/task/#{wrapper}/children"),
           [child] <- String.split(children),
           {:ok, "beam.smp\n"} <- File.read("/proc/#{child}/comm") do
        String.to_integer(child)
      else
        _ -> false
      end
    end)
  end

  @doc "Sends `signal` (`\"INT\"`, `\"TERM\"`, `\"KILL\"`) to OS process `pid`."
  def signal!(pid, signal) do
    {out, status} = cmd("kill", ["-s", signal, "#{pid}"])
    assert status == 0, "kill -s #{signal} #{pid}: #{out}"
    :ok
  end

  @doc """
  Runs `mix docker.release ARGS` (like `mix_release/2`, but in the background so the BEAM's pid
  is known) and waits for it. Returns `%{out: output, status: exit_status, owner: "HOST:PID",
  started: unix_seconds, created: container_ids}`: `created` names the containers the run
  made in the Docker engine (from its event stream, `watch_created/1`: also those removed
  again).
  """
  def run_release(args, opts) do
    started = System.os_time(:second)
    watch = watch_created(started)
    handle = start_mix_release(args, opts)
    pid = beam_pid!(handle)
    {out, status} = await_exit(handle, Keyword.get(opts, :timeout, 300) * 1000)
    owner = owner(pid)
    created = for {id, ^owner} <- stop_watching(watch), do: id
    %{out: out, status: status, owner: owner, started: started, created: created}
  end

  @doc "The lines a `mix release` step in the builder printed (between its step line and the next one), unindented."
  def release_step_lines(out) do
    out
    |> String.split("\n")
    |> Enum.drop_while(&(not String.starts_with?(&1, "==> running `mix release")))
    |> Enum.drop(1)
    |> Enum.take_while(&(not String.starts_with?(&1, "==> ")))
    |> Enum.map(&String.trim/1)
  end

  @doc "Starts a container of `image` publishing 4000 on a free loopback port; returns GET `path`'s body."
  def serve_and_get!(image, path \\ "/") do
    port = free_port()
    run_detached!(["-p", "127.0.0.1:#{port}:4000", image])
    wait_http!(port, path)
  end

  @doc """
  Like `start_mix_release/2`, with the task's stdin at end-of-file (`</dev/null`), as under a
  CI runner or `nohup`: on SIGINT the BEAM's break handler then reads EOF and halts at once.
  (With the stdin pipe a port holds open, SIGINT leaves the BEAM waiting in the BREAK menu.)
  """
  def start_mix_release_no_stdin(args, opts \\ []) do
    env =
      [{"MIX_ENV", false} | Keyword.get(opts, :env, [])]
      |> Enum.map(fn {k, v} -> {String.to_charlist(k), v && String.to_charlist(v)} end)

    script = ~s(exec timeout -k 5 300 "$0" docker.release "$@" </dev/null)

    port =
      Port.open({:spawn_executable, System.find_executable("sh")}, [
        :binary,
        :exit_status,
        :stderr_to_stdout,
        {:line, 65_536},
        args: ["-c", script, System.find_executable("mix") | args],
        cd: Keyword.get(opts, :cd, hello_dir()),
        env: env
      ])

    {port, make_ref()}
  end
end
