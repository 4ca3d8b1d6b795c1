#!/usr/bin/env bash
# Installs what the tests need on a fresh machine, then runs every check CI runs:
# formatting, clippy with warnings as errors, unit tests and the integration tests
# (which start the real binary, a real origin and real TLS clients on 127.0.0.1), then the
# Terraform checks (offline: fmt, validate, terraform test, checkov) and the Ansible checks
# (syntax, ansible-lint, molecule converging the role with the binary just built).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/system-packages.sh
bash scripts/test-servers.sh
cargo fmt --all -- --check
# Everything is built and tested with the embedded mesh node (`--features tailscale`); the
# default build (without it) is linted too, so both stay warning-free.
cargo clippy --locked --all-targets --features tailscale -- -D warnings
cargo clippy --locked --lib --bins -- -D warnings
cargo test --locked --features tailscale
bash scripts/test-terraform.sh
bash scripts/test-ansible.sh target/debug/edgecache
