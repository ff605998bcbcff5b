import Config

# The port is read at boot from PORT in config/runtime.exs; tests listen on a random one.
if config_env() == :test do
  config :with_deps, port: 0
  config :logger, level: :warning
end
