defmodule DockerRelease.Error do
  @moduledoc """
  A failed build: `reason` is an atom to match on, `message` says what was wrong and what to do.

  Reasons:

    * input: `:invalid_config`, `:invalid_reference`, `:no_release`, `:not_a_release`,
      `:dockerfile_missing`
    * building: `:release_build_failed`, `:unsupported_host`, `:not_linux`,
      `:missing_runtime_file`, `:read_error`, `:builder_image_missing`, `:builder_error`,
      `:build_failed`, `:tarball_missing`
    * base images: `:base_not_found`, `:base_incompatible`, `:base_error`
    * the engine: `:engine_config`, `:engine_unreachable`, `:engine_error`, `:engine_stalled`
      (a request moved no byte and got no answer for the stall timeout), `:load_failed`,
      `:platform_mismatch`
    * registries: `:registry_no_host`, `:registry_unauthorized`, `:registry_not_found`,
      `:registry_error`, `:registry_unreachable`, `:registry_stalled`, `:registry_protocol`,
      `:registry_blob_unreadable`, `:registry_ca_file`, `:registry_credentials`,
      `:registry_internal`
    * other: `:output_error`, `:cancelled`, `:nif_not_loaded`, `:internal`
  """
  defexception [:reason, :message]
end
