#!/usr/bin/env bash
# Measures `edgecache migrate` on loopback: a legacy directory of COUNT files of SIZE bytes
# copied into a local s3s-fs server. Prints objects/s, MB/s and the peak RSS of the migrate
# process. Needs a release build (cargo build --release) and scripts/test-servers.sh.
#   COUNT=2000 SIZE=262144 CONCURRENCY=8 bash benches/migrate/run.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
COUNT=${COUNT:-2000}
SIZE=${SIZE:-262144}
CONCURRENCY=${CONCURRENCY:-8}
BIN=${BIN:-target/release/edgecache}
work=$(mktemp -d)
trap 'kill "$s3pid" 2>/dev/null || true; rm -rf "$work"' EXIT

mkdir -p "$work/legacy" "$work/s3/media"
python3 - "$work/legacy" "$COUNT" "$SIZE" <<'PY'
import os, sys
root, count, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
for n in range(count):
    d = os.path.join(root, "media_attachments", f"{n % 100:03d}")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, f"{n:06d}.bin"), "wb") as f:
        f.write(os.urandom(size))
PY
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
.tools/bin/s3s-fs --host 127.0.0.1 --port "$port" --access-key bench --secret-key benchsecret "$work/s3" >/dev/null 2>&1 &
s3pid=$!
printf 'access_key_id: bench\nsecret_access_key: benchsecret\n' > "$work/creds"
"$BIN" gen-cert --cert "$work/c.pem" --key "$work/k.pem" --name localhost >/dev/null
cat > "$work/edgecache.yaml" <<YAML
listeners:
  - name: http
    address: "127.0.0.1:1"
admin:
  address: "127.0.0.1:2"
core:
  groups:
    web:
      hosts: ["127.0.0.1:3"]
logging:
  level: warn
stores:
  legacy:
    kind: directory
    path: $work/legacy
  spaces:
    kind: s3
    endpoint: http://127.0.0.1:$port
    bucket: media
    credentials_file: $work/creds
YAML
sleep 0.3
/usr/bin/time -v "$BIN" migrate --config "$work/edgecache.yaml" --from legacy --to spaces \
  --state "$work/state" --concurrency "$CONCURRENCY" 2> "$work/time" | tee "$work/summary"
rss=$(awk -F': ' '/Maximum resident set size/{print $2}' "$work/time")
wall=$(awk -F': ' '/Elapsed \(wall clock\)/{print $2}' "$work/time")
echo "objects=$COUNT size=$SIZE concurrency=$CONCURRENCY wall=$wall peak_rss_kib=$rss"
