#!/usr/bin/env bash
# Builds the API reference from the public headers' doc blocks with Doxygen (docs/Doxyfile):
#
#   scripts/docs.sh [OUTPUT_DIR]        (default build/docs; the pages are in OUTPUT_DIR/html)
#
# Installs Debian's doxygen through scripts/install-deps.sh when it is missing. Any Doxygen warning
# (an undocumented public symbol, a broken reference) fails the build.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="${1:-$root/build/docs}"
if ! command -v doxygen >/dev/null 2>&1; then
  bash "$root/scripts/install-deps.sh" doxygen
fi
mkdir -p "$out"
SOFTMAXLAB_SOURCE_DIR="$root" SOFTMAXLAB_DOCS_OUTPUT="$out" doxygen "$root/docs/Doxyfile"
echo "docs: API reference in $out/html/index.html"
