#!/usr/bin/env bash
# Cache HITs, the miss storm and idle connections: edgecache against nginx's proxy_cache on
# the same origin, in one run, with the shared side-by-side harness (../shared/bench/perf,
# whose README describes every scenario).
#
#   bash benches/cache/run.sh              (ROUNDS=3 DURATION=15 by default)
#   SCENARIOS="a b c e f" ROUNDS=1 DURATION=5 bash benches/cache/run.sh
#   EDGECACHE_BIN=/path/to/other/edgecache SCENARIOS=b bash benches/cache/run.sh
#
# The harness interleaves the targets round by round and reports each ratio as the median of
# the per-round ratios edgecache / nginx. Both proxies run pinned to CPU 0, the load generator
# and the origin to CPU 1. Only ratios from one run mean anything on a shared 2-core machine.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
HARNESS=${HARNESS:-$ROOT/../shared/bench/perf}
BENCH=${BENCH:-/tmp/edgebench}
export BENCH

[ -x "$HARNESS/run.sh" ] || { echo "harness not found at $HARNESS (set HARNESS=)"; exit 2; }
need=()
for tool in nginx:nginx wrk:wrk h2load:nghttp2-client curl:curl ss:iproute2; do
  command -v "${tool%%:*}" >/dev/null || need+=("${tool#*:}")
done
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
fi
SKIP_APT=1 bash "$HARNESS/setup.sh" >/dev/null
bash "$ROOT/scripts/system-packages.sh"   # cmake for pingora's zlib-ng on a fresh machine
# EDGECACHE_BIN: an already built binary to measure instead (to compare two builds).
if [ -n "${EDGECACHE_BIN:-}" ]; then
  BIN=$EDGECACHE_BIN
else
  (cd "$ROOT" && cargo build --release --locked --quiet)
  BIN=$ROOT/target/release/edgecache
fi

cleanup() {
  [ -f "$BENCH/run/edgecache.pid" ] && kill "$(cat "$BENCH/run/edgecache.pid")" 2>/dev/null || true
  bash "$HARNESS/peers/stop.sh" all >/dev/null 2>&1 || true
}
trap cleanup EXIT
bash "$HARNESS/peers/stop.sh" all >/dev/null 2>&1 || true
bash "$HARNESS/peers/start.sh" origin nginx

rm -rf "$BENCH/edgecache-cache"
ulimit -n "$(ulimit -Hn)" || true
taskset -c 0 "$BIN" serve --config "$HERE/edgecache.yaml" \
  > "$BENCH/log/edgecache.out" 2> "$BENCH/log/edgecache.err" &
echo $! > "$BENCH/run/edgecache.pid"
for _ in $(seq 100); do
  curl -sf http://127.0.0.1:9910/readyz >/dev/null && break
  sleep 0.1
done
curl -sf http://127.0.0.1:9910/readyz >/dev/null || { echo "edgecache not ready"; cat "$BENCH/log/edgecache.err"; exit 1; }

bash "$HARNESS/run.sh" nginx=http://127.0.0.1:8101,https://127.0.0.1:8443 \
  edgecache=http://127.0.0.1:8100,https://127.0.0.1:8440
