defmodule DockerRelease.MixProject do
  use Mix.Project

  @version "0.1.0"
  # The project's home: the package links, the docs' source links and the default NIF download
  # base (`@source_url/releases/download/vVERSION`) all follow it. Not confirmed yet: no
  # public repository is named anywhere else (README, CHANGELOG, git remotes); set it to the
  # real one before the first Hex release, or the prebuilt NIF downloads fail (builds from
  # source still work, and DOCKER_RELEASE_NIF_BASE_URL overrides the base).
  @source_url "https://github.com/docker-release/docker_release"

  def project do
    [
      app: :docker_release,
      version: @version,
      elixir: "~> 1.14",
      description:
        "mix docker.release: minimal, reproducible container images of Elixir releases, " <>
          "with no base image and no Dockerfile, for the Docker engine, an archive or a registry.",
      start_permanent: Mix.env() == :prod,
      # Our own compiler installs the NIF (prebuilt and verified, or built with cargo); it runs
      # after :elixir (which compiles it) and also when docker_release is a dependency.
      compilers: Mix.compilers() ++ [:docker_release_native],
      # :crypto, :httpc, :inets and :public_key are used only to download and verify the
      # prebuilt NIF (DockerRelease.NativeLib), from OTP applications Mix itself has;
      # docker_release does not start them. Only the tests' TLS engine proxy
      # (test/support/engine_proxy.ex) uses :ssl.
      xref: [exclude: [:crypto, :httpc, :inets, :public_key, :ssl]],
      deps: [],
      package: package(),
      source_url: @source_url,
      homepage_url: @source_url,
      docs: [
        main: "readme",
        source_ref: "v#{@version}",
        extras: ["README.md", "CHANGELOG.md", "docs/ARCHITECTURE.md", "LICENSE"]
      ],
      elixirc_paths: elixirc_paths(Mix.env()),
      preferred_cli_env: []
    ]
  end

  def application do
    [extra_applications: [:logger]]
  end

  # What Hex users get: the Elixir code, the checksum file of the prebuilt NIFs, and the whole
  # Rust workspace (sources, manifests, Cargo.lock), so that DOCKER_RELEASE_BUILD=1 builds the
  # NIF from the package alone. test/e2e/package_test.exs installs exactly this list.
  defp package do
    [
      licenses: ["Apache-2.0"],
      links: %{
        "GitHub" => @source_url,
        "Changelog" => "#{@source_url}/blob/main/CHANGELOG.md"
      },
      files: ~w(
        lib mix.exs .formatter.exs README.md CHANGELOG.md LICENSE docs/ARCHITECTURE.md
        checksum-Elixir.DockerRelease.Native.exs
        Cargo.toml Cargo.lock
        native/image_core/Cargo.toml native/image_core/src
        native/image_io/Cargo.toml native/image_io/src
        native/docker_release_nif/Cargo.toml native/docker_release_nif/src
      )
    ]
  end

  defp elixirc_paths(:test), do: ["lib", "test/support"]
  defp elixirc_paths(_), do: ["lib"]
end
