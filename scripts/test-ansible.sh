#!/usr/bin/env bash
# Checks the Ansible rollout (ansible/) the way CI does: a syntax check of site.yml,
# ansible-lint with the production profile, and a molecule run that converges the role on
# this machine under a temporary directory (with the real binary validating the config),
# converges it again to prove nothing changes, then verifies the result, including
# `systemd-analyze verify` on the rendered unit.
#
# Usage: scripts/test-ansible.sh [path/to/edgecache]   (or EDGECACHE_BIN; default
# target/debug/edgecache). Needs python3 with venv; installs the pinned tools from
# ansible/requirements-test.txt into .tools/venv-ansible once, and again when it changes.
set -euo pipefail
cd "$(dirname "$0")/.."
repo_root=$(pwd)

edgecache_bin=${1:-${EDGECACHE_BIN:-target/debug/edgecache}}
case "$edgecache_bin" in
  /*) ;;
  *) edgecache_bin="$repo_root/$edgecache_bin" ;;
esac
if [[ ! -x "$edgecache_bin" ]]; then
  echo "test-ansible: no edgecache binary at $edgecache_bin (build it, or pass its path)" >&2
  exit 1
fi
export EDGECACHE_BIN="$edgecache_bin"

venv="$repo_root/.tools/venv-ansible"
requirements="$repo_root/ansible/requirements-test.txt"
stamp="$venv/.requirements.sha256"
wanted=$(sha256sum "$requirements" | cut -d' ' -f1)
if [[ ! -x "$venv/bin/python" || ! -f "$stamp" || "$(cat "$stamp")" != "$wanted" ]]; then
  echo "test-ansible: installing $(grep -c '==' "$requirements") pinned packages into $venv"
  "${PYTHON:-python3}" -m venv --clear "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$requirements"
  echo "$wanted" >"$stamp"
fi
export PATH="$venv/bin:$PATH"

if ! command -v systemd-analyze >/dev/null; then
  if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends systemd
  else
    echo "test-ansible: systemd-analyze is missing; install the systemd package (as root)" >&2
    exit 1
  fi
fi

cd ansible
# Colour codes only clutter CI logs.
export ANSIBLE_NOCOLOR=1 NO_COLOR=1

step() { printf '\n== %s\n' "$*"; }

step "ansible-playbook --syntax-check site.yml"
ansible-playbook -i inventory/example.yml site.yml --syntax-check

step "ansible-lint (production profile, offline)"
ansible-lint --offline --profile production --nocolor

step "molecule test (converge, idempotence, verify) with $EDGECACHE_BIN"
# Every run starts from an empty installation directory, so the first converge installs
# for real rather than finding the last run's files.
molecule reset >/dev/null 2>&1 || true
molecule test

echo
echo "test-ansible: all checks passed"
