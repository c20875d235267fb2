#!/usr/bin/env bash
# Regenerates the hash-pinned locks the Dockerfile installs from:
#   requirements.lock        every runtime dependency of pyproject.toml's [project].dependencies
#   requirements-build.lock  the build backend ([build-system].requires: hatchling), builder only
# Pinned with == and --hash for Linux x86_64 CPython 3.11, wheels only (the image compiles nothing),
# except SOURCE_ONLY: pure-Python packages that publish no wheel (their sdist's hash is pinned).
# uv runs from a throwaway virtualenv in .tools/ (never the project's .venv).
#
#   scripts/lock.sh             # keep current pins where still allowed, add what is new
#   scripts/lock.sh --upgrade   # move every pin to the newest allowed release
set -euo pipefail
cd "$(dirname "$0")/.."
UV_VERSION=0.13.9
TOOLS=.tools/lock-venv
PYTHON=${PYTHON:-python3}

if [ ! -x "$TOOLS/bin/uv" ] || ! "$TOOLS/bin/uv" --version | grep -q " $UV_VERSION"; then
  rm -rf "$TOOLS"
  "$PYTHON" -m venv "$TOOLS"
  "$TOOLS/bin/python" -m pip install -q "uv==$UV_VERSION"
fi
# A TLS-intercepting proxy's CA, if this machine has one in its system bundle.
if [ -z "${SSL_CERT_FILE:-}" ] && [ -s /etc/ssl/certs/ca-certificates.crt ]; then
  export SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
fi

#: Pure-Python packages with no wheel on PyPI (the Dockerfile builds them: nothing to compile).
SOURCE_ONLY=dkimpy

compile() {  # compile <output> <header line> <input...>
  local output=$1 header=$2
  shift 2
  "$TOOLS/bin/uv" pip compile "$@" --output-file "$output.tmp" \
    --generate-hashes --only-binary :all: --no-binary "$SOURCE_ONLY" \
    --python-version 3.11 --python-platform x86_64-unknown-linux-gnu \
    --index-url https://pypi.org/simple --no-config \
    --custom-compile-command "scripts/lock.sh" --quiet ${UPGRADE:+--upgrade}
  { echo "# $header"; echo "# Regenerate with scripts/lock.sh (scripts/lock.sh --upgrade to move pins)."
    cat "$output.tmp"; } >"$output"
  rm -f "$output.tmp"
}

UPGRADE=""
if [ "${1:-}" = --upgrade ]; then UPGRADE=1; fi
# uv prefers the pins already in its --output-file: give it the current ones.
for lock in requirements.lock requirements-build.lock; do
  if [ -s "$lock" ]; then cp "$lock" "$lock.tmp"; fi
done

compile requirements.lock \
  "Runtime dependencies of email-service (pyproject.toml [project].dependencies), hash-pinned." \
  pyproject.toml

"$PYTHON" -c 'import tomllib
print(*tomllib.load(open("pyproject.toml", "rb"))["build-system"]["requires"], sep="\n")' |
  compile requirements-build.lock \
    "The build backend (pyproject.toml [build-system].requires), hash-pinned; builder stage only." \
    -
echo "lock: wrote requirements.lock ($(grep -c '==' requirements.lock) packages)," \
  "requirements-build.lock ($(grep -c '==' requirements-build.lock) packages)"
