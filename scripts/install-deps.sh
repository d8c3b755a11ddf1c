#!/usr/bin/env bash
# Install Debian packages, only those not installed yet.
#
#   scripts/install-deps.sh [PACKAGE...]
#
# With no arguments, installs what scripts/test.sh needs. `apt-get update` runs once, and only
# when something is missing. Runs apt-get directly as root, through sudo otherwise.
# Set SOFTMAXLAB_SKIP_DEPS=1 to skip this step entirely (non-Debian systems, offline machines
# where everything is already provided some other way).
set -euo pipefail

if [[ "${SOFTMAXLAB_SKIP_DEPS:-0}" == "1" ]]; then
  echo "install-deps: SOFTMAXLAB_SKIP_DEPS=1, not checking packages"
  exit 0
fi

if [[ $# -gt 0 ]]; then
  packages=("$@")
else
  packages=(cmake g++ make libeigen3-dev catch2 pkg-config libopenmpi-dev openmpi-bin)
fi

if ! command -v dpkg-query >/dev/null 2>&1 || ! command -v apt-get >/dev/null 2>&1; then
  echo "install-deps: dpkg-query/apt-get not found: this script supports Debian-based systems." >&2
  echo "install-deps: install these yourself, then rerun with SOFTMAXLAB_SKIP_DEPS=1: ${packages[*]}" >&2
  exit 1
fi

missing=()
for pkg in "${packages[@]}"; do
  status="$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)"
  if [[ "$status" != "install ok installed" ]]; then
    missing+=("$pkg")
  fi
done

if [[ ${#missing[@]} -eq 0 ]]; then
  echo "install-deps: all present: ${packages[*]}"
  exit 0
fi

if [[ "$(id -u)" -eq 0 ]]; then
  as_root=(env)
elif command -v sudo >/dev/null 2>&1; then
  as_root=(sudo env)
else
  echo "install-deps: missing packages: ${missing[*]}" >&2
  echo "install-deps: installing them needs root, and sudo is not available; as root run:" >&2
  echo "  apt-get update && apt-get install -y --no-install-recommends ${missing[*]}" >&2
  exit 1
fi

echo "install-deps: installing ${missing[*]}"
"${as_root[@]}" apt-get update
"${as_root[@]}" DEBIAN_FRONTEND=noninteractive \
  apt-get install -y --no-install-recommends "${missing[@]}"
