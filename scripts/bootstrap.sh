#!/usr/bin/env bash
# Installs everything the service and its tests need on a fresh machine (idempotent):
# a virtualenv with the project, redis-server, and the tools the chart and image tests use.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}

need_apt=()
command -v redis-server >/dev/null || need_apt+=(redis-server)
if [ "${WITH_IMAGE_TOOLS:-1}" = 1 ]; then
  command -v buildah >/dev/null || need_apt+=(buildah)
  command -v debootstrap >/dev/null || need_apt+=(debootstrap)
fi
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "bootstrap: installing ${need_apt[*]} with apt-get" >&2
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q -e ".[test]"

# Kubernetes tooling (helm, kubectl) for the chart tests.
if [ -x scripts/install-tools.sh ]; then
  scripts/install-tools.sh
fi
