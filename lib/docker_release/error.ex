defmodule DockerRelease.Error do
  # Every reason, by group, with where it comes from: `:native` from the NIF, `:elixir` raised
  # by the Elixir side, `:both`. The NIF's reasons are `Reason` in
  # native/image_io/src/error.rs: a test there checks that the `:native` and `:both` ones here
  # are exactly that list, in order, and that every reason raised under lib/ is listed as
  # `:elixir` or `:both`.
  @reasons [
    {"input",
     [
       invalid_config: :both,
       invalid_reference: :both,
       no_release: :elixir,
       not_a_release: :both,
       dockerfile_missing: :native
     ]},
    {"building",
     [
       release_build_failed: :both,
       unsupported_host: :elixir,
       not_linux: :native,
       missing_runtime_file: :native,
       read_error: :native,
       builder_image_missing: :native,
       builder_error: :native,
       build_failed: :native,
       tarball_missing: :native
     ]},
    {"base and platform images",
     [
       base_not_found: :native,
       base_incompatible: :native,
       base_error: :native,
       platform_incompatible: :native
     ]},
    {"the engine",
     [
       engine_config: :native,
       engine_unreachable: :both,
       engine_error: :native,
       engine_stalled: :native,
       load_failed: :native,
       platform_mismatch: :native
     ]},
    {"registries",
     [
       registry_no_host: :native,
       registry_unauthorized: :native,
       registry_not_found: :native,
       registry_error: :native,
       registry_unreachable: :native,
       registry_stalled: :native,
       registry_protocol: :native,
       registry_blob_unreadable: :native,
       registry_ca_file: :native,
       registry_credentials: :native,
       registry_internal: :native
     ]},
    {"other",
     [output_error: :both, cancelled: :native, nif_not_loaded: :elixir, internal: :native]}
  ]

  @moduledoc """
  A failed build: `reason` is an atom to match on, `message` says what was wrong and what to do.

  Reasons:

  #{Enum.map_join(@reasons, "\n", fn {group, reasons} -> "  * #{group}: " <> Enum.map_join(reasons, ", ", fn {r, _} -> "`:#{r}`" end) end)}

  `:engine_stalled` and `:registry_stalled`: a request moved no byte and got no answer for the
  stall timeout.
  """
  defexception [:reason, :message]

  @doc "Every reason a build can fail with, in the order of the list above."
  @spec reasons() :: [atom]
  def reasons, do: for({_, list} <- @reasons, {r, _} <- list, do: r)
end
