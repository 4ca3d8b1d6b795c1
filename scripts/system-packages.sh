#!/usr/bin/env bash
# Installs what the build and the tests need when it is missing: cmake and a C toolchain
# (pingora's zlib-ng is built with cmake), and the rustfmt and clippy components.
# A fresh machine has no package lists, hence the update.
set -euo pipefail

needed=()
command -v cmake >/dev/null 2>&1 || needed+=(cmake)
if ! command -v cc >/dev/null 2>&1 || ! command -v make >/dev/null 2>&1; then
  needed+=(build-essential)
fi

if [ ${#needed[@]} -gt 0 ]; then
  as_root=()
  if [ "$(id -u)" -ne 0 ]; then
    if ! command -v sudo >/dev/null 2>&1; then
      echo "edgecache needs ${needed[*]}: install them as root (apt-get install ${needed[*]})" >&2
      exit 1
    fi
    as_root=(sudo)
  fi
  echo "installing: ${needed[*]}"
  "${as_root[@]}" apt-get update -qq
  "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${needed[@]}"
fi

for component in rustfmt clippy; do
  tool=$([ "$component" = rustfmt ] && echo fmt || echo clippy)
  if ! cargo "$tool" --version >/dev/null 2>&1; then
    rustup component add "$component"
  fi
done
