#!/usr/bin/env bash
# Installs what docker_release's demo and tests need on Debian/Ubuntu (as root), and starts a
# Docker engine if none answers. Idempotent: a second run installs nothing and returns quickly.
set -euo pipefail

log() { printf '==> %s\n' "$*"; }

PACKAGES=(
  elixir erlang-dev            # Elixir 1.14 / OTP 25 (the host build and the tests)
  docker.io                    # dockerd, containerd, runc
  skopeo umoci podman          # independent readers of our archives
  docker-registry              # a local registry for push tests
  debootstrap busybox-static pigz
  qemu-user-static binfmt-support   # run arm64 images (multi-platform tests), with binfmt_misc
  gcc musl-tools               # ELF fixtures for the closure tests
  make libc6-dev               # the C NIF of the project-shapes corpus, built on the host
  apache2-utils openssl         # htpasswd and certificates for the registry auth and TLS tests
  socat                        # a TLS endpoint for the engine that keeps half-closes (dind test)
  dropbear-bin libnss-wrapper openssh-client   # an ssh:// engine endpoint for the ssh test
  git curl ca-certificates procps
  python3 python3-venv         # the SBOM validators' virtualenv (below)
  # Also used, and Essential in Debian and Ubuntu: coreutils (timeout, mkfifo, mknod), tar,
  # util-linux (flock), diffutils (cmp), libc-bin (ldd).
)

if [ "$(id -u)" != 0 ]; then
  echo "scripts/setup.sh installs packages and starts dockerd: run it as root (sudo)." >&2
  exit 1
fi

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Rust (for the NIF): rustup's toolchain, 1.91 or newer.
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
if ! command -v cargo >/dev/null 2>&1; then
  log "installing Rust with rustup"
  curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal -c rustfmt,clippy
  . "$HOME/.cargo/env"
fi
# The lint gates need clippy and rustfmt (a distribution's cargo may come without them).
if ! cargo clippy --version >/dev/null 2>&1 || ! cargo fmt --version >/dev/null 2>&1; then
  if command -v rustup >/dev/null 2>&1; then
    log "adding the clippy and rustfmt components"
    rustup component add clippy rustfmt
  else
    echo "cargo clippy and cargo fmt are needed: install Rust with rustup (https://rustup.rs)." >&2
    exit 1
  fi
fi
rust_minor=$(rustc --version | sed -E 's/^rustc 1\.([0-9]+).*/\1/')
if [ "$rust_minor" -lt 91 ]; then
  echo "Rust 1.91 or newer is needed, found $(rustc --version): run \`rustup update stable\`." >&2
  exit 1
fi

# Independent validators of the SBOMs we write (issue 14): pyspdxtools (SPDX 2.3) and
# cyclonedx-python-lib's JSON schema validator (CycloneDX 1.5, schemas bundled: no network when
# the tests run). Versions pinned; the tests find the venv here or at DOCKER_RELEASE_SBOMCHECK.
SBOMCHECK="${DOCKER_RELEASE_SBOMCHECK:-/var/cache/docker_release/sbomcheck}"
SBOMCHECK_PINS=(spdx-tools==0.8.5 'cyclonedx-python-lib[json-validation]==11.12.0')
if [ "$(cat "$SBOMCHECK/.pins" 2>/dev/null)" != "${SBOMCHECK_PINS[*]}" ]; then
  log "installing the SBOM validators in $SBOMCHECK"
  rm -rf "$SBOMCHECK"
  /usr/bin/python3 -m venv "$SBOMCHECK"
  "$SBOMCHECK/bin/pip" install -q --disable-pip-version-check "${SBOMCHECK_PINS[@]}"
  printf '%s' "${SBOMCHECK_PINS[*]}" >"$SBOMCHECK/.pins"
fi

# A Docker engine.
if ! docker info >/dev/null 2>&1; then
  log "starting dockerd"
  nohup dockerd >/var/log/dockerd-docker_release.log 2>&1 &
  for _ in $(seq 1 60); do
    docker info >/dev/null 2>&1 && break
    sleep 1
  done
  docker info >/dev/null 2>&1 || {
    echo "dockerd did not start; see /var/log/dockerd-docker_release.log" >&2
    exit 1
  }
fi
# Containers of another architecture (the multi-platform tests run arm64 images): QEMU user
# emulation through binfmt_misc. The registration is machine-wide and does not survive a
# reboot, so it is made again here. Debian's qemu-user-static registers with the F flag (the
# interpreter is opened once, when registered, so it works inside containers, whose filesystem
# has no qemu).
mountpoint -q /proc/sys/fs/binfmt_misc ||
  mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
update-binfmts --enable qemu-aarch64 2>/dev/null || true
if ! grep -q '^flags: .*F' /proc/sys/fs/binfmt_misc/qemu-aarch64 2>/dev/null; then
  echo "binfmt_misc has no qemu-aarch64 entry with the F flag (see /proc/sys/fs/binfmt_misc/): arm64 containers cannot run" >&2
  exit 1
fi

log "ready: $(elixir --version | tail -1), $(rustc --version), Docker $(docker version -f '{{.Server.Version}}')"
