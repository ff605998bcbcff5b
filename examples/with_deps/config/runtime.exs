import Config

if config_env() != :test do
  config :with_deps, port: String.to_integer(System.get_env("PORT", "4000"))
end
