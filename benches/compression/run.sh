#!/usr/bin/env bash
# Compression at the edge, edgecache against nginx (proxy_cache with Mastodon's gzip
# settings) on the same origin, in one run.
#
#   bash benches/compression/run.sh          (ROUNDS=3 DURATION=8 CONNS=64 by default)
#
# The origin serves a 40 KiB Mastodon-timeline-like JSON and a 300 KiB JavaScript bundle
# unencoded. First the bytes on the wire for each file and each coding a client may ask for
# (nginx has gzip only; the bodies are checked against the files after decoding). Then
# compressed cache hits under load: wrk with `Accept-Encoding: gzip` against both, and with
# `br` and `zstd` against edgecache, rounds interleaved, proxies pinned to CPU 0, origin and
# wrk to CPU 1. Ratios are edgecache / nginx-gzip, medians of per-round ratios.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
WORK=/tmp/edgecache-bench-gzip
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-8}
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

rm -rf $WORK/nginx-cache
mkdir -p $WORK/run $WORK/log $WORK/tmp $WORK/www
python3 - "$WORK/www" <<'PY'
import random, sys
out = sys.argv[1]
r = random.Random(7)
words = ["fediverse", "mastodon", "hello", "world", "photo", "cat", "coffee", "release", "rust", "edge"]
posts = []
n = 0
while sum(map(len, posts)) < 40 * 1024:
    posts.append('{"id":"%d","created_at":"2026-12-0%dT%02d:%02d:00.000Z","visibility":"public","account":{"id":"%d","acct":"user%d@example.social","display_name":"User %d","avatar":"https://media.example.social/accounts/avatars/%d/original/%x.png"},"content":"<p>%s</p>","replies_count":%d,"reblogs_count":%d,"favourites_count":%d,"tags":[{"name":"%s"}]}'
        % (109000000000 + r.randrange(10**9), 1 + n % 5, r.randrange(24), r.randrange(60), r.randrange(10**6), n % 97, n % 97, r.randrange(10**6), r.getrandbits(64),
           " ".join(r.choice(words) for _ in range(12 + r.randrange(20))), r.randrange(20), r.randrange(50), r.randrange(200), r.choice(words)))
    n += 1
open(f"{out}/timeline.json", "w").write(("[" + ",".join(posts) + "]")[: 40 * 1024])
parts = []
i = 0
while sum(map(len, parts)) < 300 * 1024:
    name = "".join(r.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(2 + r.randrange(6)))
    parts.append("function %s_%d(e,t,n){var r=e.%s||{};if(t&&t.length>%d){return r.map(function(o){return o.id===n?Object.assign({},o,{%s:!0}):o})}return void 0===r[%d]?null:\"%s\"+t}\n"
        % (name, i, name, r.randrange(100), name, r.randrange(1000), " ".join(r.choice(words) for _ in range(3))))
    i += 1
open(f"{out}/bundle.js", "w").write("".join(parts)[: 300 * 1024])
PY
# shellcheck source=../lib.sh
. "$HERE/../lib.sh"
start_side_by_side "$HERE/origin.conf" "$HERE/nginx-cache.conf" "$HERE/edgecache.yaml" 127.0.0.1:18902
declare -A TARGET=([nginx]=http://127.0.0.1:18201 [edgecache]=http://127.0.0.1:18200)

# Bytes on the wire, each body checked after decoding (curl decodes gzip, br and zstd).
echo
echo "file           asked     nginx (coding, bytes)   edgecache (coding, bytes)   edgecache/nginx-gzip"
for f in timeline.json bundle.js; do
  plain=$(stat -c %s "$WORK/www/$f")
  declare -A SIZE=()
  for ae in gzip br zstd identity; do
    for t in nginx edgecache; do
      for _ in 1 2; do  # the second answer is a hit
        got=$(curl -sf --compressed -H "Accept-Encoding: $ae" -o $WORK/tmp/body -D $WORK/tmp/head \
          -w '%{size_download}' "${TARGET[$t]}/$f")
      done
      cmp -s $WORK/tmp/body "$WORK/www/$f" || { echo "$t serves a wrong $f for $ae"; exit 1; }
      coding=$(awk 'tolower($1)=="content-encoding:" {print $2}' $WORK/tmp/head | tr -d '\r')
      SIZE[$t,$ae]="${coding:-identity} $got"
    done
  done
  nginx_gzip=${SIZE[nginx,gzip]#* }
  for ae in gzip br zstd identity; do
    e=${SIZE[edgecache,$ae]#* }
    printf '%-14s %-9s %-23s %-27s %s\n' "$f" "$ae" "${SIZE[nginx,$ae]}" "${SIZE[edgecache,$ae]}" \
      "$(python3 -c "print(round($e / $nginx_gzip, 3))")"
  done
  echo "$f unencoded: $plain bytes"
done

RAW=$WORK/raw.tsv
: > "$RAW"
declare -A PIDS
PIDS[nginx]=$(nginx_pids $WORK/run/nginx-cache.pid)
PIDS[edgecache]=$EDGE_PID
origin_lines() { wc -l < $WORK/log/origin-access.log; }
measure() { # target coding file round
  local out before after origin_before
  origin_before=$(origin_lines)
  before=$(cpu_ticks ${PIDS[$1]})
  out=$(taskset -c 1 wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency -H "Accept-Encoding: $2" "${TARGET[$1]}/$3")
  after=$(cpu_ticks ${PIDS[$1]})
  [ "$(origin_lines)" = "$origin_before" ] || { echo "$1 went to the origin during a hit run"; exit 1; }
  if grep -q -E "Non-2xx|Socket errors: connect [1-9]|read [1-9]" <<<"$out"; then
    echo "$1 $2 $3: errors under load"; echo "$out"; exit 1
  fi
  local rps p50 p99 requests read_bytes cpu_us
  read -r rps p50 p99 requests read_bytes cpu_us < <(wrk_figures "$out" "$before" "$after")
  printf '%s\t%s\t%s-%s\t%s\t%s\t%s\t%s\n' "$3" "$4" "$1" "$2" "$rps" "$p50" "$p99" "$cpu_us" >> "$RAW"
  echo "round $4 $3 $1 $2: $rps req/s, p50 $p50, p99 $p99, proxy CPU $cpu_us us/request, $read_bytes read in $requests requests"
}
for round in $(seq "$ROUNDS"); do
  runs=("nginx gzip" "edgecache gzip" "edgecache br" "edgecache zstd")
  if [ $((round % 2)) -eq 0 ]; then runs=("edgecache zstd" "edgecache br" "edgecache gzip" "nginx gzip"); fi
  for f in timeline.json bundle.js; do
    for r in "${runs[@]}"; do measure ${r% *} ${r#* } "$f" "$round"; done
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
for f, rnd, tgt, rps, p50, p99, cpu in rows:
    by.setdefault((f, rnd), {})[tgt] = (float(rps), ms(p50), ms(p99), float(cpu))
names = ("req/s", "p50 ms", "p99 ms", "CPU us/req")
print("\ncompressed hits: medians, and edgecache / nginx-gzip (median of per-round ratios)")
print(f"{'file':14} {'metric':10} {'nginx-gzip':>11} {'ec-gzip':>9} {'ec-br':>9} {'ec-zstd':>9} {'gzip/n':>7} {'br/n':>7} {'zstd/n':>7}")
for f in sorted({k[0] for k in by}):
    rounds = [v for k, v in by.items() if k[0] == f and len(v) == 4]
    for i, name in enumerate(names):
        med = {t: statistics.median(r[t][i] for r in rounds) for t in rounds[0]}
        ratio = {t: statistics.median(r[t][i] / r["nginx-gzip"][i] for r in rounds) for t in rounds[0]}
        print(f"{f:14} {name:10} {med['nginx-gzip']:11.2f} {med['edgecache-gzip']:9.2f} {med['edgecache-br']:9.2f} {med['edgecache-zstd']:9.2f}"
              f" {ratio['edgecache-gzip']:7.2f} {ratio['edgecache-br']:7.2f} {ratio['edgecache-zstd']:7.2f}")
PY
