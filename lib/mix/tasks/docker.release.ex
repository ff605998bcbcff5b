defmodule Mix.Tasks.Docker.Release do
  @shortdoc "Builds the release into a minimal container image"

  @moduledoc """
  Builds the project's release and turns it into a minimal container image: no base image, no
  Dockerfile. The image holds the release at `/app` and, beside it, only the runtime files the
  release needs, copied from the environment that built it (so its libraries always match ERTS
  and the NIFs): the shared-library closure of every ELF file, `/bin/sh` and the utilities the
  release scripts call, a CA bundle, the UTF-8 locale, and `/etc/passwd`, `/etc/group` with a
  non-root user.

      mix docker.release

  builds `MIX_ENV=prod mix release` in a separate `mix` process, loads the image into the Docker
  engine and tags it `APP:VERSION` and `APP:latest` (the release's own `version:` when it has
  one; an umbrella's image is named after its release). Then:

      docker run --rm -p 4000:4000 APP:latest            # runs `bin/APP start`
      docker run --rm APP:latest eval 'IO.puts(:ok)'     # any release command

  The image's user is numeric (`65532:65532` by default). No cookie from the build is in the
  image, not even one set with `cookie:` in the release config (the task says so): set
  `RELEASE_COOKIE` to connect nodes; without it each container generates its own at start
  (kept in `/run/release`, used by `rpc` and `remote` in the same container; `start` and
  `daemon` say so once). A crashing node writes `/tmp/erl_crash.dump` (`ERL_CRASH_DUMP`).

  Which release: with no `releases:` key, the project's default release (what a plain
  `mix release` builds); with one release, that one; with several, `--release NAME` or the one
  `default_release:` names. An umbrella needs a release under `releases:`: without one the task
  stops before building and prints the lines to add to `mix.exs`. Releases that an image cannot
  run (`include_erts: false`, `include_executables_for` without `:unix`) are refused the same
  way. A host build warns about lines of the release that contain a path of the build machine
  (a `vm.args.eex` with `<%= @release.path %>`): they do not hold at `/app`; `--builder`
  assembles the release at `/app`, where they do.

  The engine is found as the Docker CLI finds it: `DOCKER_HOST` (`unix:///path`,
  `tcp://host:port`, `ssh://[user@]host[:port]`), else the current Docker context, else
  `/var/run/docker.sock`. With `DOCKER_TLS_VERIFY` set, `tcp://` uses TLS with `ca.pem`,
  `cert.pem` and `key.pem` from `DOCKER_CERT_PATH` (default `~/.docker`), as GitLab's
  docker-in-docker on port 2376 sets up. `ssh://` runs `ssh HOST docker system dial-stdio`
  (the remote needs the `docker` CLI; ssh options come from your ssh configuration).
  Podman's Docker-compatible API works too (`DOCKER_HOST=unix://…/podman.sock`); the summary
  then says `podman run`.

  When nothing names an engine and there is no socket at `/var/run/docker.sock`, the image is
  written as an archive under `_build/docker_release/` instead (and the task says so);
  `docker load -i`, `podman load -i` and `skopeo` read it. An engine named explicitly
  (`DOCKER_HOST`, a context) that does not exist is an error, found before the release is
  built.

  ## Options

    * `--env ENV` - the Mix environment of the release build. Default `prod`.
    * `--release NAME` - which release to build when `releases:` has several (and
      `default_release:` names none).
    * `--from-release DIR` - use an already-assembled release; skip the build.
    * `--builder IMAGE` - build the release inside a container of IMAGE (an image with Elixir
      and OTP, of the OS you deploy on; it must exist in the engine) instead of on the host. The
      project is uploaded (without `_build`, `deps`, `.git` and what `.dockerignore` lists), built
      with `mix deps.get --only ENV` and `mix release` (assembled at `/app`, the path it runs from
      in the image), and the runtime files are taken from that
      container, so the image's libraries match the release whatever your host is (macOS too).
      Only the files the image needs are read out of the container (IMAGE needs `sh`, `readlink`
      and GNU or BusyBox `tar`). Compiled deps and `_build` are kept in volumes `docker_release-cache-*` between runs;
      `--no-cache` starts clean. Mix recompiles the files whose content differs from what the
      volumes were last built from, whatever their mtimes (a restored older copy ships its own
      code; a fresh clone recompiles nothing). The container is removed even if the task is
      killed.
    * `--tag NAME[:TAG]` - tag the image; repeat for several. Replaces the default tags.
    * `--base IMAGE` - put the release on top of this base image's layers (a distro, for teams
      that want one) instead of the runtime files. Read from the engine, or from the registry its
      name points to. The base must be able to run the release: every shared library the
      release's ELF files need, glibc symbol versions at least as new as the ones they use,
      `/bin/sh` and the utilities of the release scripts; otherwise it is refused with the list
      of what is missing. Its `/etc` is left as it is.
    * `--platform P[,P…]` - build one image per platform and an image index over them, e.g.
      `--platform linux/amd64,linux/arm64` (repeatable; see "Several platforms" below).
    * `--platform-image PLATFORM=IMAGE` - take PLATFORM's files from IMAGE (repeatable); with
      `--emulate`, IMAGE is PLATFORM's builder.
    * `--emulate` - build the release for each other platform in a builder of that platform
      run under emulation (QEMU), for projects with native code of their own (see below).
    * `--output PATH` - write an image archive at PATH instead of loading into the engine. A
      failed or killed run leaves an existing file at PATH untouched and no temporary file
      behind. A symlink is followed (the file it points to is replaced); a FIFO or character
      device gets the archive written through it once everything else succeeded (e.g.
      `--output /dev/fd/3 3>&1 >&2 | docker load`: the task's own output goes to stdout); a
      directory, block device, socket or terminal is refused.
    * `--metadata-file PATH` - write a JSON summary for CI: tags, image ID, manifest digest,
      layers with digests and sizes, and every runtime file with why it is there; with
      `--push`, `pushed.references` holds `REGISTRY/REPO@sha256:…` for deploy steps.
    * `--extra-file PATH` - copy this file or directory of the build environment into the image
      at the same path (for `dlopen`ed libraries and data files); repeatable. Paths under
      `/proc`, `/sys` and `/dev` and devices, FIFOs or sockets are refused (the container
      runtime provides those); a file others cannot read stays private in the image (0600,
      owned by root, so the app's user cannot read it), and the task says so.
    * `--uid N`, `--gid N` - the numeric user and group the container runs as. Default 65532.
    * `--expose PORT` - declare a port; repeatable.
    * `--container-env NAME=VALUE` - set an environment variable of the image; repeatable.
      Added to `container_env:` in `mix.exs` (a name given both ways takes the flag's value).
    * `--label KEY=VALUE` - set a label of the image's config; repeatable. Added to `labels:`
      in `mix.exs` (the flag wins for a key given both ways); both win over the labels the task
      sets itself (`org.opencontainers.image.title`, `.version`, `.created`, `.revision`,
      `.source`, see below).
    * `--annotation KEY=VALUE` - set an annotation of the image's manifest; repeatable. Added
      to `annotations:` in `mix.exs`, over the task's own (`org.opencontainers.image.created`,
      `.version`, `.revision`, `.source`). Annotations change the manifest digest, not the image
      ID; registries, skopeo and podman keep them, `docker load` does not (labels survive
      everywhere).
    * `--sbom-format spdx|cyclonedx` - the SBOM's format: SPDX 2.3 JSON (default, in the image
      at `/sbom.spdx.json`) or CycloneDX 1.5 JSON (`/sbom.cdx.json`).
    * `--no-sbom` - put no SBOM in the image (and attach none to a pushed image).
    * `--sbom PATH` - also write the SBOM to PATH: the same bytes as in the image, written
      atomically and only when the whole build succeeds (checked before the build: its
      directory must exist and take a new file). With several platforms, each platform's
      image has its own SBOM, written beside PATH with the platform added to the file name
      (`sbom-linux-amd64.spdx.json`, `sbom-linux-arm64-v8.spdx.json` for `sbom.spdx.json`;
      nothing at PATH itself; a device or FIFO is refused).
    * `--sign-key KEY.pem` - an ECDSA P-256 private key (PEM: `EC PRIVATE KEY` or `PRIVATE KEY`,
      unencrypted) to sign pushed images with, in the format `cosign verify --key` reads. The
      environment variable `DOCKER_RELEASE_SIGN_KEY` may hold the PEM text instead (for CI
      secrets); the flag wins over it. Checked before the build: another curve, RSA, an
      encrypted key (cosign's own `ENCRYPTED SIGSTORE PRIVATE KEY` included) or a public key is
      refused, saying why and how to make a usable one (`openssl ecparam -genkey -name
      prime256v1 -noout -out key.pem`); the key never appears in any output, file or
      metadata. With `--push`, the pushed manifest digest is signed in every repository:
      cosign's simple-signing payload as a layer of the manifest tagged `sha256-<hex>.sig`,
      the base64 signature in its `dev.cosignproject.cosign/signature` annotation (signatures
      already there are kept). With several platforms, the index the tags name and each
      platform's manifest are signed, each under its own `sha256-<hex>.sig` tag (what
      `cosign sign --recursive` signs). Verify with `cosign verify --key PUB.pem
      IMAGE@DIGEST`, or with `openssl dgst -sha256 -verify PUB.pem -signature SIG.der
      PAYLOAD` (README, "Supply chain"). Without `--push` nothing is signed, and the task says
      so.
    * `--compression-level N` - gzip level of the layers, 1 (default, fast) to 9 (smallest).
    * `--list-files` - print the runtime files outside `/app` and why each is there.
    * `--quiet` (`-q`) - print nothing but errors, then one line: the image's first tag and its
      ID (`hello:0.1.0 sha256:…`), for scripts.
    * `--push` - push the image to the registry its tags name (`--tag
      registry.example.com/team/app:1.0`), straight over the registry API: no engine needed,
      and the pushed digests are the archive's. Only blobs the registry lacks are uploaded.
      Credentials come from `DOCKER_RELEASE_REGISTRY_USERNAME` and
      `DOCKER_RELEASE_REGISTRY_PASSWORD` when both are set, else from `~/.docker/config.json`
      (or `$DOCKER_CONFIG/config.json`): credential helpers, `credsStore`, `auths`, identity
      tokens; Docker Hub's entry is the one `docker login` writes (`https://index.docker.io/v1/`).
    * `--load` - with `--push` or `--output`, also load the image into the engine.
    * `--insecure-registry` - allow plain HTTP to the registry (registries on loopback
      addresses always may).
    * `--registry-ca FILE` - also trust the CA certificates in this PEM file for the registry.
    * `--stall-timeout SECONDS` - how long a request to the engine or a registry may go with
      no byte moved in either direction and no answer before the run fails, naming the engine
      or registry, the request and the seconds waited. Default 300, also set by the
      environment variable `DOCKER_RELEASE_STALL_TIMEOUT`. Slow transfers that keep moving are
      never cut; the output of a build step or of `mix release` in a builder container may be
      silent for longer, as long as the engine answers a ping within this time.

  ## Several platforms

      mix docker.release --builder ghcr.io/acme/elixir-builder:1.18 \\
        --platform linux/amd64,linux/arm64 --tag ghcr.io/acme/app:1.2.0 --push

  The release is built once, natively. Every ELF file of a release (ERTS's executables, the
  native files of OTP applications such as `crypto.so`) is, byte for byte, the file at the
  same path under the OTP installation it was copied from, and everything else in it (`.beam`
  files, boot files, scripts) is the same on every platform. So for each other platform, those
  files and the runtime files (libraries, `/bin/sh`, the CA bundle) are taken from an image of
  that platform with the same Erlang/OTP, read and never run: the image
  `--platform-image PLATFORM=IMAGE` names (an image in the engine or a registry; needed for
  host builds), else the builder image's variant for that platform: the engine's image when it
  is of that platform, else its registry's index (an engine keeps one platform per tag, so
  usually the registry: `--builder REGISTRY/NAME:TAG`, or Docker Hub for names without a host). An image read from the engine is kept unpacked by image ID
  (`_build/docker_release/unpacked-images/`, the three most recently used), so a rebuild does
  not read it again. The `app` and `deps` layers of a project without native code are the same
  blobs on every platform (uploaded once).

  Before any image is written, each platform's image is checked, and refused with every
  problem found, for every platform at once (`:platform_incompatible`): the same ERTS version
  and the same versions of the release's OTP applications; no native files built with the
  project (NIFs or port programs of dependencies or of your apps: they exist for the build's
  platform only; each is named with its owner); the image's loader, libraries, glibc
  versions, `/bin/sh` and shell tools.

  What each output gets:

    * `--push`: every platform's image (each manifest by digest), then one OCI image index;
      the tags name the index. The summary prints `Index` and each platform's manifest digest.
      Each platform's SBOM is attached to that platform's manifest (its own referrer, in the
      fallback index `sha256-<hex of that manifest>`); with `--sign-key` the index and every
      manifest are signed. A reader that resolves the tag to one platform finds that image's
      SBOM and signature.
    * `--sbom PATH`: one file per platform beside PATH, named with the platform (above).
    * `--output FILE`: an OCI image layout whose `index.json` names the index (once per tag),
      every image's blobs, and a Docker `manifest.json` listing one image: the engine's
      platform's when it is one of them, else the release's own, else the first `--platform`
      names. `docker load` (Engine 20.10–24) and `podman load` load that image; `skopeo copy
      --all oci-archive:FILE:TAG docker://…` copies the index and every image; `skopeo copy
      oci-archive:FILE:TAG` the image of its machine's platform (`--override-arch`).
    * The engine: the image of its own platform; with a single `--platform`, that platform's
      image, even another one than the engine's (it runs under emulation where the machine has
      it).
    * `--metadata-file`: the fields above for that one image, plus `index_digest` and
      `platforms` (each platform's `platform`, `manifest_digest`, `image_id`, `layers`, and
      its `sbom_file`, `sbom_referrer` and `signatures`). The top-level `signatures` are the
      index's; the top-level `sbom_file` and `sbom_referrer` are `null` (an index has no SBOM
      of its own). The summary names each referrer, `.sig` tag and SBOM file with its
      platform (`the index` for the index's signature).

  The same inputs give the same index digest (the images are in one order, by os,
  architecture and variant, whatever the order of `--platform`).

  **Native code of your own** (a NIF your project or a dependency compiles, a port program)
  cannot come from an image of another platform. With `--emulate`, the release is built for
  each other platform in a builder of that platform, which the engine runs under QEMU user
  emulation, and that platform's image is made from it like the native one (its own ERTS,
  libraries and compiled NIFs):

      mix docker.release --builder ghcr.io/acme/elixir-builder:1.18 \
        --platform linux/amd64,linux/arm64 --emulate --tag ghcr.io/acme/app:1.2.0 --push

  The builder of each other platform: `--platform-image PLATFORM=IMAGE` when given, else the
  `--builder` image, when the engine's image of that name is of that platform, else that
  platform's image in the builder's registry index, which the engine pulls by digest
  (`NAME@sha256:…`: no tag of yours moves). It is found before anything is built; one that
  cannot be had stops the run with what to do. A `--builder` image of another architecture
  than the engine's runs under emulation too (a notice says so; its build gets the same
  environment); its image goes into that engine only with `--platform`, else the run is
  refused before the build. When the builder's own platform is not one of
  `--platform`'s (`--platform linux/arm64 --emulate` with an amd64 builder), no release is
  built natively: the arm64 builder builds it. Each builder has its own cache volumes. The
  engine's machine must run the platform's programs: `qemu-user-static` with binfmt_misc and
  the F flag (Debian, Ubuntu: `apt-get install qemu-user-static binfmt-support`). Expect the emulated build to
  take several times as long as the native one (examples/with_deps, warm, one-line change:
  21 s for amd64 plus arm64 under emulation, 19 s for arm64 alone, 3.8 s for amd64 alone;
  docs/BENCHMARKS.md, figure 12). Builds run with `ERL_AFLAGS=+JMsingle true` (QEMU and the
  JIT's doubly mapped code). Tested with Debian 13's OTP 27 for arm64; Debian 12's
  OTP 25 for arm64 crashed under this machine's QEMU when tried by hand: prefer OTP 26 or
  later in the builder.

  A platform is `OS/ARCH[/VARIANT]`: `linux/amd64`, `linux/arm64` (the same as
  `linux/arm64/v8`), `linux/arm/v7`, `linux/s390x`, … `--platform` excludes `--base` and the
  two-Dockerfile flow.

  ## Supply chain

  Scanners and people can check what the image is made of:

    * **Package records.** For every OS package that contributed a file (found in the build
      environment's package database: dpkg's `/var/lib/dpkg/info/*.list`, or Alpine's
      `/lib/apk/db/installed`), the image carries that package's record, as distroless images
      do: `/var/lib/dpkg/status.d/NAME` (Package, Status, Maintainer, Architecture, Multi-Arch,
      Source, Version, the description's first line) or apk's `installed` database. ERTS and
      the OTP and Elixir applications in `/app` count too: they were copied from the build
      environment's `erlang-*` and `elixir` packages, whose records are what OTP's advisories
      are matched against. `/etc/os-release` and `/etc/debian_version` (Alpine:
      `/etc/alpine-release`) are copied so that Trivy, Grype and Syft know the distribution.
      `--list-files` shows each record and why it is there. On a base image (`--base`) only
      the records of what the task adds are added.
    * **SBOM.** `/sbom.spdx.json` (SPDX 2.3; `--sbom-format cyclonedx` for CycloneDX 1.5 at
      `/sbom.cdx.json`, `--no-sbom` for none) lists the distribution, the OS packages (purls
      `pkg:deb/debian/NAME@VERSION?arch=…&distro=debian-12.11`), ERTS and the OTP/Elixir
      applications (`pkg:otp/NAME@VSN`, with the OS package each was copied from), and every
      application of the release with its version and source: Hex packages with the tarball's
      SHA-256 from `mix.lock`, git dependencies with their revision, path dependencies, and the
      project's own applications with the repository and commit of the labels. The same inputs
      give the same bytes. It names no image digest: it is inside the image. With `--push` it
      is also attached to the pushed image as an OCI 1.1 referrer (`artifactType` its media
      type, `subject` the image manifest): listed by the registry's referrers API, or, where the
      registry has none, in the referrers tag-schema fallback index tagged `sha256-<hex of the
      manifest digest>` (merged with what other tools listed there). The summary and
      `--metadata-file` name the referrer (`sbom_referrer`), the signatures (`signatures`)
      and the file written (`sbom_file`); with several platforms, each platform's in its
      `platforms` entry (see "Several platforms").
    * **Labels and annotations.** The config's labels are `org.opencontainers.image.title`,
      `.version`, `.created` (the image's timestamp), and from git `.revision` and `.source`
      (see `DockerRelease.labels/2`), then `labels:` and `--label`. The manifest's annotations
      are `org.opencontainers.image.created`, `.version`, `.revision` and `.source`, then
      `annotations:` and `--annotation`.

  `SOURCE_DATE_EPOCH` sets the image's timestamp (`created`, every file's mtime, the SBOM's
  creation time); without it the last commit's time is used, else 1980-01-01.

  ## The two-Dockerfile flow

  Teams that keep the classic `Dockerfile.build` + `Dockerfile` pair (build the release in one
  image, copy the tarball out of a temporary container, build a small image from it) get that
  flow over the Engine API, without the shell script:

      mix docker.release --build-dockerfile Dockerfile.build --dockerfile Dockerfile

    * `--build-dockerfile PATH` - build the build image from this file, with the project as
      context (honouring `.dockerignore`) and build-arg `version`. Runs this flow.
    * `--dockerfile PATH` - the final image's Dockerfile. Default `Dockerfile`.
    * `--build-tag NAME[:TAG]` - the build image's tag. Default `APP-build:VERSION`.
    * `--release-tarball NAME` - the tarball the build image leaves at `/tmp/NAME`, which lands
      at the root of the final build's context (whose `.dockerignore` gets a last line
      `!/NAME`, so engines that apply it again, like Podman, keep it). Default `APP.tar.gz`.
    * `--tag NAME[:TAG]` - the final image's tag(s). Default `APP:VERSION`.
    * `--no-cache` - build both images without the engine's cache (also: fresh builder caches,
      and every layer compressed again instead of taken from the layer cache).

  The temporary container is labelled and removed in every case; one left by a killed run is
  removed by the next run.

  Every option can also be set under `docker_release:` in `project/0` (see
  `DockerRelease.Config`); flags win. The repeatable `KEY=VALUE` flags have list keys there,
  which the flags add to:

      docker_release: [
        labels: [{"com.example.team", "core"}],
        annotations: [{"com.example.ticket", "OPS-12"}],
        container_env: [{"PORT", "4000"}]
      ]

  Progress: long steps (uploading the project into a builder and reading the release from it,
  writing layers, loading into the engine, writing an archive, pushing) show the bytes done and
  the rate, on a terminal in one line that updates itself, otherwise (CI logs) in a line every
  10 seconds while the step lasts (`DOCKER_RELEASE_PROGRESS_EVERY=N`: every N seconds, e.g.
  `2` or `0.5`).

  Interrupting: SIGTERM ends the task with status 143; SIGINT (Ctrl-C) opens the Erlang VM's
  BREAK menu while stdin is a terminal: press `a` to abort. However the task ends, its builder
  containers are removed, no tag is moved and no temporary file is left beside `--output` (a
  killed run's scratch directory under `_build/docker_release/runs` goes with the next run).

  A failed run changes nothing: the outputs of a run (engine tags, registry tags, `--output`,
  `--metadata-file`) commit together, and a failure after some were committed puts them back.
  What cannot be put back (a registry tag that did not exist before: the registry API cannot
  remove one) is named in the error with how to remove it.

  Several runs in one project at once take turns: a host build locks
  `_build/docker_release/host-build-ENV.lock` until it ends, and a later run waits, printing
  the OS pid of the run it waits for.

  `SOURCE_DATE_EPOCH` (the image's timestamp, else the last commit's) must be a whole number of
  seconds from 0 to 253402300799 (9999-12-31T23:59:59Z).

  Host builds and restored files: Mix recompiles what is in `_build/prod` by modification
  time, so files put back with older mtimes over an existing `_build` (`cp -a`, `rsync -a`,
  `tar x`) may not be recompiled, and the image would carry the old code; the task cannot
  tell. Run `MIX_ENV=prod mix compile --force` after restoring older files, or use `--builder`.

  Note: this task is usually a dev-only dependency. With `MIX_ENV=prod` exported in your shell,
  Mix does not see it ("The task docker.release could not be found"): run it without `MIX_ENV`.
  """

  use Mix.Task

  @switches [
    env: :string,
    release: :string,
    from_release: :string,
    tag: :keep,
    output: :string,
    metadata_file: :string,
    extra_file: :keep,
    uid: :integer,
    gid: :integer,
    expose: :keep,
    compression_level: :integer,
    list_files: :boolean,
    push: :boolean,
    load: :boolean,
    insecure_registry: :boolean,
    stall_timeout: :integer,
    registry_ca: :string,
    build_dockerfile: :string,
    dockerfile: :string,
    build_tag: :string,
    release_tarball: :string,
    no_cache: :boolean,
    builder: :string,
    base: :string,
    platform: :keep,
    platform_image: :keep,
    emulate: :boolean,
    quiet: :boolean,
    label: :keep,
    annotation: :keep,
    container_env: :keep,
    sbom: :string,
    sbom_format: :string,
    no_sbom: :boolean,
    sign_key: :string
  ]

  @aliases [t: :tag, o: :output, q: :quiet]

  @impl true
  def run(args) do
    opts = parse!(args)
    # A cancelled CI job sends SIGTERM: end with a failure status, not the VM's clean shutdown
    # (which would exit 0 with no image). Builder containers go away with the process.
    {:ok, _} = System.trap_signal(:sigterm, fn -> System.halt(143) end)
    project = Mix.Project.config()
    {list_files?, opts} = Keyword.pop(opts, :list_files, false)
    {quiet?, opts} = Keyword.pop(opts, :quiet, false)

    config =
      try do
        DockerRelease.Config.new!(project, opts)
      rescue
        e in DockerRelease.Error -> Mix.raise(e.message)
      end

    case build(config, project, quiet?) do
      {:ok, outcome} when quiet? ->
        IO.puts("#{hd(outcome.tags)} #{outcome.image_id}")

      {:ok, %{tarball_bytes: _} = outcome} ->
        Mix.shell().info("""

        Image     #{Enum.join(outcome.tags, ", ")}
        ID        #{outcome.image_id}
        Size      #{size(outcome.size)} in the engine
        """)

      {:ok, outcome} ->
        report(outcome, config, list_files?)

      {:error, %DockerRelease.Error{message: message}} ->
        Mix.raise(message)
    end
  end

  # --quiet: nothing but errors while building (Mix.Shell.Quiet), then one line.
  defp build(config, project, false), do: DockerRelease.build(config, project)

  defp build(config, project, true) do
    shell = Mix.shell()
    Mix.shell(Mix.Shell.Quiet)

    try do
      DockerRelease.build(config, project)
    after
      Mix.shell(shell)
    end
  end

  @doc false
  # Parses the command line into DockerRelease.Config options; an unknown flag is an error.
  def parse!(args) do
    {opts, rest} =
      try do
        OptionParser.parse!(args, strict: @switches, aliases: @aliases)
      rescue
        e in OptionParser.ParseError ->
          Mix.raise("#{Exception.message(e)}. See `mix help docker.release` for the options")
      end

    if rest != [] do
      Mix.raise(
        "unexpected argument(s) #{Enum.join(rest, " ")}. See `mix help docker.release` for the options"
      )
    end

    expose =
      for port <- Keyword.get_values(opts, :expose) do
        case Integer.parse(port) do
          {n, ""} -> n
          _ -> Mix.raise("--expose takes a port number, got: #{inspect(port)}")
        end
      end

    platforms =
      opts
      |> Keyword.get_values(:platform)
      |> Enum.flat_map(&String.split(&1, ",", trim: true))
      |> Enum.map(&String.trim/1)

    platform_images =
      for given <- Keyword.get_values(opts, :platform_image) do
        case String.split(given, "=", parts: 2) do
          [platform, image] when platform != "" and image != "" ->
            {platform, image}

          _ ->
            Mix.raise(
              "--platform-image takes PLATFORM=IMAGE, e.g. linux/arm64=ghcr.io/acme/builder:arm64, got: #{inspect(given)}"
            )
        end
      end

    [
      tags: Keyword.get_values(opts, :tag),
      extra_files: Keyword.get_values(opts, :extra_file),
      expose: expose,
      platforms: platforms,
      platform_images: platform_images,
      labels: pairs!(opts, :label, "KEY=VALUE"),
      annotations: pairs!(opts, :annotation, "KEY=VALUE"),
      container_env: pairs!(opts, :container_env, "NAME=VALUE")
    ] ++
      Keyword.drop(opts, [
        :tag,
        :extra_file,
        :expose,
        :platform,
        :platform_image,
        :label,
        :annotation,
        :container_env
      ])
  end

  # `--label KEY=VALUE` (repeatable) as [{"KEY", "VALUE"}]: split at the first `=`; the value
  # may be empty, the key may not.
  defp pairs!(opts, flag, form) do
    name = "--" <> String.replace(to_string(flag), "_", "-")

    for arg <- Keyword.get_values(opts, flag) do
      case String.split(arg, "=", parts: 2) do
        [key, value] when key != "" ->
          {key, value}

        [""] ->
          Mix.raise("#{name} takes #{form}, got an empty argument")

        [_no_equals] ->
          Mix.raise("#{name} takes #{form} (with =), got: #{inspect(arg)}")

        ["", _] ->
          Mix.raise("#{name} takes #{form} with a non-empty key, got: #{inspect(arg)}")
      end
    end
  end

  defp report(outcome, config, list_files?) do
    shell = Mix.shell()

    if list_files? do
      shell.info("\nRuntime files outside /app:")

      for {path, reason} <- outcome.runtime_files do
        shell.info("  #{path}  (#{reason})")
      end
    end

    sizes =
      [
        outcome.engine_size && "#{size(outcome.engine_size)} in the engine",
        outcome.archive_size && "#{size(outcome.archive_size)} archive",
        "#{size(outcome.compressed_size)} compressed"
      ]
      |> Enum.filter(& &1)
      |> Enum.join(", ")

    layers = Enum.map_join(outcome.layers, ", ", &"#{&1.name} #{size(&1.size)}")
    first_tag = hd(outcome.tags)
    cli = DockerRelease.engine_cli(outcome)

    shell.info("""

    Image     #{Enum.join(outcome.tags, ", ")}
    ID        #{outcome.image_id}
    Digest    #{outcome.manifest_digest}
    Platform  #{outcome.platform}
    Size      #{sizes}; layers (compressed): #{layers}
    """)

    report_index(outcome)

    if pushed = outcome.pushed do
      shell.info(
        "Pushed    #{Enum.join(pushed.tags, ", ")}: uploaded #{pushed.uploaded_blobs} blob(s), " <>
          "#{size(pushed.uploaded_bytes)}; #{pushed.skipped_blobs} already there"
      )

      for ref <- pushed.references, do: shell.info("Deploy    #{ref}")
    end

    report_supply_chain(outcome)

    if outcome.engine do
      ports = Enum.map_join(config.expose, "", &" -p #{&1}:#{&1}")
      shell.info("Run it:   #{cli} run --rm#{ports} #{first_tag}")
    end

    if path = outcome.archive do
      shell.info(
        "Archive   #{path}\nLoad it:  #{cli} load -i #{path} && #{cli} run --rm #{first_tag}"
      )
    end

    if config.metadata_file, do: shell.info("Metadata  #{config.metadata_file}")
    :ok
  end

  # With several platforms: the index the tags name (registry, archive), and each platform's
  # image; the lines above describe the one the engine loads.
  defp report_index(%{index_digest: index} = outcome) when is_binary(index) do
    Mix.shell().info("Index     #{index}")

    for p <- outcome.platforms do
      Mix.shell().info("  #{String.pad_trailing(p.platform, 16)} #{p.manifest_digest}")
    end
  end

  defp report_index(_outcome), do: :ok

  # The SBOM referrers, signatures and SBOM files: of the one image; with several platforms,
  # the index's signatures and each platform's referrer, signatures and file, named so.
  defp report_supply_chain(%{index_digest: index} = outcome) when is_binary(index) do
    for p <- outcome.platforms, p.sbom_referrer, do: report_referrer(p.sbom_referrer, p.platform)
    for signed <- outcome.signatures, do: report_signed(signed, "the index")
    for p <- outcome.platforms, signed <- p.signatures, do: report_signed(signed, p.platform)
    for p <- outcome.platforms, p.sbom_file, do: report_sbom_file(p.sbom_file, p.platform)
  end

  defp report_supply_chain(outcome) do
    if referrer = outcome.sbom_referrer, do: report_referrer(referrer, nil)
    for signed <- outcome.signatures, do: report_signed(signed, nil)
    if written = outcome.sbom_file, do: report_sbom_file(written, nil)
  end

  defp report_referrer(referrer, platform) do
    how =
      case referrer.fallback_tags do
        [] -> "found through the referrers API"
        tags -> "listed in the referrers index #{Enum.join(tags, ", ")}"
      end

    of = if platform, do: " of #{platform}", else: ""

    Mix.shell().info(
      "SBOM      referrer #{referrer.digest} (#{referrer.artifact_type})#{of}, #{how}"
    )
  end

  defp report_signed(signed, nil),
    do: Mix.shell().info("Signed    #{signed.tag} (#{signed.digest})")

  defp report_signed(signed, what),
    do: Mix.shell().info("Signed    #{signed.tag} (#{signed.digest}), #{what}")

  defp report_sbom_file(written, nil),
    do: Mix.shell().info("SBOM file #{written.path} (#{written.media_type}, #{written.digest})")

  defp report_sbom_file(written, platform) do
    Mix.shell().info(
      "SBOM file #{written.path} (#{platform}, #{written.media_type}, #{written.digest})"
    )
  end

  @doc false
  # A size in the unit that shows it (SI, as `docker images` prints): "812 B", "45.9 kB",
  # "12.3 MB", "1.2 GB".
  def size(bytes), do: DockerRelease.Progress.size(bytes)
end
