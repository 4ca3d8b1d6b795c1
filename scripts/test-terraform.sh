#!/usr/bin/env bash
# Checks the Terraform code in terraform/ without any provider or cloud access:
# formatting, init/validate/test of the provider-free modules, structural tests of the
# modules that need the Linode provider, and a checkov scan. Nothing is planned or applied.
#
# Tools come from a venv in .tools/venv-terraform, installed from
# terraform/requirements-test.txt and reinstalled only when that file changes
# (about 45 s cold; a warm run takes under 30 s).
set -euo pipefail
cd "$(dirname "$0")/.."

venv=.tools/venv-terraform
requirements=terraform/requirements-test.txt
installed_copy="$venv/requirements-installed.txt"

if [ ! -x "$venv/bin/python" ] || ! cmp -s "$requirements" "$installed_copy"; then
  echo "== installing $requirements into $venv"
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$requirements"
  cp "$requirements" "$installed_copy"
fi

# No CLI configuration: no credentials helper, no provider mirror, nothing from outside.
export TF_CLI_CONFIG_FILE=/dev/null
export TF_IN_AUTOMATION=1
export CHECKPOINT_DISABLE=1
python="$venv/bin/python"
tf() { "$python" terraform/tools/tf.py "$@"; }

failures=()
step() {
  local name=$1
  shift
  echo "== $name: $*"
  if "$@"; then
    echo "-- ok: $name"
  else
    echo "-- FAILED: $name"
    failures+=("$name")
  fi
}

step "fmt" tf fmt -check -recursive -diff -no-color terraform

# These modules declare no provider, so init downloads nothing; its .terraform
# directory is ignored by terraform/.gitignore and no lock file is written.
for module in terraform/modules/pop_settings terraform/modules/fleet_plan terraform/modules/inventory; do
  step "init $module" tf -chdir="$module" init -backend=false -input=false -no-color
  step "validate $module" tf -chdir="$module" validate -no-color
  step "test $module" tf -chdir="$module" test -no-color
done

step "structural tests" "$python" terraform/tests/test_structure.py

step "checkov" "$venv/bin/checkov" -d terraform --framework terraform --compact --quiet --skip-download

if [ ${#failures[@]} -gt 0 ]; then
  echo "FAILED: ${failures[*]}"
  exit 1
fi
echo "all Terraform checks passed"
