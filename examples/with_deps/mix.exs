defmodule WithDeps.MixProject do
  use Mix.Project

  def project do
    [
      app: :with_deps,
      version: "0.1.0",
      elixir: "~> 1.14",
      start_permanent: Mix.env() == :prod,
      deps: deps(),
      releases: [with_deps: [include_executables_for: [:unix]]]
    ]
  end

  def application do
    [
      extra_applications: [:logger],
      mod: {WithDeps.Application, []}
    ]
  end

  # Four in-repo path dependencies with 220 generated modules between them (beta calls alpha,
  # delta calls gamma); scripts/generate_modules.exs regenerates them.
  defp deps do
    [
      {:alpha, path: "local_deps/alpha"},
      {:beta, path: "local_deps/beta"},
      {:gamma, path: "local_deps/gamma"},
      {:delta, path: "local_deps/delta"},
      {:docker_release, path: "../..", only: :dev, runtime: false}
    ]
  end
end
