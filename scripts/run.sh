#!/usr/bin/env bash
# Builds edgecache and runs it on the embedded default config, config/edgecache.yaml:
# HTTP on 127.0.0.1:8080, HTTPS on 127.0.0.1:8443 (a self-signed certificate for localhost
# is created under config/dev/ when missing), admin on 127.0.0.1:9901, core at
# 127.0.0.1:3000 (absent is fine: requests then get a 502).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/system-packages.sh
cargo build --release --locked
./target/release/edgecache gen-cert --if-missing \
  --cert config/dev/localhost.pem --key config/dev/localhost.key \
  --name localhost --name 127.0.0.1
exec ./target/release/edgecache serve --config config/edgecache.yaml
