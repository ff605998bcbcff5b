defmodule DockerRelease.E2E.SupplyChainPushTest do
  # A pushed image's SBOM and signature, found and checked by a reader that follows the specs
  # and uses none of our code: examples/hello built on the host and in a Debian 13 builder,
  # pushed with `--push --sbom F --sign-key K.pem` to Debian's docker-registry (distribution
  # 2.8: no referrers API, so the referrers tag-schema fallback). Then, with curl and openssl:
  #
  # - the index tagged `sha256-<hex of the manifest digest>` lists an artifact of type
  #   `application/spdx+json` whose subject is the pushed manifest and whose one layer is the
  #   very file F, which is also the image's /sbom.spdx.json and validates with pyspdxtools;
  # - the manifest tagged `sha256-<hex>.sig` holds cosign's simple-signing payload (naming the
  #   pushed digest) and its signature, which `openssl dgst -sha256 -verify` accepts with the
  #   public key, and rejects for a changed payload;
  # - the private key appears in no output, no file written, no registry document.
  #
  # With several platforms (the release built once in the Debian 13 builder, the arm64 image's
  # files from the arm64 builder, `--platform linux/amd64,linux/arm64`): each platform's
  # manifest has its own SBOM referrer, whose blob is the SBOM in that image's app layer and
  # lists that platform's packages, and one file per platform beside `--sbom F`; the index and
  # every manifest have a `.sig` openssl accepts; a push whose attachments fail puts its tag
  # back and writes no file.
  use ExUnit.Case, async: false
  import DockerRelease.E2E
  import DockerRelease.E2E.Builder

  @moduletag :engine
  @index "application/vnd.oci.image.index.v1+json"
  @manifest "application/vnd.oci.image.manifest.v1+json"

  setup_all do
    tmp = tmp_dir!("dr-e2e-supply-push")
    %{port: port} = start_registry!(tmp)
    repo = "127.0.0.1:#{port}/#{unique_repo()}/hello"

    key = Path.join(tmp, "key.pem")
    pub = Path.join(tmp, "pub.pem")
    {_, 0} = cmd("openssl", ~w(ecparam -genkey -name prime256v1 -noout -out #{key}))
    {_, 0} = cmd("openssl", ~w(ec -in #{key} -pubout -out #{pub}))

    host = push!(tmp, "#{repo}:host", key, [], [])

    builder = ensure_builder!("trixie")
    dir = example_copy!("hello", "dr-e2e-supply-push")
    in_builder = push!(tmp, "#{repo}:trixie", key, ["--builder", builder], cd: dir, timeout: 900)

    arm64 = ensure_builder!("trixie-arm64")
    platforms = platform_args(builder, arm64)
    multi = push!(tmp, "#{repo}:multi", key, platforms, cd: dir, timeout: 900)

    %{
      tmp: tmp,
      port: port,
      repo: repo,
      key: key,
      pub: pub,
      host: host,
      builder: in_builder,
      multi: multi,
      platforms: platforms,
      project: dir
    }
  end

  defp platform_args(builder, arm64) do
    ["--builder", builder, "--platform", "linux/amd64,linux/arm64"] ++
      ["--platform-image", "linux/arm64=#{arm64}"]
  end

  # Push `tag` with an SBOM file, a signature and a metadata file; what the run printed and wrote.
  defp push!(tmp, tag, key, args, opts) do
    name = tag |> String.split(":") |> List.last()
    sbom = Path.join(tmp, "#{name}-#{rand()}.spdx.json")
    meta = Path.join(tmp, "#{name}-#{rand()}.json")

    {out, _} =
      mix_release!(
        ["--push", "--tag", tag, "--sbom", sbom, "--sign-key", key, "--metadata-file", meta] ++
          args,
        opts
      )

    %{out: out, digest: printed_digest!(out), sbom: sbom, meta: File.read!(meta)}
  end

  # The index digest the task printed (`Index     sha256:...`).
  defp printed_index!(out) do
    [_, index] =
      Regex.run(~r/^Index\s+(sha256:[0-9a-f]{64})\s*$/m, out) || flunk("no index in:\n#{out}")

    index
  end

  ## A reader that follows the specs: curl, python's json, openssl

  defp url(ctx, rest) do
    [_host, path] = String.split(ctx.repo, "/", parts: 2)
    "http://127.0.0.1:#{ctx.port}/v2/#{path}/#{rest}"
  end

  defp get!(ctx, rest, accept \\ nil) do
    headers = if accept, do: ["-H", "Accept: #{accept}"], else: []
    {body, status} = cmd("curl", ["-sfS" | headers] ++ [url(ctx, rest)], stderr: false)
    assert status == 0, "GET #{url(ctx, rest)} failed (curl #{status})"
    body
  end

  # Values out of a JSON document, read with Python's json module (no JSON library here):
  # `expr` over the document `d` gives a list; each value's text, one per element.
  defp values!(doc, expr) do
    script = "import json,sys\nd=json.loads(sys.stdin.read())\nfor v in #{expr}: print(v)"
    file = Path.join(System.tmp_dir!(), "dr-json-#{rand()}")
    File.write!(file, doc)

    try do
      {out, 0} = cmd("sh", ["-c", ~s(python3 -c "$1" < "$2"), "sh", script, file])
      String.split(out, "\n", trim: true)
    after
      File.rm(file)
    end
  end

  defp value!(doc, expr), do: hd(values!(doc, "[#{expr}]"))

  defp hex("sha256:" <> hex), do: hex

  defp sha256(bytes), do: "sha256:" <> Base.encode16(:crypto.hash(:sha256, bytes), case: :lower)

  # The SBOM found through the referrers fallback index of `digest`: {referrer digest, index, blob}.
  defp referred_sbom!(ctx, digest) do
    index = get!(ctx, "manifests/sha256-#{hex(digest)}", @index)
    assert value!(index, ~s|d["mediaType"]|) == @index

    [referrer_digest] =
      values!(
        index,
        ~s|[m["digest"] for m in d["manifests"] if m.get("artifactType") == "application/spdx+json"]|
      )

    referrer = get!(ctx, "manifests/#{referrer_digest}", @manifest)
    assert sha256(referrer) == referrer_digest
    assert value!(referrer, ~s|d["subject"]["digest"]|) == digest
    assert value!(referrer, ~s|d["artifactType"]|) == "application/spdx+json"
    assert value!(referrer, ~s|d["config"]["mediaType"]|) == "application/vnd.oci.empty.v1+json"
    assert [blob_digest] = values!(referrer, ~s|[l["digest"] for l in d["layers"]]|)
    blob = get!(ctx, "blobs/#{blob_digest}")
    assert sha256(blob) == blob_digest
    {referrer_digest, index, blob}
  end

  # The signatures in the `.sig` manifest of `digest`: [{payload, signature DER}].
  defp signatures!(ctx, digest) do
    sig = get!(ctx, "manifests/sha256-#{hex(digest)}.sig", @manifest)
    assert value!(sig, ~s|d["mediaType"]|) == @manifest

    layers =
      values!(
        sig,
        ~s|[l["digest"] + " " + l["annotations"]["dev.cosignproject.cosign/signature"] for l in d["layers"] if l["mediaType"] == "application/vnd.dev.cosign.simplesigning.v1+json"]|
      )

    for layer <- layers do
      [payload_digest, b64] = String.split(layer, " ")
      payload = get!(ctx, "blobs/#{payload_digest}")
      assert sha256(payload) == payload_digest
      {payload, Base.decode64!(b64)}
    end
  end

  # `openssl dgst -sha256 -verify PUB -signature SIG PAYLOAD`: whether openssl accepts it.
  defp openssl_verifies?(ctx, payload, der) do
    dir = tmp_dir!("dr-e2e-verify")
    {p, s} = {Path.join(dir, "payload"), Path.join(dir, "sig.der")}
    File.write!(p, payload)
    File.write!(s, der)
    {out, status} = cmd("openssl", ~w(dgst -sha256 -verify #{ctx.pub} -signature #{s} #{p}))
    assert status == 0 == (out =~ "Verified OK"), out
    status == 0
  end

  # The file at `path` in the image's app layer (the last), read from the registry.
  defp image_file!(ctx, digest, path) do
    manifest = get!(ctx, "manifests/#{digest}", @manifest)
    app = manifest |> values!(~s|[l["digest"] for l in d["layers"]]|) |> List.last()
    gz = get!(ctx, "blobs/#{app}")
    {:ok, files} = :erl_tar.extract({:binary, gz}, [:compressed, :memory])
    Enum.find_value(files, fn {name, bytes} -> to_string(name) == path && bytes end)
  end

  defp refute_key_in!(ctx, texts) do
    secret =
      for line <- String.split(File.read!(ctx.key), "\n"),
          String.length(line) > 20,
          not String.starts_with?(line, "-----"),
          do: line

    assert secret != []

    for text <- texts, line <- secret do
      refute String.contains?(text, line), "the private key appears in an output"
    end

    for text <- texts, do: refute(text =~ "PRIVATE KEY")
  end

  ## The tests

  for build <- [:host, :builder] do
    test "#{build} build: the SBOM referrer and the signature, found and verified without our code",
         ctx do
      run = ctx[unquote(build)]
      digest = run.digest

      # The SBOM: the referrer's blob is the --sbom file, which is the image's own SBOM.
      {referrer_digest, _index, blob} = referred_sbom!(ctx, digest)
      file = File.read!(run.sbom)
      assert blob == file
      assert image_file!(ctx, digest, "sbom.spdx.json") == file

      if venv = sbom_venv!() do
        {report, status} = cmd(Path.join(venv, "bin/pyspdxtools"), ["-i", run.sbom])
        assert status == 0, "pyspdxtools rejects the SBOM:\n#{report}"
      end

      # The signature: over the payload that names this very manifest, by our key only.
      assert [{payload, der}] = signatures!(ctx, digest)
      assert value!(payload, ~s|d["critical"]["image"]["docker-manifest-digest"]|) == digest
      assert value!(payload, ~s|d["critical"]["identity"]["docker-reference"]|) == ctx.repo
      assert value!(payload, ~s|d["critical"]["type"]|) == "cosign container image signature"
      assert openssl_verifies?(ctx, payload, der)
      changed = String.replace(payload, hex(digest), String.reverse(hex(digest)))
      assert changed != payload
      refute openssl_verifies?(ctx, changed, der)

      # The summary and the metadata file name them.
      assert run.out =~ "SBOM      referrer #{referrer_digest} (application/spdx+json)"
      assert run.out =~ "sha256-#{hex(digest)}"
      assert run.out =~ "Signed    #{ctx.repo}:sha256-#{hex(digest)}.sig"
      assert value!(run.meta, ~s|d["sbom_referrer"]["digest"]|) == referrer_digest
      assert value!(run.meta, ~s|d["sbom_referrer"]["subject"]|) == digest

      assert value!(run.meta, ~s|d["signatures"][0]["tag"]|) ==
               "#{ctx.repo}:sha256-#{hex(digest)}.sig"

      assert value!(run.meta, ~s|d["sbom_file"]["digest"]|) == sha256(file)

      refute_key_in!(ctx, [run.out, run.meta, file])
    end
  end

  test "pushing again adds nothing; another key adds a second signature, as cosign does", ctx do
    # A repository of its own: the other tests read the first push's documents.
    ctx = %{ctx | repo: ctx.repo <> "-again"}
    first = push!(ctx.tmp, "#{ctx.repo}:host", ctx.key, [], [])
    again = push!(ctx.tmp, "#{ctx.repo}:host", ctx.key, [], [])
    assert again.digest == first.digest
    {_, index, _} = referred_sbom!(ctx, again.digest)
    assert length(values!(index, ~s|d["manifests"]|)) == 1
    assert [_] = signatures!(ctx, again.digest)

    other = Path.join(ctx.tmp, "other.pem")

    {_, 0} =
      cmd("openssl", ~w(genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out #{other}))

    third = push!(ctx.tmp, "#{ctx.repo}:host", other, [], [])
    assert third.digest == first.digest
    assert [{first_payload, first_der}, {_, second_der}] = signatures!(ctx, third.digest)
    assert first_der != second_der
    # The first signature is still ours, and still verifies.
    assert openssl_verifies?(ctx, first_payload, first_der)
  end

  test "a failed push writes no --sbom file and moves no tag", ctx do
    sbom = Path.join(ctx.tmp, "never.spdx.json")
    dead = "127.0.0.1:#{free_port()}/nobody/hello:1"

    {out, status} = mix_release(["--push", "--tag", dead, "--sbom", sbom, "--sign-key", ctx.key])

    assert status != 0, out
    refute File.exists?(sbom)
    assert File.ls!(ctx.tmp) |> Enum.filter(&String.starts_with?(&1, ".never")) == []
    refute_key_in!(ctx, [out])
  end

  ## Several platforms

  # The OS packages an SPDX document lists: [{name, arch}] from their purls, sorted.
  defp deb_packages!(sbom) do
    sbom
    |> values!(
      ~s|sorted(r["referenceLocator"] for p in d["packages"] for r in p.get("externalRefs", []) if r["referenceType"] == "purl" and r["referenceLocator"].startswith("pkg:deb/"))|
    )
    |> Enum.map(fn purl ->
      [_, name] = Regex.run(~r|^pkg:deb/debian/([^@]+)@|, purl)
      [_, arch] = Regex.run(~r/[?&]arch=([^&]+)/, purl)
      {name, arch}
    end)
  end

  test "several platforms: each manifest's own SBOM and every document's signature, found and verified without our code",
       ctx do
    run = ctx.multi
    index_digest = printed_index!(run.out)

    # What the tag names, read from the registry: the index and its two manifests.
    index = get!(ctx, "manifests/multi", @index)
    assert sha256(index) == index_digest

    manifests =
      index
      |> values!(~s|[m["platform"]["architecture"] + " " + m["digest"] for m in d["manifests"]]|)
      |> Map.new(fn line -> line |> String.split(" ") |> List.to_tuple() end)

    assert Map.keys(manifests) == ["amd64", "arm64"]

    # Nothing is written at the --sbom path itself: a file per platform beside it.
    refute File.exists?(run.sbom)
    base = Path.rootname(run.sbom, ".spdx.json")

    packages =
      for {arch, digest} <- manifests, into: %{} do
        platform = if arch == "arm64", do: "linux/arm64/v8", else: "linux/#{arch}"
        file = "#{base}-#{String.replace(platform, "/", "-")}.spdx.json"

        # The platform's SBOM: the referrer of its manifest, the file in its app layer, the file.
        {referrer_digest, _index, blob} = referred_sbom!(ctx, digest)
        assert blob == image_file!(ctx, digest, "sbom.spdx.json")
        assert blob == File.read!(file)

        if venv = sbom_venv!() do
          {report, status} = cmd(Path.join(venv, "bin/pyspdxtools"), ["-i", file])
          assert status == 0, "pyspdxtools rejects the #{platform} SBOM:\n#{report}"
        end

        # It lists that platform's packages.
        debs = deb_packages!(blob)
        assert {"libc6", arch} in debs, inspect(debs)
        assert Enum.all?(debs, fn {_, a} -> a in [arch, "all"] end), inspect(debs)

        # The manifest's signature, over a payload naming it.
        assert [{payload, der}] = signatures!(ctx, digest)
        assert value!(payload, ~s|d["critical"]["image"]["docker-manifest-digest"]|) == digest
        assert openssl_verifies?(ctx, payload, der)

        # The summary and the metadata file name them, with the platform.
        assert run.out =~
                 "SBOM      referrer #{referrer_digest} (application/spdx+json) of #{platform}, listed in the referrers index #{ctx.repo}:sha256-#{hex(digest)}"

        assert run.out =~
                 "Signed    #{ctx.repo}:sha256-#{hex(digest)}.sig (sha256:"

        assert run.out =~
                 "SBOM file #{file} (#{platform}, application/spdx+json, #{sha256(blob)})"

        entry = ~s|[p for p in d["platforms"] if p["manifest_digest"] == "#{digest}"][0]|
        assert value!(run.meta, entry <> ~s|["platform"]|) == platform
        assert value!(run.meta, entry <> ~s|["sbom_referrer"]["digest"]|) == referrer_digest
        assert value!(run.meta, entry <> ~s|["sbom_file"]["path"]|) == file
        assert value!(run.meta, entry <> ~s|["sbom_file"]["digest"]|) == sha256(blob)

        assert value!(run.meta, entry <> ~s|["signatures"][0]["tag"]|) ==
                 "#{ctx.repo}:sha256-#{hex(digest)}.sig"

        {arch, debs}
      end

    # Both platforms' images hold the same Debian packages, each of its own architecture.
    names = fn debs -> Enum.map(debs, &elem(&1, 0)) end
    assert names.(packages["amd64"]) == names.(packages["arm64"])

    # The index: signed (what `cosign verify IMAGE:multi` checks first), no SBOM of its own.
    assert [{payload, der}] = signatures!(ctx, index_digest)
    assert value!(payload, ~s|d["critical"]["image"]["docker-manifest-digest"]|) == index_digest
    assert value!(payload, ~s|d["critical"]["identity"]["docker-reference"]|) == ctx.repo
    assert openssl_verifies?(ctx, payload, der)
    changed = String.replace(payload, hex(index_digest), String.reverse(hex(index_digest)))
    refute openssl_verifies?(ctx, changed, der)
    {_, missing} = cmd("curl", ["-sf", url(ctx, "manifests/sha256-#{hex(index_digest)}")])
    refute missing == 0, "the index has a referrers index of its own"

    assert run.out =~
             ~r/^Signed    #{Regex.escape(ctx.repo)}:sha256-#{hex(index_digest)}\.sig \(sha256:[0-9a-f]{64}\), the index$/m

    assert value!(run.meta, ~s|d["signatures"][0]["tag"]|) ==
             "#{ctx.repo}:sha256-#{hex(index_digest)}.sig"

    assert value!(run.meta, ~s|d["sbom_file"]|) == "None"
    assert value!(run.meta, ~s|d["sbom_referrer"]|) == "None"

    files = Path.wildcard(base <> "-linux-*.spdx.json")
    assert length(files) == 2, inspect(files)
    refute_key_in!(ctx, [run.out, run.meta | Enum.map(files, &File.read!/1)])
  end

  # A Docker schema 2 manifest put under `tag` with Python's urllib (not our code): Debian's
  # docker-registry answers a GET of it that accepts only OCI manifests with 400.
  @schema2 """
  import hashlib, json, sys, urllib.request
  repo, tag = sys.argv[1], sys.argv[2]
  def send(method, url, data=None, ctype=None):
      req = urllib.request.Request(url, data=data, method=method)
      if ctype: req.add_header("Content-Type", ctype)
      with urllib.request.urlopen(req) as r: return r
  cfg = b'{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}'
  digest = "sha256:" + hashlib.sha256(cfg).hexdigest()
  loc = send("POST", repo + "/blobs/uploads/").headers["Location"]
  send("PUT", loc + ("&" if "?" in loc else "?") + "digest=" + digest, cfg, "application/octet-stream")
  m = {"schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
       "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "digest": digest, "size": len(cfg)},
       "layers": []}
  send("PUT", repo + "/manifests/" + tag, json.dumps(m).encode(), m["mediaType"])
  """

  test "several platforms: when the attachments fail, the tag is put back and no SBOM file is written",
       ctx do
    # Another repository; its tag names an earlier manifest, and the index's `.sig` tag holds
    # a document the signature cannot be added to: the first attachment fails, after the tag
    # moved and before anything else was attached.
    ctx = %{ctx | repo: ctx.repo <> "-fail"}
    [_, path] = String.split(ctx.repo, "/", parts: 2)
    registry = "http://127.0.0.1:#{ctx.port}/v2/#{path}"
    index_digest = printed_index!(ctx.multi.out)

    for tag <- ["1", "sha256-#{hex(index_digest)}.sig"] do
      {out, status} = cmd("python3", ["-c", @schema2, registry, tag])
      assert status == 0, out
    end

    before = get!(ctx, "manifests/1", "application/vnd.docker.distribution.manifest.v2+json")
    sbom = Path.join(ctx.tmp, "fail-#{rand()}.spdx.json")
    meta = Path.join(ctx.tmp, "fail-#{rand()}.json")

    {out, status} =
      mix_release(
        ctx.platforms ++
          ["--push", "--tag", "#{ctx.repo}:1", "--sbom", sbom, "--sign-key", ctx.key] ++
          ["--metadata-file", meta],
        cd: ctx.project,
        timeout: 900
      )

    refute status == 0, out
    assert out =~ "image index #{index_digest} over", out
    assert out =~ "sha256-#{hex(index_digest)}.sig", out
    assert out =~ "put back as they were", out

    # The tag names what it named before; no referrer, signature or file was left.
    after_ = get!(ctx, "manifests/1", "application/vnd.docker.distribution.manifest.v2+json")
    assert after_ == before

    # The same images as the first push: their manifests have no referrer or signature here.
    manifests = Regex.scan(~r/^  linux\/\S+\s+(sha256:[0-9a-f]{64})\s*$/m, ctx.multi.out)
    assert length(manifests) == 2

    for [_, digest] <- manifests, tag <- ["sha256-#{hex(digest)}", "sha256-#{hex(digest)}.sig"] do
      {_, missing} = cmd("curl", ["-sf", url(ctx, "manifests/#{tag}")])
      refute missing == 0, "#{tag} was left"
    end

    refute File.exists?(meta)
    leftovers = File.ls!(ctx.tmp) |> Enum.filter(&String.contains?(&1, "fail-"))
    assert leftovers == [], inspect(leftovers)
    refute_key_in!(ctx, [out])
  end
end
