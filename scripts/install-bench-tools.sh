#!/usr/bin/env bash
# Installs what `make bench` needs beyond `make install` (idempotent, non-interactive):
#   wrk (HTTP load generator), smtp-sink (from Debian's postfix package; the postfix daemon is
#   stopped and never left running), py-spy and pyinstrument (profilers) and httpx into the
#   virtualenv.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo

need_apt=()
command -v wrk >/dev/null || need_apt+=(wrk)
command -v smtp-sink >/dev/null || [ -x /usr/sbin/smtp-sink ] || need_apt+=(postfix)
command -v redis-server >/dev/null || need_apt+=(redis-server)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "install-bench-tools: installing ${need_apt[*]} with apt-get" >&2
  # postfix asks how to configure itself; answer "No configuration" so it stays inert.
  echo "postfix postfix/main_mailer_type select No configuration" | $SUDO debconf-set-selections
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
    "${need_apt[@]}" >/dev/null
  # Installing postfix may start its daemon: the benchmark only wants the smtp-sink binary.
  if command -v postfix >/dev/null; then
    $SUDO postfix stop >/dev/null 2>&1 || true
  fi
fi

missing_py=()
[ -x "$VENV/bin/py-spy" ] || missing_py+=(py-spy)
[ -x "$VENV/bin/pyinstrument" ] || missing_py+=(pyinstrument)
# The benchmark's HTTP client: a test extra, and `make install` (what `make dev` needs) has none.
"$VENV/bin/python" -c 'import httpx' 2>/dev/null || missing_py+=(httpx)
if [ ${#missing_py[@]} -gt 0 ]; then
  "$VENV/bin/python" -m pip install -q "${missing_py[@]}"
fi
