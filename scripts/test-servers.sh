#!/usr/bin/env bash
# Installs the servers the integration tests start, under .tools/ (not committed):
# s3s-fs, an S3-compatible server that checks SigV4 signatures and honours
# `If-None-Match: *` on uploads. Pinned: newer releases need a newer Rust than ours.
set -euo pipefail
cd "$(dirname "$0")/.."

S3S_FS_VERSION=0.14.1
if ! .tools/bin/s3s-fs --version 2>/dev/null | grep -q "$S3S_FS_VERSION"; then
  echo "installing s3s-fs $S3S_FS_VERSION (a few minutes)"
  CARGO_TARGET_DIR="$PWD/target/tools" cargo install "s3s-fs@$S3S_FS_VERSION" \
    --locked --features binary --root "$PWD/.tools"
fi
