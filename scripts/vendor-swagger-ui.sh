#!/usr/bin/env bash
# Refresh the Swagger UI that /docs serves (service/static/swagger-ui/) from the npm registry's
# swagger-ui-dist package. The assets are committed so the service needs neither npm nor a CDN:
# run this only to move to another version, then run the browser test (tests/test_docs.py).
#   scripts/vendor-swagger-ui.sh [VERSION]      # default: the version in VERSION below
set -euo pipefail
cd "$(dirname "$0")/.."
version=${1:-5.35.0}
dest=service/static/swagger-ui
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent "swagger-ui-dist@$version" >/dev/null && tar xzf ./*.tgz)
for file in swagger-ui-bundle.js swagger-ui.css favicon-32x32.png LICENSE NOTICE \
    swagger-ui-bundle.js.LICENSE.txt; do
  cp "$work/package/$file" "$dest/$file"
done
cat >"$dest/VERSION" <<NOTE
swagger-ui-dist $version (npm), unmodified: swagger-ui-bundle.js, swagger-ui.css, favicon-32x32.png,
LICENSE, NOTICE, swagger-ui-bundle.js.LICENSE.txt. Update with scripts/vendor-swagger-ui.sh.
NOTE
echo "vendored swagger-ui-dist $version into $dest"
