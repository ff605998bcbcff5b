defmodule WithDeps.Application do
  @moduledoc false
  use Application

  @impl true
  def start(_type, _args) do
    children = [
      {Task.Supervisor, name: WithDeps.ConnectionSupervisor},
      {WithDeps.Server, port: Application.fetch_env!(:with_deps, :port)}
    ]

    Supervisor.start_link(children, strategy: :one_for_one, name: WithDeps.Supervisor)
  end
end
