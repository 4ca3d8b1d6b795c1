#!/usr/bin/env bash
# Idle memory, side by side with nginx: what a PoP holds before any request, and what each
# idle connection adds (plain HTTP/1.1 keep-alive, the same over TLS, HTTP/2 over TLS).
#
#   bash benches/idle/run.sh                 (ROUNDS=2, N=5000 plain, N_TLS=1000 over TLS)
#   EDGECACHE_BIN=/path/to/edgecache bash benches/idle/run.sh
#   IDLE_OUT=/some/dir keeps the raw rows there
#
# Uses the shared harness's origin and nginx peer (../shared/bench/perf) and edgecache with
# benches/cache/edgecache.yaml, both tiers configured. Each proxy is started afresh for every
# measurement, so that memory freed by an earlier one is not reused by the next and hidden.
# PSS is summed over the proxy's processes (nginx: master and workers); "per connection" is
# the PSS after the connections are open and settled minus the PSS just before, divided by
# their number. The load generator runs on CPU 1, the proxies on CPU 0.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
HARNESS=${HARNESS:-$ROOT/../shared/bench/perf}
BENCH=${BENCH:-/tmp/edgebench}
export BENCH
ROUNDS=${ROUNDS:-2}
N=${N:-5000}
N_TLS=${N_TLS:-1000}

[ -x "$HARNESS/run.sh" ] || { echo "harness not found at $HARNESS (set HARNESS=)"; exit 2; }
command -v nginx >/dev/null && command -v curl >/dev/null || {
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx curl
}
SKIP_APT=1 bash "$HARNESS/setup.sh" >/dev/null
if [ -n "${EDGECACHE_BIN:-}" ]; then
  BIN=$EDGECACHE_BIN
else
  bash "$ROOT/scripts/system-packages.sh"
  (cd "$ROOT" && cargo build --release --locked --quiet)
  BIN=$ROOT/target/release/edgecache
fi
ulimit -n "$(ulimit -Hn)" || true

EDGE_PID=
stop_edgecache() {
  if [ -n "$EDGE_PID" ]; then
    kill "$EDGE_PID" 2>/dev/null || true
    wait "$EDGE_PID" 2>/dev/null || true
  fi
  EDGE_PID=
}
cleanup() { stop_edgecache || true; bash "$HARNESS/peers/stop.sh" all >/dev/null 2>&1 || true; }
trap cleanup EXIT
bash "$HARNESS/peers/stop.sh" all >/dev/null 2>&1 || true
bash "$HARNESS/peers/start.sh" origin >/dev/null

start_edgecache() {
  rm -rf "$BENCH/edgecache-cache"
  taskset -c 0 "$BIN" serve --config "$ROOT/benches/cache/edgecache.yaml" \
    > "$BENCH/log/edgecache.out" 2> "$BENCH/log/edgecache.err" &
  EDGE_PID=$!
  for _ in $(seq 100); do curl -sf http://127.0.0.1:9910/readyz >/dev/null && break; sleep 0.1; done
  curl -sf http://127.0.0.1:9910/readyz >/dev/null || { cat "$BENCH/log/edgecache.err"; exit 1; }
  PIDS=$EDGE_PID
}
stop_nginx() { bash "$HARNESS/peers/stop.sh" nginx >/dev/null 2>&1 || true; }
start_nginx() {
  bash "$HARNESS/peers/start.sh" nginx >/dev/null
  local master; master=$(cat "$BENCH/run/nginx-cache.pid")
  PIDS="$master $(pgrep -P "$master" | tr '\n' ' ')"
}
pss_kib() { local p t=0; for p in $PIDS; do t=$((t + $(awk '/^Pss:/{print $2}' "/proc/$p/smaps_rollup"))); done; echo "$t"; }

declare -A HTTP=([nginx]=8101 [edgecache]=8100) HTTPS=([nginx]=8443 [edgecache]=8440)
OUT=${IDLE_OUT:-$(mktemp -d)}
for r in $(seq "$ROUNDS"); do
  for name in nginx edgecache; do
    for mode in http1 tls-http1 h2; do
      "start_$name"
      sleep 1
      if [ "$mode" = http1 ]; then
        idle=$(awk -v k="$(pss_kib)" 'BEGIN{printf "%.1f", k/1024}')
        echo "$r $name idle_process_MiB $idle" >> "$OUT/rows"
        echo "round $r $name: idle process PSS $idle MiB"
      fi
      port=${HTTPS[$name]}; n=$N_TLS
      [ "$mode" = http1 ] && { port=${HTTP[$name]}; n=$N; }
      # The first requests fill the cache and warm the process up; then the baseline.
      for _ in 1 2; do
        curl -sk -o /dev/null "http://127.0.0.1:${HTTP[$name]}/obj/1k.bin"
        curl -sk -o /dev/null --http2 "https://localhost:${HTTPS[$name]}/obj/1k.bin"
      done
      sleep 1
      before=$(pss_kib)
      taskset -c 1 python3 "$HERE/hold.py" --mode "$mode" --port "$port" --n "$n" --hold 6 > "$OUT/hold" 2>&1 &
      holder=$!
      for _ in $(seq 1200); do grep -q READY "$OUT/hold" && break; sleep 0.1; done
      sleep 2
      after=$(pss_kib)
      wait "$holder"
      open=$(grep -oP 'READY open=\K\d+' "$OUT/hold")
      echo "$r $name ${mode}_bytes_per_conn $(( (after - before) * 1024 / (open > 0 ? open : 1) ))" >> "$OUT/rows"
      echo "round $r $name $mode: PSS $before -> $after KiB, $(tr '\n' ' ' < "$OUT/hold")"
      "stop_$name"
    done
  done
done
bash "$HARNESS/peers/stop.sh" all >/dev/null 2>&1 || true
echo
echo "| metric | nginx | edgecache | edgecache / nginx |"
echo "|---|---:|---:|---:|"
for metric in idle_process_MiB http1_bytes_per_conn tls-http1_bytes_per_conn h2_bytes_per_conn; do
  med() { awk -v n="$1" -v m="$metric" '$2==n && $3==m {print $4}' "$OUT/rows" | sort -n | awk '{v[NR]=$1} END{ if (NR%2) print v[(NR+1)/2]; else print (v[NR/2]+v[NR/2+1])/2 }'; }
  a=$(med nginx); b=$(med edgecache)
  echo "| $metric | $a | $b | $(awk -v a="$a" -v b="$b" 'BEGIN{ if (a>0) printf "%.2f", b/a; else print "-" }') |"
done
echo "(medians over $ROUNDS rounds; $N plain connections, $N_TLS over TLS)"
