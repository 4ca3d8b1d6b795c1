#!/usr/bin/env bash
# Video without waste: what edgecache's slices cost the origin, against nginx's proxy_cache
# (whole objects) and nginx with `slice 1m`, on the same origin in one run.
#
#   bash benches/slices/run.sh
#
# Three workloads, each on caches that start cold, one proxy at a time (so the origin's log
# tells whose fetches it served); every answer is checked byte for byte (drive.py):
#   aligned    200 clients at once, each asking a random aligned 1 MiB range of ten cold
#              40 MiB videos, then a bytes=0-1 probe of each video; once per seed in
#              SEEDS (default "7 8 9"), each seed with videos of its own;
#   mix        3,000 client sessions over 600 images and 40 videos (5-40 MiB): 95 % images,
#              5 % videos, of which 70 % are ranges (iOS probes and closed ranges, Android
#              open-ended ranges read for 2 MiB, browsers reading the start and the end);
#   firstbyte  the time to the first body byte of a cold bytes=0-1 and of a cold whole
#              object, in turn (edgecache: a slicing route and a route that stores whole
#              objects).
# Origin bytes are the body bytes the origin sent (its log); offload is 1 - origin/client.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
WORK=/tmp/edgecache-bench-slices

command -v nginx >/dev/null || {
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx
}
bash "$ROOT/scripts/system-packages.sh"   # cmake for pingora's zlib-ng on a fresh machine
(cd "$ROOT" && cargo build --release --locked --quiet)
BIN=$ROOT/target/release/edgecache

rm -rf $WORK/nginx-whole $WORK/nginx-slice $WORK/edge-cache $WORK/log $WORK/tmp
mkdir -p $WORK/run $WORK/log $WORK/tmp $WORK/www
SEEDS=${SEEDS:-7 8 9}
# shellcheck disable=SC2086
python3 "$HERE/drive.py" make $WORK/www $SEEDS
# shellcheck source=../lib.sh
. "$HERE/../lib.sh"
start_side_by_side "$HERE/origin.conf" "$HERE/nginx-cache.conf" "$HERE/edgecache.yaml" 127.0.0.1:18903
declare -A PORT=([nginx]=18301 [nginx-slice]=18302 [edgecache]=18300)
PEERS=(nginx nginx-slice edgecache)
LOG=$WORK/log/origin-access.log

# Waits until the origin's log has not grown for a second (a proxy may go on fetching after
# its client has gone), then prints the body bytes it logged after line $1.
origin_bytes_after() {
  local last=-1 now
  for _ in $(seq 60); do
    now=$(wc -l < $LOG)
    [ "$now" = "$last" ] && break
    last=$now
    sleep 1
  done
  tail -n +$(($1 + 1)) $LOG | awk '{s += $1} END {print s + 0}'
}

declare -A RESULT
# run_workload NAME WORKLOAD: drive.py's WORKLOAD (seed $ARG) against each proxy in turn,
# with the origin bytes it cost, as a line of results.jsonl under NAME.
run_workload() {
  local name=$1 peer mark out origin
  shift
  for peer in "${PEERS[@]}"; do
    mark=$(wc -l < $LOG)
    out=$(taskset -c 1 python3 "$HERE/drive.py" "$@" "${PORT[$peer]}" $WORK/www "${ARG:-7}")
    origin=$(origin_bytes_after "$mark")
    RESULT[$name,$peer]=$(python3 -c "import json,sys; d=json.loads(sys.argv[1]); d['origin_bytes']=int(sys.argv[2]); print(json.dumps(d))" "$out" "$origin")
    echo "$name $peer ${RESULT[$name,$peer]}" >> $WORK/log/results.jsonl
  done
}
for seed in $SEEDS; do
  ARG=$seed run_workload "aligned-$seed" aligned
done
ARG=7 run_workload mix mix

for peer in "${PEERS[@]}"; do
  # edgecache's whole objects come from a route that does not slice.
  whole=v/
  [ "$peer" = edgecache ] && whole=w/
  RESULT[first,$peer]=$(taskset -c 1 python3 "$HERE/drive.py" firstbyte "${PORT[$peer]}" $WORK/www $whole)
  echo "first $peer ${RESULT[first,$peer]}" >> $WORK/log/results.jsonl
done

python3 - "$WORK/log/results.jsonl" <<'PY'
import json, sys
rows = {}
for line in open(sys.argv[1]):
    scenario, peer, data = line.split(" ", 2)
    rows[(scenario, peer)] = json.loads(data)
peers = ["nginx", "nginx-slice", "edgecache"]
mib = lambda b: f"{b / 2**20:,.1f}"
scenarios = [s for s, _ in rows if s.startswith("aligned-")]
scenarios = sorted(set(scenarios), key=lambda s: int(s.split("-")[1])) + ["mix"]
for scenario in scenarios:
    print(f"\n{scenario}:")
    print("| proxy | client MiB | distinct asked MiB | origin MiB | origin / distinct | origin / nginx | byte offload | violations | wrong_range |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    base = rows[(scenario, "nginx")]["origin_bytes"]
    for p in peers:
        r = rows[(scenario, p)]
        print(f"| {p} | {mib(r['client_bytes'])} | {mib(r['distinct_bytes'])} | {mib(r['origin_bytes'])} "
              f"| {r['origin_bytes'] / max(r['distinct_bytes'], 1):.3f} | {r['origin_bytes'] / max(base, 1):.3f} "
              f"| {1 - r['origin_bytes'] / max(r['client_bytes'], 1):.1%} | {r['violations']} | {r['wrong_range']} |")
    r = rows[(scenario, "edgecache")]
    print(f"ceilings on this workload: whole objects {r['ceiling_whole_objects']:.1%}, "
          f"1 MiB slices {r['ceiling_1mib_slices']:.1%}, bytes asked {r['ceiling_bytes_asked']:.1%}")
    for p in peers:
        if rows[(scenario, p)]["first_violations"]:
            print(f"  {p}: {rows[(scenario, p)]['first_violations']}")
aligned = [s for s in scenarios if s != "mix"]
if len(aligned) > 1:
    # The probes' cost depends on how many videos had no client asking for their first
    # slice, which varies by seed: the target is judged on all seeds together.
    print(f"\naligned, all {len(aligned)} seeds together:")
    print("| proxy | origin / distinct | origin / nginx |")
    print("|---|---:|---:|")
    for p in peers:
        origin = sum(rows[(s, p)]["origin_bytes"] for s in aligned)
        distinct = sum(rows[(s, p)]["distinct_bytes"] for s in aligned)
        base = sum(rows[(s, "nginx")]["origin_bytes"] for s in aligned)
        print(f"| {p} | {origin / max(distinct, 1):.3f} | {origin / max(base, 1):.3f} |")
print("\nfirst body byte of a cold request (median of 6 each, taken in turn, ms):")
print("| proxy | bytes=0-1 of a 40 MiB video | a 40 MiB video whole | range / whole |")
print("|---|---:|---:|---:|")
for p in peers:
    a = rows[("first", p)]["range_ms_median"]
    b = rows[("first", p)]["whole_ms_median"]
    print(f"| {p} | {a} | {b} | {a / b:.2f} |")
PY
