#!/usr/bin/env bash
# What `make dev` needs on a fresh machine, and nothing more (idempotent): a virtualenv with the
# project and its runtime dependencies, and redis-server (the dev stack starts a private one).
# The tools only the tests use (buildah, debootstrap, helm, kubectl, ...) are installed by
# scripts/install-test-tools.sh, which `make test` runs.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}

if ! command -v redis-server >/dev/null; then
  if ! command -v apt-get >/dev/null; then
    echo "bootstrap: redis-server is needed; install it with your package manager" \
      "(or set REDIS_URL to a Redis you run)" >&2
    exit 1
  fi
  echo "bootstrap: installing redis-server with apt-get" >&2
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
    redis-server >/dev/null
fi

if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
# pip runs only when pyproject.toml changed since the last successful install: a re-run is quick.
stamp="$VENV/.bootstrap-runtime"
wanted=$("$PYTHON" -c 'import hashlib, sys; print(hashlib.sha256(open(sys.argv[1], "rb").read()).hexdigest())' pyproject.toml)
if [ "$(cat "$stamp" 2>/dev/null)" != "$wanted" ]; then
  "$VENV/bin/python" -m pip install -q --upgrade pip
  "$VENV/bin/python" -m pip install -q -e .
  echo "$wanted" >"$stamp"
fi
