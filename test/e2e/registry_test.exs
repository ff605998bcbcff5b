defmodule DockerRelease.E2E.RegistryTest do
  # Layered, reproducible images pushed straight to a registry, as a user would: examples/with_deps
  # built on the host and pushed with `--push` to Debian's docker-registry on loopback, pulled
  # and run by the engine; a one-line change pushed again uploads only the app layer (read from
  # the registry's request log); the same source built in two directories gives identical bytes.
  use ExUnit.Case, async: false
  @moduletag :engine

  import DockerRelease.E2E
  import DockerRelease.E2E.Builder, only: [example_copy!: 2]

  setup_all do
    dir = tmp_dir!("dr-e2e-registry")
    %{port: port, log: log} = start_registry!(dir)

    project = example_copy!("with_deps", "dr-e2e-registry")
    repo = "127.0.0.1:#{port}/team/with_deps"
    on_exit(fn -> rm_images(["#{repo}:1", "#{repo}:2"]) end)
    %{port: port, log: log, project: project, repo: repo}
  end

  # The empty JSON blob `{}`: the config of the SBOM referrer every push attaches.
  @empty "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"

  # The image's blobs uploaded so far: the SBOM referrer's (the --sbom files' bytes, `{}`) left out.
  defp uploads(log, sboms) do
    attached = [@empty | Enum.map(sboms, &sha256(File.read!(&1)))]

    # The access log has one line per request; blob uploads end with PUT ...?digest=sha256:...
    Regex.scan(
      ~r/"PUT \/v2\/team\/with_deps\/blobs\/uploads\/[^"]*digest=sha256(?::|%3A)([0-9a-f]{64})/,
      File.read!(log)
    )
    |> Enum.map(fn [_, hex] -> "sha256:" <> hex end)
    |> Enum.uniq()
    |> Enum.reject(&(&1 in attached))
  end

  defp sha256(bytes), do: "sha256:" <> Base.encode16(:crypto.hash(:sha256, bytes), case: :lower)

  defp metadata!(path) do
    json = File.read!(path)
    [_, uploaded] = Regex.run(~r/"uploaded_bytes":\s*(\d+)/, json)
    [_, compressed] = Regex.run(~r/"compressed_size":\s*(\d+)/, json)
    layers = Regex.scan(~r/"name":\s*"(\w+)",\s*"digest":\s*"(sha256:[0-9a-f]{64})"/, json)

    %{
      uploaded: String.to_integer(uploaded),
      compressed: String.to_integer(compressed),
      layers: Map.new(layers, fn [_, name, digest] -> {name, digest} end)
    }
  end

  test "push, pull, run; a one-line change uploads only the app layer", ctx do
    meta1 = Path.join(ctx.project, "meta1.json")
    sbom1 = Path.join(ctx.project, "sbom1.json")

    {out, _id} =
      mix_release!(
        ["--push", "--tag", "#{ctx.repo}:1", "--metadata-file", meta1, "--sbom", sbom1],
        cd: ctx.project,
        timeout: 600
      )

    digest = printed_digest!(out)
    m1 = metadata!(meta1)
    assert Map.keys(m1.layers) |> Enum.sort() == ~w(app deps erts runtime)

    # The digest printed is what the registry serves.
    {raw, 0} = cmd("skopeo", ["inspect", "--raw", "--tls-verify=false", "docker://#{ctx.repo}:1"])
    assert "sha256:" <> Base.encode16(:crypto.hash(:sha256, raw), case: :lower) == digest

    # The engine pulls it from the registry and it runs.
    {_, 0} = docker(["pull", "#{ctx.repo}:1"], timeout: 120)

    {run, 0} =
      docker(["run", "--rm", "#{ctx.repo}:1", "eval", "IO.puts(WithDeps.Greeting.text())"])

    assert run =~ "hello"

    first_uploads = uploads(ctx.log, [sbom1])
    assert (Enum.sort(first_uploads) -- Enum.sort(Map.values(m1.layers))) |> length() == 1

    # One line changed in the app: only the app layer (and the config) is uploaded again.
    greeting = Path.join(ctx.project, "lib/with_deps/greeting.ex")
    File.write!(greeting, String.replace(File.read!(greeting), ~s("hello"), ~s("howdy")))
    meta2 = Path.join(ctx.project, "meta2.json")
    sbom2 = Path.join(ctx.project, "sbom2.json")

    mix_release!(["--push", "--tag", "#{ctx.repo}:2", "--metadata-file", meta2, "--sbom", sbom2],
      cd: ctx.project,
      timeout: 600
    )

    m2 = metadata!(meta2)

    for name <- ~w(runtime erts deps), do: assert(m2.layers[name] == m1.layers[name], name)
    assert m2.layers["app"] != m1.layers["app"]
    new_uploads = uploads(ctx.log, [sbom1, sbom2]) -- first_uploads
    assert m2.layers["app"] in new_uploads

    assert length(new_uploads) == 2,
           "expected the app layer and the config, got #{inspect(new_uploads)}"

    # Target: a second push after a one-line change uploads at most 5% of the image's bytes.
    assert m2.uploaded / m2.compressed <= 0.05,
           "uploaded #{m2.uploaded} of #{m2.compressed} bytes"

    {_, 0} = docker(["pull", "#{ctx.repo}:2"], timeout: 120)

    {run, 0} =
      docker(["run", "--rm", "#{ctx.repo}:2", "eval", "IO.puts(WithDeps.Greeting.text())"])

    assert run =~ "howdy"
  end

  test "the same source built in two directories gives byte-identical archives" do
    a = example_copy!("hello", "dr-e2e-repro-a")
    b = example_copy!("hello", "dr-e2e-repro-b")
    # Another time of day: different file mtimes in the second copy.
    {_, 0} = cmd("sh", ["-c", "find #{b} -type f -exec touch -d '2021-01-01 12:00' {} +"])
    env = [{"SOURCE_DATE_EPOCH", "1700000000"}]
    mix_release!(["--output", Path.join(a, "image.tar")], cd: a, env: env)
    mix_release!(["--output", Path.join(b, "image.tar")], cd: b, env: env)
    {_, status} = cmd("cmp", [Path.join(a, "image.tar"), Path.join(b, "image.tar")])
    assert status == 0, "the archives differ"
  end
end
