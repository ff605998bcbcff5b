#!/usr/bin/env bash
# The whole test suite: set-up, lint gates, Rust tests, Elixir tests (including the ones
# against the real Docker engine).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
unset MIX_ENV

step() { printf '\n==> %s\n' "$*"; }

step "cargo fmt --check"
cargo fmt --all -- --check
step "cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings
step "cargo test"
cargo test --workspace --locked
step "mix format --check-formatted"
mix format --check-formatted
(cd examples/hello && mix format --check-formatted)
step "mix compile --warnings-as-errors"
mix compile --force --warnings-as-errors
step "examples/hello tests"
(cd examples/hello && mix test)
step "mix test"
mix test
