defmodule Web.Application do
  @moduledoc false
  use Application

  @impl true
  def start(_type, _args) do
    children = [
      {Task.Supervisor, name: Web.ConnectionSupervisor},
      {Web.Server, port: Application.fetch_env!(:web, :port)}
    ]

    Supervisor.start_link(children, strategy: :one_for_one, name: Web.Supervisor)
  end
end
