#!/usr/bin/env bash
# The main job: set up this machine, build examples/hello into an image with
# `mix docker.release`, run it and ask it for a page.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
unset MIX_ENV   # docker_release is a dev-only dependency of the example

(cd examples/hello && mix docker.release)

echo "==> docker run --rm hello:latest eval 'IO.puts(:ok)'"
docker run --rm hello:latest eval 'IO.puts(:ok)'

name="hello-demo-$$"
port=${PORT:-4000}
echo "==> docker run -d -p 127.0.0.1:$port:4000 hello:latest"
docker run -d --rm --name "$name" -p "127.0.0.1:$port:4000" hello:latest >/dev/null
trap 'docker stop "$name" >/dev/null 2>&1 || true' EXIT
answer=""
for _ in $(seq 1 50); do
  answer=$(curl -fsS "http://127.0.0.1:$port/" 2>/dev/null) && break
  sleep 0.2
done
[ -n "$answer" ] || { echo "the container did not answer on port $port" >&2; docker logs "$name" >&2; exit 1; }
echo "==> curl http://127.0.0.1:$port/"
echo "$answer"
echo "==> the image:"
docker image ls hello
