defmodule DockerRelease.Error do
  @moduledoc """
  A failed build: `reason` is an atom to match on, `message` says what was wrong and what to do.

  Reasons: `:invalid_config`, `:invalid_reference`, `:no_release`, `:release_build_failed`,
  `:unsupported_host`, `:not_a_release`, `:not_linux`, `:missing_runtime_file`, `:read_error`,
  `:engine_config`, `:engine_unreachable`, `:engine_error`, `:load_failed`, `:platform_mismatch`,
  `:output_error`, `:cancelled`, `:nif_not_loaded`, `:internal`.
  """
  defexception [:reason, :message]
end
