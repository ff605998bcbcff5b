defmodule DockerRelease.MixProject do
  use Mix.Project

  @version "0.1.0"

  def project do
    [
      app: :docker_release,
      version: @version,
      elixir: "~> 1.14",
      start_permanent: Mix.env() == :prod,
      # Our own compiler builds the Rust NIF; it runs after :elixir (which compiles it) and also
      # when docker_release is a dependency of another project.
      compilers: Mix.compilers() ++ [:docker_release_native],
      deps: [],
      docs: [main: "readme", extras: ["README.md"]],
      elixirc_paths: elixirc_paths(Mix.env()),
      # Only the tests' TLS engine proxy (test/support/engine_proxy.ex) uses :ssl.
      xref: [exclude: [:ssl]],
      preferred_cli_env: []
    ]
  end

  def application do
    [extra_applications: [:logger]]
  end

  defp elixirc_paths(:test), do: ["lib", "test/support"]
  defp elixirc_paths(_), do: ["lib"]
end
