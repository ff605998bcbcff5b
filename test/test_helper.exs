# Tests tagged :engine need a running Docker engine (the CI script starts one); run the rest
# alone with `mix test --exclude engine`.
ExUnit.start(timeout: 600_000)
