defmodule DockerRelease.ReleaseTest do
  # Not async: reading another project's mix.exs (Mix.Project.in_project) changes the VM's
  # working directory while it runs, which would break test files loading meanwhile.
  use ExUnit.Case, async: false

  alias DockerRelease.{Config, Error}
  import DockerRelease.E2E, only: [umbrella_dir!: 1]

  test "version: {:from_app, app} reads the app's mix.exs" do
    dir = umbrella_dir!(~w(core web))

    File.write!(Path.join(dir, "apps/web/mix.exs"), """
    defmodule DrConfigTestWeb.MixProject do
      use Mix.Project
      @version "3.1.4"
      def project, do: [app: :web, version: @version]
    end
    """)

    umbrella = [
      apps_path: "apps",
      releases: [shop: [applications: [web: :permanent], version: {:from_app, :web}]]
    ]

    c = Config.new!(umbrella, [], dir)
    assert c.version == "3.1.4"
    assert c.tags == ["shop:3.1.4", "shop:latest"]

    umbrella = put_in(umbrella[:releases][:shop][:version], {:from_app, :nope})
    e = assert_raise Error, fn -> Config.new!(umbrella, [], dir) end
    assert e.message =~ "version: {:from_app, :nope}"
    assert e.message =~ ~s(set version: "X.Y.Z")
  end
end
