#!/usr/bin/env bash
# Pass-through proxying, edgecache against nginx on the same origin, in one run, with the
# origin itself measured directly in the same rounds (what proxying adds).
#
#   bash benches/proxy_pass/run.sh          (ROUNDS=3 DURATION=10 CONNS=64 by default)
#
# Both proxies forward every request (nothing is cached) to one nginx origin serving a
# 1 KiB and a 100 KiB file. Proxies run pinned to CPU 0, origin and wrk to CPU 1. Rounds are
# interleaved (A B, B A, ...), and each ratio is the median of the per-round ratios
# edgecache / nginx: above 1.0 means more requests per second (or higher latency or more
# proxy CPU time per request, for those rows). Only ratios from one run mean anything on a
# shared 2-core machine.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
WORK=/tmp/edgecache-bench
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}
CONNS=${CONNS:-64}

need=()
command -v nginx >/dev/null || need+=(nginx)
command -v wrk >/dev/null || need+=(wrk)
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
fi
bash "$ROOT/scripts/system-packages.sh"   # cmake for pingora's zlib-ng on a fresh machine
(cd "$ROOT" && cargo build --release --locked --quiet)
BIN=$ROOT/target/release/edgecache

mkdir -p $WORK/run $WORK/log $WORK/tmp $WORK/www
head -c 1024 /dev/urandom > $WORK/www/1k.bin
head -c 102400 /dev/urandom > $WORK/www/100k.bin
# shellcheck source=../lib.sh
. "$HERE/../lib.sh"
start_side_by_side "$HERE/origin.conf" "$HERE/nginx-proxy.conf" "$HERE/edgecache.yaml" 127.0.0.1:18901
declare -A TARGET=([nginx]=http://127.0.0.1:18101 [edgecache]=http://127.0.0.1:18100 [direct]=http://127.0.0.1:18080)
for t in nginx edgecache; do
  for o in 1k.bin 100k.bin; do
    cmp -s <(curl -sf "${TARGET[$t]}/$o") "$WORK/www/$o" || { echo "$t serves a wrong $o"; exit 1; }
  done
done

RAW=$WORK/raw.tsv
: > "$RAW"
declare -A PIDS
PIDS[nginx]=$(nginx_pids $WORK/run/nginx-proxy.pid)
PIDS[edgecache]=$EDGE_PID
PIDS[direct]=""   # no proxy: its CPU column stays 0
measure() { # target object round
  local out before after
  before=$(cpu_ticks ${PIDS[$1]})
  out=$(taskset -c 1 wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency "${TARGET[$1]}/$2")
  after=$(cpu_ticks ${PIDS[$1]})
  local rps p50 p99 requests read_bytes cpu_us
  read -r rps p50 p99 requests read_bytes cpu_us < <(wrk_figures "$out" "$before" "$after")
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$2" "$3" "$1" "$rps" "$p50" "$p99" "$cpu_us" >> "$RAW"
  echo "round $3 $2 $1: $rps req/s, p50 $p50, p99 $p99, proxy CPU $cpu_us us/request"
}
for round in $(seq "$ROUNDS"); do
  order=(nginx edgecache direct)
  [ $((round % 2)) -eq 0 ] && order=(direct edgecache nginx)
  for o in 1k.bin 100k.bin; do
    for t in "${order[@]}"; do measure "$t" "$o" "$round"; done
  done
done

python3 - "$RAW" <<'PY'
import statistics, sys
def ms(v):
    for unit, f in (("us", 0.001), ("ms", 1.0), ("s", 1000.0)):
        if v.endswith(unit) and not (unit == "s" and v.endswith(("us", "ms"))):
            return float(v[: -len(unit)]) * f
    return float(v)
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
by = {}
for obj, rnd, tgt, rps, p50, p99, cpu in rows:
    by.setdefault((obj, rnd), {})[tgt] = (float(rps), ms(p50), ms(p99), float(cpu))
print("\nobject    metric     direct(median)  nginx(median)  edgecache(median)  edgecache/nginx  edgecache-direct")
for obj in sorted({k[0] for k in by}):
    rounds = [v for k, v in by.items() if k[0] == obj and len(v) == 3]
    for i, name in enumerate(("req/s", "p50 ms", "p99 ms", "CPU us/req")):
        d = statistics.median(r["direct"][i] for r in rounds)
        n = statistics.median(r["nginx"][i] for r in rounds)
        e = statistics.median(r["edgecache"][i] for r in rounds)
        ratio = statistics.median(r["edgecache"][i] / r["nginx"][i] for r in rounds)
        added = statistics.median(r["edgecache"][i] - r["direct"][i] for r in rounds)
        print(f"{obj:9} {name:9} {d:15.2f} {n:14.2f} {e:18.2f}  {ratio:15.2f}  {added:15.2f}")
PY
