defmodule DockerRelease.E2E.Shapes do
  @moduledoc """
  The corpus of project shapes of `test/e2e/project_shapes_test.exs`: Mix projects generated
  with `mix new` (nothing fetched), shaped the way real projects are, each depending on this
  repository by `path:` (`only: :dev, runtime: false`), as a user's project would.

  Every shape that runs serves one HTTP request format (a tiny `:gen_tcp` server started by its
  application) whose body is `MOD.hello/0`; `eval` checks call the same function. Names carry
  a random suffix, so default tags (`APP:VERSION`) never clash with another run's.

  Shapes (`generate!/2` makes them all):

    * `:plain` - `mix new DIR --sup --app APP` with an app name that differs from its
      directory, no `releases:` key (the default release, built by a plain `mix release`);
    * `:runtime_port` - a `--sup` app whose `config/runtime.exs` requires `PORT` at boot;
    * `:umbrella_none` - an umbrella (`core`, `web`) without `releases:`: cannot work;
    * `:umbrella_two` - an umbrella with two named releases (`front` runs `web`, `back` runs
      `core`) and no `default_release:`;
    * `:release_config` - a release with its own `version:` (0.0.1, the project is 0.1.0) and
      a `cookie:`;
    * `:overlays` - `rel/vm.args.eex` (bakes `@release.path` into `vm.args`, the absolute build
      path case), `rel/env.sh.eex`, `rel/overlays/`, and `build_path:` outside the project;
    * `:c_nif` - a C NIF built by a `Makefile` into `priv/` through a Mix compiler defined in
      `mix.exs` (needs gcc and make where it is built).
  """

  import ExUnit.Assertions
  import DockerRelease.E2E

  @typedoc "A generated shape: where it is and what its image runs."
  @type shape :: %{
          dir: Path.t(),
          app: String.t(),
          mod: String.t(),
          bin: String.t(),
          port: pos_integer
        }

  @doc """
  Generates every shape under `root` with names ending in `suffix`. Returns `%{name => shape}`.
  """
  def generate!(root, suffix) do
    %{
      plain: plain!(root, suffix),
      runtime_port: runtime_port!(root, suffix),
      umbrella_none: umbrella_none!(root, suffix),
      umbrella_two: umbrella_two!(root, suffix),
      release_config: release_config!(root, suffix),
      overlays: overlays!(root, suffix),
      c_nif: c_nif!(root, suffix)
    }
  end

  ## The shapes

  defp plain!(root, suffix) do
    app = "shapes_plain_#{suffix}"
    dir = new!(root, ["shapes_plain_dir", "--sup", "--app", app])
    mod = Macro.camelize(app)

    hello!(dir, app, mod, ~S|"plain #{@app} on OTP #{:erlang.system_info(:otp_release)}"|)
    server!(dir, app, mod, "4000")
    %{dir: dir, app: app, mod: mod, bin: app, port: 4000}
  end

  defp runtime_port!(root, suffix) do
    app = "shapes_port_#{suffix}"
    dir = new!(root, [app, "--sup"])
    mod = Macro.camelize(app)

    write!(dir, "config/runtime.exs", """
    import Config

    # The port comes from the environment at boot; without PORT the release refuses to start.
    config :#{app}, port: String.to_integer(System.fetch_env!("PORT"))
    """)

    hello!(dir, app, mod, ~S|"port #{Application.fetch_env!(@app, :port)}"|)
    server!(dir, app, mod, "Application.fetch_env!(:#{app}, :port)")
    %{dir: dir, app: app, mod: mod, bin: app, port: 4100}
  end

  defp umbrella_none!(root, suffix) do
    name = "shapes_umbrella_none_#{suffix}"
    dir = new!(root, [name, "--umbrella"])
    new!(Path.join(dir, "apps"), ["core"])
    new!(Path.join(dir, "apps"), ["web", "--sup"])
    %{dir: dir, app: name, mod: nil, bin: nil, port: nil}
  end

  defp umbrella_two!(root, suffix) do
    name = "shapes_umbrella_#{suffix}"
    dir = new!(root, [name, "--umbrella"])
    core = new!(Path.join(dir, "apps"), ["core"])
    web = new!(Path.join(dir, "apps"), ["web", "--sup"])

    project_keys!(dir, """
    releases: [
      front: [applications: [web: :permanent]],
      back: [applications: [core: :permanent]]
    ]
    """)

    write!(core, "lib/core.ex", """
    defmodule Core do
      @moduledoc false
      def hello, do: "core of #{name}"
    end
    """)

    deps!(Path.join(web, "mix.exs"), "{:core, in_umbrella: true}")

    hello!(
      web,
      "web",
      "Web",
      ~S|"umbrella front on OTP #{:erlang.system_info(:otp_release)}, #{Core.hello()}"|
    )

    server!(web, "web", "Web", "4200")
    %{dir: dir, app: name, mod: "Web", bin: "front", port: 4200}
  end

  defp release_config!(root, suffix) do
    app = "shapes_relconf_#{suffix}"
    dir = new!(root, [app, "--sup"])
    mod = Macro.camelize(app)

    project_keys!(dir, """
    releases: [
      #{app}: [version: "0.0.1", cookie: "shapes-configured-cookie-#{suffix}"]
    ]
    """)

    hello!(dir, app, mod, ~S|"release config of #{@app}"|)
    server!(dir, app, mod, "4300")

    %{
      dir: dir,
      app: app,
      mod: mod,
      bin: app,
      port: 4300,
      cookie: "shapes-configured-cookie-#{suffix}"
    }
  end

  defp overlays!(root, suffix) do
    app = "shapes_overlays_#{suffix}"
    dir = new!(root, [app, "--sup"])
    mod = Macro.camelize(app)
    project_keys!(dir, ~s|build_path: "../#{app}_build"|)

    write!(dir, "rel/vm.args.eex", """
    ## The release's own path, fixed when the release is assembled (like a
    ## -ssl_dist_optfile <%= @release.path %>/ssl.conf line would be).
    -env SHAPES_REL_PATH <%= @release.path %>
    """)

    write!(dir, "rel/env.sh.eex", """
    #!/bin/sh
    # Computed when the release starts, from where it runs.
    export SHAPES_ROOT_AT_RUN="$RELEASE_ROOT"
    export SHAPES_FROM_ENV_SH="env.sh of <%= @release.name %> <%= @release.version %>"
    """)

    write!(dir, "rel/overlays/greeting.txt", "greetings from an overlay\n")

    hello!(dir, app, mod, ~S"""
    "overlay: " <>
      case File.read(Path.join(System.get_env("SHAPES_REL_PATH", "unset"), "greeting.txt")) do
        {:ok, text} -> String.trim(text)
        {:error, _} -> "missing at #{System.get_env("SHAPES_REL_PATH")}"
      end <>
      "; root: #{System.get_env("SHAPES_ROOT_AT_RUN")}; #{System.get_env("SHAPES_FROM_ENV_SH")}"
    """)

    server!(dir, app, mod, "4400")
    %{dir: dir, app: app, mod: mod, bin: app, port: 4400}
  end

  @doc "Generates only the `:c_nif` shape under `root` (see the module doc). Returns the shape."
  def c_nif!(root, suffix) do
    app = "shapes_nif_#{suffix}"
    dir = new!(root, [app, "--sup"])
    mod = Macro.camelize(app)

    write!(dir, "c_src/shapes_nif.c", """
    #include <erl_nif.h>
    #include <gnu/libc-version.h>
    #include <string.h>

    /* The glibc this NIF runs against: the build environment's, copied into the image. */
    static ERL_NIF_TERM glibc(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
      const char *v = gnu_get_libc_version();
      ErlNifBinary bin;
      enif_alloc_binary(strlen(v), &bin);
      memcpy(bin.data, v, strlen(v));
      return enif_make_binary(env, &bin);
    }

    static ErlNifFunc funcs[] = {{"glibc", 0, glibc, 0}};
    ERL_NIF_INIT(Elixir.#{mod}.Native, funcs, NULL, NULL, NULL, NULL)
    """)

    write!(dir, "Makefile", """
    ERL_INCLUDE := $(shell erl -noshell -eval 'io:format("~ts/erts-~ts/include", [code:root_dir(), erlang:system_info(version)]), halt().')

    priv/shapes_nif.so: c_src/shapes_nif.c
    \tmkdir -p priv
    \t$(CC) -fPIC -shared -O2 -I$(ERL_INCLUDE) -o $@ $<
    """)

    # priv/ is part of the project (Mix links it into _build only if it exists before the
    # compilers run); the host's build output stays out of the builder's upload, where make
    # would take it as up to date.
    write!(dir, "priv/.gitkeep", "")
    write!(dir, ".dockerignore", "priv/*.so\n")

    write!(dir, "lib/#{app}/native.ex", """
    defmodule #{mod}.Native do
      @moduledoc false
      @on_load :load

      def load, do: :erlang.load_nif(:filename.join(:code.priv_dir(:#{app}), ~c"shapes_nif"), 0)

      def glibc, do: :erlang.nif_error(:not_loaded)
    end
    """)

    mix_exs = Path.join(dir, "mix.exs")

    File.write!(mix_exs, """
    defmodule Mix.Tasks.Compile.ShapesMake do
      @moduledoc false
      use Mix.Task.Compiler

      @impl true
      def run(_args) do
        {out, status} = System.cmd("make", ["--no-print-directory"], stderr_to_stdout: true)
        IO.write(out)
        if status != 0, do: Mix.raise("make failed with exit status \#{status}")
        {:ok, []}
      end
    end

    #{File.read!(mix_exs)}\
    """)

    project_keys!(dir, "compilers: [:shapes_make] ++ Mix.compilers()")
    hello!(dir, app, mod, ~S|"nif says glibc #{__MODULE__.Native.glibc()}"|)
    server!(dir, app, mod, "4500")
    %{dir: dir, app: app, mod: mod, bin: app, port: 4500}
  end

  ## Generating

  # `mix new ARGS` in `parent`; with the docker_release dep unless it is an umbrella app.
  defp new!(parent, [name | _] = args) do
    {out, status} = cmd("mix", ["new" | args], cd: parent, env: [{"MIX_ENV", nil}])
    assert status == 0, "mix new #{Enum.join(args, " ")} failed:\n#{out}"
    dir = Path.join(parent, name)

    unless Path.basename(parent) == "apps" do
      deps!(
        Path.join(dir, "mix.exs"),
        "{:docker_release, path: #{inspect(root())}, only: :dev, runtime: false}"
      )
    end

    dir
  end

  defp deps!(mix_exs, dep) do
    replace!(mix_exs, "defp deps do\n    [", "defp deps do\n    [\n      #{dep},")
  end

  # Adds keys to project/0 of DIR/mix.exs, after `deps: deps()`.
  defp project_keys!(dir, keys) do
    replace!(Path.join(dir, "mix.exs"), "deps: deps()\n", "deps: deps(),\n#{String.trim(keys)}\n")
  end

  defp replace!(path, old, new) do
    text = File.read!(path)
    assert text =~ old, "#{path} (from mix new) has no #{inspect(old)}:\n#{text}"
    File.write!(path, String.replace(text, old, new, global: false))
  end

  defp write!(dir, rel, content) do
    path = Path.join(dir, rel)
    File.mkdir_p!(Path.dirname(path))
    File.write!(path, content)
  end

  # MOD.hello/0 returns `body` (an Elixir expression; @app is the app's name as an atom).
  defp hello!(dir, app, mod, body) do
    write!(dir, "lib/#{app}.ex", """
    defmodule #{mod} do
      @moduledoc false
      @app :#{app}
      _ = @app

      def hello do
        #{body}
      end
    end
    """)
  end

  # The application starts MOD.Http on `port` (an Elixir expression).
  defp server!(dir, app, mod, port) do
    write!(dir, "lib/#{app}/http.ex", """
    defmodule #{mod}.Http do
      @moduledoc false
      use Task, restart: :permanent

      def start_link(port), do: Task.start_link(__MODULE__, :listen, [port])

      def listen(port) do
        {:ok, socket} = :gen_tcp.listen(port, [:binary, active: false, reuseaddr: true])
        IO.puts("#{app} listening on port \#{port}")
        accept(socket)
      end

      defp accept(socket) do
        {:ok, client} = :gen_tcp.accept(socket)
        _ = :gen_tcp.recv(client, 0, 5_000)
        body = #{mod}.hello()

        :gen_tcp.send(client, [
          "HTTP/1.1 200 OK\\r\\ncontent-length: \#{byte_size(body)}\\r\\nconnection: close\\r\\n\\r\\n",
          body
        ])

        :gen_tcp.close(client)
        accept(socket)
      end
    end
    """)

    write!(dir, "lib/#{app}/application.ex", """
    defmodule #{mod}.Application do
      @moduledoc false
      use Application

      @impl true
      def start(_type, _args) do
        children = [{#{mod}.Http, #{port}}]
        Supervisor.start_link(children, strategy: :one_for_one, name: #{mod}.Supervisor)
      end
    end
    """)
  end
end
