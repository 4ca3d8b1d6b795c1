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

# The 20 MiB row on loopback measures the load generator as much as the proxy: a proxy that
# sends its cache file with sendfile leaves the one copy of each byte to the receiving
# client's core. What a proxy costs per byte is its own CPU time, measured here the way
# benches/proxy_pass measures it per request: the proxy's user and system time around each
# wrk run, per GB delivered.
case " ${SCENARIOS:-a b c d1 d2 e f} " in
  *" c "*)
    # shellcheck source=../lib.sh
    WORK=$BENCH . "$HERE/../lib.sh"
    declare -A URL=([nginx]=http://127.0.0.1:8101 [edgecache]=http://127.0.0.1:8100)
    declare -A PIDS=([nginx]="$(nginx_pids "$BENCH/run/nginx-cache.pid")" [edgecache]="$(cat "$BENCH/run/edgecache.pid")")
    echo "| round | target | MB/s | proxy CPU ms per GB |"
    echo "|---|---|---:|---:|"
    for round in $(seq "${ROUNDS:-3}"); do
      order="nginx edgecache"; [ $((round % 2)) -eq 0 ] && order="edgecache nginx"
      for t in $order; do
        before=$(cpu_ticks ${PIDS[$t]})
        out=$(taskset -c 1 wrk -t1 -c8 -d"${DURATION:-15}s" --timeout 5s "${URL[$t]}/obj/video-20m.mp4")
        after=$(cpu_ticks ${PIDS[$t]})
        python3 - "$round" "$t" "$out" "$before" "$after" "$TICK_US" <<'PY'
import re, sys
round_, target, out, before, after, tick_us = sys.argv[1:]
units = {"B": 1, "KB": 1e3, "MB": 1e6, "GB": 1e9}
m = re.search(r"requests in ([\d.]+)s, ([\d.]+)([KMG]?B) read", out)
seconds, amount = float(m.group(1)), float(m.group(2)) * units[m.group(3)]
cpu_ms = (int(after) - int(before)) * int(tick_us) / 1000
print(f"| {round_} | {target} | {amount / seconds / 1e6:,.0f} | {cpu_ms / (amount / 1e9):,.0f} |")
PY
      done
    done
    ;;
esac
