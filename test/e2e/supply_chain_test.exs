defmodule DockerRelease.E2E.SupplyChainTest do
  # What scanners and people read in the image, checked with independent tools: examples/hello
  # built on the host and in a Debian 13 builder carries the records of exactly the OS
  # packages that contributed files, as dpkg itself reports them (`dpkg-query -W`, `dpkg -S`);
  # its SBOM validates with pyspdxtools (and CycloneDX's schema) and lists every application
  # of the release; the manifest's annotations and the config's labels are what was asked.
  #
  # Trivy and Grype cannot be installed here (no package, no network): the records follow the
  # layout their sources read (distroless `status.d`, `/etc/debian_version`, `/etc/os-release`;
  # see native/image_core/src/supply/pkgdb.rs), and dpkg's own reader stands in for them.
  use ExUnit.Case, async: false
  import DockerRelease.E2E
  import DockerRelease.E2E.Builder

  @moduletag :engine
  @epoch "1700000000"
  @created "2023-11-14T22:13:20Z"
  @keys Path.expand("../../native/image_core/tests/fixtures/keys", __DIR__)

  setup_all do
    tmp = tmp_dir!()
    repo = unique_repo()
    host = Path.join(tmp, "host.tar")

    {host_out, _} =
      mix_release!(
        [
          "--tag",
          "#{repo}/hello:host",
          "--output",
          host,
          "--label",
          "com.example.team=core",
          "--label",
          "org.opencontainers.image.title=hello-custom",
          "--annotation",
          "com.example.ticket=OPS-12"
        ],
        env: [{"SOURCE_DATE_EPOCH", @epoch}]
      )

    builder = ensure_builder!("trixie")
    dir = example_copy!("hello", "dr-e2e-supply")
    trixie = Path.join(tmp, "trixie.tar")

    mix_release!(["--builder", builder, "--tag", "#{repo}/hello:trixie", "--output", trixie],
      cd: dir,
      env: [{"SOURCE_DATE_EPOCH", @epoch}],
      timeout: 900
    )

    %{
      repo: repo,
      tmp: tmp,
      host: host,
      host_out: host_out,
      trixie: trixie,
      builder: builder,
      rel: release_copy!(Path.join(tmp, "rel"))
    }
  end

  ## Reading an archive

  # The layers of the archive's image, bottom first: %{types: %{path => type}, files: %{path => bytes}}.
  defp layers!(archive) do
    files = tar_files!(archive)
    {_config, layer_paths} = manifest_paths!(files["manifest.json"])

    for path <- layer_paths do
      gz = files[path]
      {:ok, table} = :erl_tar.table({:binary, gz}, [:compressed, :verbose])
      {:ok, contents} = :erl_tar.extract({:binary, gz}, [:compressed, :memory])

      %{
        types: Map.new(table, fn {name, type, _, _, _, _, _} -> {image_path(name), type} end),
        files: Map.new(contents, fn {name, bytes} -> {image_path(name), bytes} end)
      }
    end
  end

  defp image_path(name), do: "/" <> (name |> to_string() |> String.trim_trailing("/"))

  defp records(runtime) do
    for {"/var/lib/dpkg/status.d/" <> name, bytes} <- runtime.files, into: %{}, do: {name, bytes}
  end

  @generated ~w(/etc/passwd /etc/group /etc/nsswitch.conf)

  # Files and symlinks of the runtime layer copied from the build environment.
  defp copied(runtime) do
    for {path, type} <- runtime.types,
        type in [:regular, :symlink],
        path not in @generated,
        not String.starts_with?(path, "/var/lib/dpkg/status.d/"),
        do: path
  end

  ## dpkg, on the host or in the builder

  @query "${Package} ${Version} ${Architecture} ${source:Package} ${source:Version}\n"

  defp in_env(nil, exe, args), do: cmd(exe, args, stderr: false)

  defp in_env(image, exe, args),
    do: docker(["run", "--rm", "--entrypoint", exe, image | args], stderr: false, timeout: 120)

  defp lines({out, _status}), do: out |> String.split("\n", trim: true) |> MapSet.new()

  # Merged /usr: a package lists `/lib/…` or `/usr/lib/…`, whichever it shipped.
  defp alias_of(path) do
    Enum.find_value(~w(/bin/ /sbin/ /lib/ /lib64/ /lib32/ /libx32/), fn d ->
      cond do
        String.starts_with?(path, "/usr" <> d) -> String.replace_prefix(path, "/usr", "")
        String.starts_with?(path, d) -> "/usr" <> path
        true -> nil
      end
    end)
  end

  # The packages `dpkg -S` names for `paths` (each asked under both spellings).
  defp dpkg_owners(env, paths) do
    asked = paths ++ Enum.flat_map(paths, &List.wrap(alias_of(&1)))
    # Paths no package lists are expected (one of the two spellings, generated files).
    {out, _} = in_env(env, "sh", ["-c", ~s(dpkg -S "$@" 2>/dev/null; true), "sh" | asked])

    for line <- String.split(out, "\n", trim: true),
        not String.starts_with?(line, "diversion by"),
        [pkgs, _path] <- [String.split(line, ": ", parts: 2)],
        pkg <- String.split(pkgs, ", "),
        into: MapSet.new(),
        do: pkg |> String.split(":") |> hd()
  end

  # Paths of the build environment that are directories (symlinks followed).
  defp directories(env, paths) do
    {out, _} =
      in_env(env, "sh", ["-c", ~s(for p; do [ -d "$p" ] && echo "$p"; done; true), "sh" | paths])

    out |> String.split("\n", trim: true) |> MapSet.new()
  end

  # sha256 of each path in the build environment that exists.
  defp sums(env, paths) do
    # Candidates that do not exist are expected (the OTP or the Elixir spelling).
    {out, _} = in_env(env, "sh", ["-c", ~s(sha256sum "$@" 2>/dev/null; true), "sh" | paths])

    for line <- String.split(out, "\n", trim: true),
        [sum, path] <- [String.split(line, ~r/\s+\*?/, parts: 2)],
        into: %{},
        do: {path, sum}
  end

  # The files of the build environment ERTS and the OTP/Elixir applications in /app were
  # copied from: same content at the OTP or Elixir root.
  defp origins(env, layers) do
    files = Enum.reduce(layers, %{}, &Map.merge(&2, &1.files))

    candidates =
      for {path, bytes} <- files,
          candidate <- origin_candidates(path),
          do: {candidate, :crypto.hash(:sha256, bytes) |> Base.encode16(case: :lower)}

    found = sums(env, Enum.map(candidates, &elem(&1, 0)))
    for {c, sum} <- candidates, found[c] == sum, do: c
  end

  defp origin_candidates(path) do
    cond do
      m = Regex.run(~r{^/app/(erts-[^/]+)/bin/erl_child_setup$}, path) ->
        ["/usr/lib/erlang/#{Enum.at(m, 1)}/bin/erl_child_setup"]

      m = Regex.run(~r{^/app/lib/(([a-z_0-9]+)-[^/]+)/ebin/([a-z_0-9]+)\.app$}, path) ->
        [_, dir, name, _] = m

        [
          "/usr/lib/erlang/lib/#{dir}/ebin/#{name}.app",
          "/usr/lib/elixir/lib/#{name}/ebin/#{name}.app"
        ]

      true ->
        []
    end
  end

  defp check_records!(archive, env, tmp) do
    layers = layers!(archive)
    [runtime | _] = layers
    records = records(runtime)
    assert map_size(records) > 5

    # dpkg's own reader takes the records as a database, and says what the build environment's does.
    admin = Path.join(tmp, "admin-#{rand()}")
    File.mkdir_p!(Path.join(admin, "info"))
    File.write!(Path.join(admin, "status"), Enum.map_join(records, "\n", &elem(&1, 1)))
    ours = lines(cmd("dpkg-query", ["--admindir=#{admin}", "-W", "-f", @query], stderr: false))
    theirs = lines(in_env(env, "dpkg-query", ["-W", "-f", @query | Map.keys(records)]))
    assert ours == theirs
    assert MapSet.size(ours) == map_size(records)

    # Exactly the packages that contributed files: what `dpkg -S` names for every copied file
    # and symlink (not links to directories), and for the files ERTS and the OTP and Elixir
    # applications were copied from.
    copied = copied(runtime)
    dirs = directories(env, copied)
    owned_paths = Enum.reject(copied, &MapSet.member?(dirs, &1)) ++ origins(env, layers)
    expected = dpkg_owners(env, owned_paths)
    assert MapSet.new(Map.keys(records)) == expected

    for must <- ~w(libc6 base-files erlang-base elixir) do
      assert Map.has_key?(records, must), "no record of #{must}: #{inspect(Map.keys(records))}"
    end

    # What tells scanners the distribution.
    assert runtime.types["/etc/os-release"] == :symlink
    assert runtime.files["/usr/lib/os-release"] =~ "ID=debian"
    assert runtime.files["/etc/debian_version"] =~ ~r/^\d/
    layers
  end

  test "host build: the records are the host's, for exactly the packages that contributed", ctx do
    check_records!(ctx.host, nil, ctx.tmp)
  end

  test "builder build: the records are the builder's, for exactly the packages that contributed",
       ctx do
    layers = check_records!(ctx.trixie, ctx.builder, ctx.tmp)
    # Debian 13's own package names, not the host's (Debian 12's libssl3).
    assert Map.has_key?(records(hd(layers)), "libssl3t64")
  end

  ## The SBOM

  # `name version` of every package of an SPDX document, read with Python's json module.
  defp spdx_packages(venv, file) do
    script =
      ~s{import json,sys\nfor p in json.load(open(sys.argv[1]))["packages"]: print(p["name"], p.get("versionInfo", ""))}

    {out, 0} = cmd(Path.join(venv, "bin/python"), ["-c", script, file])
    out |> String.split("\n", trim: true) |> MapSet.new()
  end

  test "the embedded SBOM validates with pyspdxtools and lists every part of the release", ctx do
    if venv = sbom_venv!() do
      layers = layers!(ctx.host)
      app = List.last(layers)
      sbom = app.files["/sbom.spdx.json"]
      assert sbom, "no /sbom.spdx.json in the app layer"
      file = Path.join(ctx.tmp, "host.spdx.json")
      File.write!(file, sbom)
      {report, status} = cmd(Path.join(venv, "bin/pyspdxtools"), ["-i", file])
      assert status == 0, "pyspdxtools rejects the SBOM:\n#{report}"

      listed = spdx_packages(venv, file)
      paths = Enum.flat_map(layers, &Map.keys(&1.types))

      parts =
        for p <- paths,
            m = Regex.run(~r{^/app/(?:lib/)?([a-z_0-9]+)-([^/]+)$}, p),
            do: "#{Enum.at(m, 1)} #{Enum.at(m, 2)}"

      assert Enum.any?(parts, &String.starts_with?(&1, "erts "))
      assert length(parts) > 5

      for part <- parts, do: assert(part in listed, "#{part} is not in the SBOM")

      for {name, record} <- records(hd(layers)) do
        [_, version] = Regex.run(~r/^Version: (.*)$/m, record)
        assert "#{name} #{version}" in listed
      end

      assert sbom =~ "pkg:deb/debian/libc6@"
      assert sbom =~ "\"created\": \"#{@created}\""
    end
  end

  test "--sbom-format cyclonedx embeds /sbom.cdx.json valid for the CycloneDX 1.5 schema; --no-sbom none",
       ctx do
    if venv = sbom_venv!() do
      cdx = Path.join(ctx.tmp, "cdx.tar")

      mix_release!(
        ~w(--from-release #{ctx.rel} --tag #{ctx.repo}/hello:cdx --output #{cdx} --sbom-format cyclonedx),
        env: [{"SOURCE_DATE_EPOCH", @epoch}]
      )

      app = List.last(layers!(cdx))
      refute Map.has_key?(app.files, "/sbom.spdx.json")
      file = Path.join(ctx.tmp, "sbom.cdx.json")
      File.write!(file, app.files["/sbom.cdx.json"])

      script = """
      import sys
      from cyclonedx.schema import SchemaVersion
      from cyclonedx.validation.json import JsonStrictValidator
      errors = JsonStrictValidator(SchemaVersion.V1_5).validate_str(open(sys.argv[1]).read(), all_errors=True)
      errors = [] if errors is None else list(errors)
      for e in errors:
          print(e)
      sys.exit(1 if errors else 0)
      """

      {report, status} = cmd(Path.join(venv, "bin/python"), ["-c", script, file])
      assert status == 0, "the CycloneDX 1.5 schema rejects the SBOM:\n#{report}"
    end

    none = Path.join(ctx.tmp, "none.tar")

    {out, _} =
      mix_release!(
        ~w(--from-release #{ctx.rel} --tag #{ctx.repo}/hello:none --output #{none} --no-sbom --list-files)
      )

    refute out =~ "/sbom."
    layers = layers!(none)
    refute Enum.any?(layers, &Map.has_key?(&1.types, "/sbom.spdx.json"))
    # The records are there all the same: they are not the SBOM.
    assert map_size(records(hd(layers))) > 5
  end

  ## Labels and annotations

  test "annotations on the manifest, labels in the config; the user's win", ctx do
    case System.find_executable("skopeo") do
      nil ->
        missing!("skopeo")

      skopeo ->
        {raw, 0} = cmd(skopeo, ["inspect", "--raw", "oci-archive:#{ctx.host}"], stderr: false)
        assert raw =~ ~s("org.opencontainers.image.created":"#{@created}")
        assert raw =~ ~s("org.opencontainers.image.version":"0.1.0")
        assert raw =~ ~s("com.example.ticket":"OPS-12")
        # The task's printed digest is the manifest's.
        assert printed_digest!(ctx.host_out) ==
                 "sha256:" <>
                   (:crypto.hash(:sha256, raw) |> Base.encode16(case: :lower))
    end

    tag = "#{ctx.repo}/hello:host"
    on_exit(fn -> rm_images([tag]) end)
    docker!(["load", "-i", ctx.host])
    labels = image_inspect!(tag, "{{json .Config.Labels}}")
    assert labels =~ ~s("com.example.team":"core")
    assert labels =~ ~s("org.opencontainers.image.title":"hello-custom")
    assert labels =~ ~s("org.opencontainers.image.created":"#{@created}")
    assert docker!(["run", "--rm", tag, "eval", "IO.puts(:ok)"], stderr: false) =~ "ok"
  end

  ## Bad input: refused before any work, nothing written, the key never shown

  defp refused!(args, env \\ []) do
    out_file = Path.join(tmp_dir!(), "never.tar")
    {out, status} = mix_release(args ++ ["--output", out_file], env: env)
    assert status != 0, "expected a failure:\n#{out}"
    refute out =~ "==> building release"
    refute File.exists?(out_file)
    out
  end

  test "a key that is not ECDSA P-256, an unwritable --sbom, a label without =: the rule, nothing written",
       ctx do
    for {file, why} <- [
          {"p384-sec1.pem", "is an ECDSA P-384 key, not ECDSA P-256"},
          {"rsa-pkcs8.pem", "is an RSA key"},
          {"cosign-encrypted.pem", "is an encrypted cosign key"},
          {"p256-public.pem", "is a public key"}
        ] do
      path = Path.join(@keys, file)
      out = refused!(~w(--from-release #{ctx.rel} --sign-key #{path}))
      assert out =~ "invalid signing key: --sign-key #{path} #{why}"

      for line <- String.split(File.read!(path), "\n"),
          String.length(line) > 20,
          not String.starts_with?(line, "-----"),
          do: refute(out =~ line)
    end

    out =
      refused!(~w(--from-release #{ctx.rel}), [{"DOCKER_RELEASE_SIGN_KEY", "secret-not-a-key"}])

    assert out =~ "invalid signing key: DOCKER_RELEASE_SIGN_KEY is not a PEM private key"
    refute out =~ "secret-not-a-key"

    out = refused!(~w(--from-release #{ctx.rel} --sbom /proc/nope/sbom.json))
    assert out =~ "--sbom /proc/nope/sbom.json cannot be written: its directory /proc/nope"

    out = refused!(~w(--from-release #{ctx.rel} --label foo))
    assert out =~ ~s|--label takes KEY=VALUE (with =), got: "foo"|
    out = refused!(~w(--from-release #{ctx.rel} --annotation =x))
    assert out =~ ~s|--annotation takes KEY=VALUE with a non-empty key, got: "=x"|
  end

  test "a usable key is checked, and the run says that it does not sign an image it does not push",
       ctx do
    out_file = Path.join(ctx.tmp, "signed.tar")
    key = Path.join(@keys, "p256-sec1.pem")

    {out, _} =
      mix_release!(
        ~w(--from-release #{ctx.rel} --tag #{ctx.repo}/hello:key --output #{out_file} --sign-key #{key})
      )

    assert out =~ "not signing: nothing is pushed"

    for line <- String.split(File.read!(key), "\n"),
        String.length(line) > 20,
        not String.starts_with?(line, "-----"),
        do: refute(out =~ line)

    {:ok, archive} = File.read(out_file)
    refute archive =~ "BEGIN EC PRIVATE KEY"
  end
end
