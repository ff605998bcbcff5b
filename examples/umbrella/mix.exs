defmodule Umbrella.MixProject do
  use Mix.Project

  def project do
    [
      apps_path: "apps",
      version: "0.1.0",
      start_permanent: Mix.env() == :prod,
      deps: deps(),
      releases: [
        umbrella_release: [
          applications: [web: :permanent, core: :permanent],
          include_executables_for: [:unix]
        ]
      ]
    ]
  end

  # Dependencies of the umbrella root (not of its apps).
  defp deps do
    [{:docker_release, path: "../..", only: :dev, runtime: false}]
  end
end
