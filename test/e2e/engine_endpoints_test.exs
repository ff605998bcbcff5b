defmodule DockerRelease.E2E.EngineEndpointsTest do
  # Where the engine is, and what happens when it misbehaves, as a user meets it: `mix
  # docker.release` as a separate OS process against the real engine, reached through a proxy
  # of the tests' own (test/support/engine_proxy.ex) that passes requests through, hangs them,
  # answers 500, or terminates TLS with a client certificate required.
  use ExUnit.Case, async: false
  import DockerRelease.E2E
  alias DockerRelease.E2E.{EngineProxy, SshServer}

  @moduletag :engine

  setup_all do
    tmp = tmp_dir!("dr-e2e-endpoints")
    %{rel: release_copy!(Path.join(tmp, "rel")), repo: unique_repo("dr-e2e-endpoints")}
  end

  defp fails!(args, opts) do
    {out, status} = mix_release(args, opts)
    assert status != 0, "expected mix docker.release #{Enum.join(args, " ")} to fail:\n#{out}"
    out
  end

  test "DOCKER_HOST naming a socket that does not exist fails before the release build" do
    missing = Path.join(tmp_dir!(), "gone/docker.sock")
    fallback = Path.join(hello_dir(), "_build/docker_release/hello-0.1.0.tar")
    before = File.stat(fallback)

    out = fails!([], env: [{"DOCKER_HOST", "unix://#{missing}"}])

    assert out =~ "DOCKER_HOST is unix://#{missing}"
    assert out =~ "does not exist"
    assert out =~ "correct DOCKER_HOST, or unset it"
    # Found before the release build, and no archive written in its place.
    refute out =~ "building release"
    refute out =~ "writing an image archive"
    assert File.stat(fallback) == before
  end

  test "a hung engine fails the run after the stall timeout, naming the engine, the request and the seconds",
       %{rel: rel, repo: repo} do
    sock = Path.join(tmp_dir!(), "engine.sock")
    EngineProxy.start!({:unix, sock}, [{~r{/images/load}, :swallow}])
    tag = "#{repo}/hello:hung"
    started = System.monotonic_time(:millisecond)

    out =
      fails!(["--from-release", rel, "--tag", tag],
        env: [{"DOCKER_HOST", "unix://#{sock}"}, {"DOCKER_RELEASE_STALL_TIMEOUT", "2"}]
      )

    took = System.monotonic_time(:millisecond) - started
    assert out =~ "the Docker engine at unix://#{sock} neither took nor sent a byte for 2 s"
    assert out =~ "during POST /images/load"
    assert out =~ "--stall-timeout"
    # Mix's start, the layers and two seconds of silence: far from an hour.
    assert took < 60_000, "took #{took} ms"
    assert_received {:engine_proxy, "POST " <> _}
    refute image_exists?(tag)

    # The flag wins over the variable (a 1 s bound this time).
    out =
      fails!(["--from-release", rel, "--tag", tag, "--stall-timeout", "1"],
        env: [{"DOCKER_HOST", "unix://#{sock}"}, {"DOCKER_RELEASE_STALL_TIMEOUT", "30"}]
      )

    assert out =~ "neither took nor sent a byte for 1 s during POST /images/load"
    refute image_exists?(tag)
  end

  test "a bad stall timeout is refused with the rule and the value", %{rel: rel, repo: repo} do
    out =
      fails!(["--from-release", rel, "--tag", "#{repo}/hello:x"],
        env: [{"DOCKER_RELEASE_STALL_TIMEOUT", "soon"}]
      )

    assert out =~ ~s(invalid DOCKER_RELEASE_STALL_TIMEOUT: expected a whole number of seconds)
    assert out =~ ~s(got: "soon")

    out = fails!(["--from-release", rel, "--tag", "#{repo}/hello:x", "--stall-timeout", "0"], [])
    assert out =~ "invalid stall_timeout: expected an integer from 1 to 86400, got: 0"
  end

  test "mix docker.release.clean has the same bound on silence, and checks it" do
    dir = DockerRelease.E2E.Builder.example_copy!("hello", "dr-e2e-clean-stall")
    sock = Path.join(tmp_dir!(), "engine.sock")
    EngineProxy.start!({:unix, sock}, [{~r{/volumes}, :swallow}])
    env = [{"MIX_ENV", nil}, {"DOCKER_HOST", "unix://#{sock}"}]
    started = System.monotonic_time(:millisecond)

    {out, status} =
      cmd("mix", ["docker.release.clean", "--stall-timeout", "1"], cd: dir, env: env, timeout: 300)

    assert status != 0, out
    assert out =~ "neither took nor sent a byte for 1 s", out
    assert System.monotonic_time(:millisecond) - started < 120_000

    {out, status} =
      cmd("mix", ["docker.release.clean", "--stall-timeout", "0"], cd: dir, env: env)

    assert status != 0, out
    assert out =~ "invalid stall_timeout: expected an integer from 1 to 86400, got: 0", out
  end

  test "an engine that answers 500 is reported as failing, not as absent", %{rel: rel, repo: repo} do
    sock = Path.join(tmp_dir!(), "engine.sock")
    EngineProxy.start!({:unix, sock}, [{~r{/version}, {:status, 500}}])
    tag = "#{repo}/hello:500"
    out = fails!(["--from-release", rel, "--tag", tag], env: [{"DOCKER_HOST", "unix://#{sock}"}])
    assert out =~ "the Docker engine at unix://#{sock} failed connecting: it answered 500"
    assert out =~ "engine proxy: 500 on purpose"
    assert out =~ "engine's log"
    refute out =~ "did not answer"
    refute out =~ "start it"
    refute image_exists?(tag)
  end

  test "tcp:// with TLS from DOCKER_TLS_VERIFY and DOCKER_CERT_PATH, client certificate required",
       %{rel: rel, repo: repo} do
    tls = EngineProxy.make_tls!(tmp_dir!("dr-e2e-tls"))
    %{port: port} = EngineProxy.start!({:tls, tls.server}, [])
    tag = "#{repo}/hello:tls"
    on_exit(fn -> rm_images([tag]) end)

    env = [
      {"DOCKER_HOST", "tcp://127.0.0.1:#{port}"},
      {"DOCKER_TLS_VERIFY", "1"},
      {"DOCKER_CERT_PATH", tls.cert_path}
    ]

    {out, _id} = mix_release!(["--from-release", rel, "--tag", tag], env: env)
    assert out =~ "connecting to the Docker engine at tcp://127.0.0.1:#{port} (TLS)"
    assert_received {:engine_proxy, "POST " <> load} when is_binary(load)
    # In the engine behind the proxy.
    assert image_exists?(tag)

    # Without the client certificate the engine's TLS port refuses the connection: the
    # message says so, and nothing is tagged.
    bare = tmp_dir!("dr-e2e-tls-bare")
    File.cp!(Path.join(tls.cert_path, "ca.pem"), Path.join(bare, "ca.pem"))
    tag2 = "#{repo}/hello:tls-bare"

    out =
      fails!(["--from-release", rel, "--tag", tag2],
        env: List.keyreplace(env, "DOCKER_CERT_PATH", 0, {"DOCKER_CERT_PATH", bare})
      )

    assert out =~
             "the TLS connection to the Docker engine at tcp://127.0.0.1:#{port} (TLS) failed"

    assert out =~ "the engine requires a client certificate"
    refute out =~ "start it"
    refute image_exists?(tag2)

    # An engine whose certificate another CA signed: the handshake fails, saying why.
    other = EngineProxy.make_tls!(tmp_dir!("dr-e2e-tls-other"))

    out =
      fails!(["--from-release", rel, "--tag", tag2],
        env: List.keyreplace(env, "DOCKER_CERT_PATH", 0, {"DOCKER_CERT_PATH", other.cert_path})
      )

    assert out =~ "the TLS handshake with 127.0.0.1:#{port} failed"
    assert out =~ "not signed by ca.pem of DOCKER_CERT_PATH"
    refute image_exists?(tag2)

    # TLS asked for, but the certificates are not there: refused before anything runs.
    out =
      fails!(["--from-release", rel, "--tag", tag2],
        env: List.keyreplace(env, "DOCKER_CERT_PATH", 0, {"DOCKER_CERT_PATH", tmp_dir!()})
      )

    assert out =~ "ca.pem does not exist"
    assert out =~ "DOCKER_CERT_PATH"
  end

  test "ssh:// through the real ssh and `docker system dial-stdio` on the other side",
       %{rel: rel, repo: repo} do
    ssh = SshServer.start!(tmp_dir!("dr-e2e-ssh"))
    tag = "#{repo}/hello:ssh"
    on_exit(fn -> rm_images([tag]) end)
    address = "ssh://#{ssh.user}@127.0.0.1:#{ssh.port}"

    env = [
      {"DOCKER_HOST", address},
      {"PATH", ssh.path <> ":" <> System.get_env("PATH")}
    ]

    {out, _id} = mix_release!(["--from-release", rel, "--tag", tag], env: env)
    assert out =~ "connecting to the Docker engine at #{address}"
    assert image_exists?(tag)
    # As the Docker CLI runs it.
    assert File.read!(ssh.args_log) =~
             "-l #{ssh.user} -p #{ssh.port} -- 127.0.0.1 docker system dial-stdio"

    # A key the server does not accept: ssh's own words reach the user, nothing is tagged.
    tag2 = "#{repo}/hello:ssh-refused"

    out =
      fails!(["--from-release", rel, "--tag", tag2],
        env: [{"DR_TEST_SSH_CONFIG", ssh.other_config} | env]
      )

    assert out =~ "cannot reach the Docker engine at #{address} over ssh"
    assert out =~ "Permission denied"
    assert out =~ "ssh -p #{ssh.port} #{ssh.user}@127.0.0.1 docker version"
    refute image_exists?(tag2)
  end
end
