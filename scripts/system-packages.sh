#!/usr/bin/env bash
# Installs the Debian packages the build needs when they are missing.
# pingora's zlib-ng build needs cmake; a fresh machine has no package lists, hence the update.
set -euo pipefail

needed=()
command -v cmake >/dev/null 2>&1 || needed+=(cmake)
command -v cc >/dev/null 2>&1 || needed+=(build-essential)

if [ ${#needed[@]} -gt 0 ]; then
  as_root=()
  if [ "$(id -u)" -ne 0 ]; then
    as_root=(sudo)
  fi
  echo "installing: ${needed[*]}"
  "${as_root[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${as_root[@]}" apt-get install -y -qq "${needed[@]}"
fi
