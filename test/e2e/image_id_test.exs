defmodule DockerRelease.E2E.ImageIdTest do
  # The image ID the task prints is the engine's ID and the sha256 of the config blob of an
  # archive of the same build; the same inputs give the same ID.
  use ExUnit.Case, async: false
  import DockerRelease.E2E

  @moduletag :engine

  setup_all do
    repo = unique_repo()
    tags = for t <- ~w(full a b nc), do: "#{repo}/hello:#{t}"
    on_exit(fn -> rm_images(tags) end)
    [full, a, b, nc] = tags

    # A full build (it assembles the release), then builds from a copy of that release.
    {_, full_id} = mix_release!(["--tag", full])
    tmp = tmp_dir!()
    rel = Path.join(tmp, "rel")
    {_, 0} = cmd("cp", ["-a", hello_release_dir(), rel])

    {_, a_id} = mix_release!(["--from-release", rel, "--tag", a])
    {b_out, b_id} = mix_release!(["--from-release", rel, "--tag", b])
    {nc_out, nc_id} = mix_release!(["--from-release", rel, "--tag", nc, "--no-cache"])
    archive = Path.join(tmp, "hello.tar")

    {out, archive_id} =
      mix_release!(["--from-release", rel, "--tag", "#{repo}/hello:archive", "--output", archive])

    %{
      tags: %{full: full, a: a, b: b},
      ids: %{full: full_id, a: a_id, b: b_id, nc: nc_id, archive: archive_id},
      outs: %{b: b_out, nc: nc_out},
      archive: archive,
      archive_digest: printed_digest!(out)
    }
  end

  test "the printed image ID is the engine's image ID", %{tags: tags, ids: ids} do
    for which <- [:full, :a, :b] do
      assert image_inspect!(tags[which], "{{.Id}}") == ids[which], "#{which}"
    end
  end

  test "the printed image ID is the sha256 of the config blob of an --output archive of the same build",
       %{ids: ids, archive: archive} do
    {manifest, 0} = cmd("tar", ["-xOf", archive, "manifest.json"], stderr: false)
    assert [_, hex] = Regex.run(~r/"Config":"blobs\/sha256\/([0-9a-f]{64})"/, manifest), manifest

    {sum, 0} =
      cmd("sh", ["-c", ~s(tar -xOf "$1" "$2" | sha256sum), "sh", archive, "blobs/sha256/#{hex}"])

    assert [^hex | _] = String.split(sum)
    assert ids.archive == "sha256:" <> hex
    # The archive was built from the same release as the engine builds: same image.
    assert ids.archive == ids.a
  end

  test "the printed manifest digest is the sha256 of the manifest blob in the archive",
       %{archive: archive, archive_digest: "sha256:" <> hex} do
    {index, 0} = cmd("tar", ["-xOf", archive, "index.json"], stderr: false)
    assert index =~ "sha256:" <> hex

    {sum, 0} =
      cmd("sh", ["-c", ~s(tar -xOf "$1" "$2" | sha256sum), "sh", archive, "blobs/sha256/#{hex}"])

    assert [^hex | _] = String.split(sum)
  end

  test "the same release built twice under two tags gives the same image ID", %{
    tags: tags,
    ids: ids
  } do
    assert ids.a == ids.b
    assert image_inspect!(tags.a, "{{.Id}}") == image_inspect!(tags.b, "{{.Id}}")
  end

  test "the layer cache: a second build takes every layer from it; --no-cache compresses them; same ID",
       %{ids: ids, outs: outs} do
    # Build b repeats build a exactly: every layer is byte for byte one compressed before.
    for name <- ~w(runtime erts app) do
      assert outs.b =~ ~r/==> layer \d\/3: #{name} unchanged, taken from the layer cache/, outs.b
    end

    refute outs.b =~ "==> writing layer"
    assert outs.nc =~ "==> writing layer 1/3: runtime"
    refute outs.nc =~ "taken from the layer cache"
    assert ids.nc == ids.b
  end

  test "the release's location does not change the image (a copy elsewhere gives the same ID)",
       %{ids: ids} do
    assert ids.full == ids.a
  end
end
