defmodule DockerRelease.E2E.RegistryAuthTest do
  # Pushing to a registry that asks for a password, with the credentials a user really has:
  # a Docker credential helper (`credsStore`, `credHelpers`) run by `mix docker.release` as a
  # separate OS process, where the BEAM ignores SIGCHLD; and a plain-HTTP registry reached
  # by a name that is not a loopback address, which needs --insecure-registry.
  use ExUnit.Case, async: false
  import DockerRelease.E2E

  @moduletag :engine

  @user "ci-user"
  @password "s3cret-pass"

  setup_all do
    dir = tmp_dir!("dr-e2e-regauth")
    htpasswd = Path.join(dir, "htpasswd")

    {out, 0} = cmd("htpasswd", ["-Bbn", @user, @password])
    File.write!(htpasswd, out)
    %{port: port, log: log} = start_registry!(dir, htpasswd: htpasswd)
    %{port: port, log: log, rel: release_copy!(Path.join(dir, "rel"))}
  end

  # A Docker config directory with `config`, and a directory of helper scripts on PATH:
  # `docker-credential-e2e` knows `host` (and logs every host it is asked about),
  # `docker-credential-sealed` fails like a locked password store.
  defp credentials!(host, config) do
    dir = tmp_dir!("dr-e2e-creds")
    bin = Path.join(dir, "bin")
    File.mkdir_p!(bin)
    log = Path.join(dir, "helper.log")

    helper!(bin, "e2e", """
    [ "$1" = get ] || exit 2
    host=$(cat)
    echo "$host" >> #{log}
    if [ "$host" = "#{host}" ]; then
      printf '{"ServerURL":"%s","Username":"#{@user}","Secret":"#{@password}"}' "$host"
    else
      echo 'credentials not found in native keychain'
      exit 1
    fi
    """)

    helper!(bin, "sealed", """
    cat >/dev/null
    echo 'the vault is sealed' >&2
    exit 3
    """)

    File.write!(Path.join(dir, "config.json"), config)

    env = [
      {"DOCKER_CONFIG", dir},
      {"PATH", bin <> ":" <> System.get_env("PATH")},
      {"DOCKER_RELEASE_REGISTRY_USERNAME", nil},
      {"DOCKER_RELEASE_REGISTRY_PASSWORD", nil}
    ]

    %{env: env, log: log}
  end

  defp helper!(bin, name, body) do
    path = Path.join(bin, "docker-credential-#{name}")
    File.write!(path, "#!/bin/sh\n" <> body)
    File.chmod!(path, 0o755)
  end

  test "a credsStore helper supplies the password under mix", %{port: port, rel: rel} do
    host = "127.0.0.1:#{port}"
    c = credentials!(host, ~s({"credsStore": "e2e"}))
    tag = "#{host}/team/hello:helper"

    {out, _} = mix_release!(["--from-release", rel, "--push", "--tag", tag], env: c.env)

    assert out =~ "Pushed    #{tag}"
    assert File.read!(c.log) == host <> "\n"

    {raw, 0} =
      cmd("skopeo", [
        "inspect",
        "--raw",
        "--tls-verify=false",
        "--creds",
        "#{@user}:#{@password}",
        "docker://#{tag}"
      ])

    assert "sha256:" <> Base.encode16(:crypto.hash(:sha256, raw), case: :lower) ==
             printed_digest!(out)
  end

  test "a credHelpers helper that fails is named with its status and words", %{
    port: port,
    rel: rel
  } do
    host = "127.0.0.1:#{port}"
    c = credentials!(host, ~s({"credHelpers": {"#{host}": "sealed"}}))

    {out, status} =
      mix_release(["--from-release", rel, "--push", "--tag", "#{host}/team/hello:sealed"],
        env: c.env
      )

    assert status != 0
    assert out =~ "docker-credential-sealed"
    assert out =~ "exited with status 3: the vault is sealed"
    refute out =~ "os error 10"
  end

  test "without credentials the registry's refusal is reported", %{port: port, rel: rel} do
    c = credentials!("nobody", ~s({}))

    {out, status} =
      mix_release(["--from-release", rel, "--push", "--tag", "127.0.0.1:#{port}/team/hello:anon"],
        env: c.env
      )

    assert status != 0
    assert out =~ "asks for a user name and password, and none are configured"
  end

  test "a plain-HTTP registry under a non-loopback name gets a hint to --insecure-registry",
       %{port: port, rel: rel} do
    # The machine's own name: it resolves to this machine, but is not a loopback *name*, so
    # HTTPS is tried first, as for any remote registry.
    {:ok, name} = :inet.gethostname()
    name = to_string(name)

    case :inet.getaddr(String.to_charlist(name), :inet) do
      {:ok, {127, _, _, _}} ->
        :ok

      other ->
        flunk("this test needs the host name #{name} to resolve to 127.x, got #{inspect(other)}")
    end

    host = "#{name}:#{port}"
    c = credentials!(host, ~s({"credsStore": "e2e"}))
    tag = "#{host}/team/hello:plain"

    {out, status} = mix_release(["--from-release", rel, "--push", "--tag", tag], env: c.env)
    assert status != 0
    assert out =~ "cannot talk to #{host}"
    assert out =~ "it answers plain HTTP, not HTTPS: pass --insecure-registry"

    {out, _} =
      mix_release!(["--from-release", rel, "--push", "--insecure-registry", "--tag", tag],
        env: c.env
      )

    assert out =~ "Pushed    #{tag}"
  end
end
