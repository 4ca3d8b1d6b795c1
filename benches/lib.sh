# Shared by the side-by-side scripts that start their own nginx origin, an nginx peer and
# edgecache: source it after setting WORK and BIN.

bench_pids=()
bench_cleanup() {
  local p f
  for p in "${bench_pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for f in "$WORK"/run/*.pid; do [ -f "$f" ] && kill "$(cat "$f")" 2>/dev/null || true; done
}

# start_side_by_side ORIGIN_CONF PEER_CONF EDGE_CONFIG ADMIN_ADDRESS: the origin pinned to
# CPU 1, the nginx peer and edgecache to CPU 0; waits until edgecache is ready and sets
# EDGE_PID.
start_side_by_side() {
  trap bench_cleanup EXIT
  taskset -c 1 nginx -c "$1" -g 'daemon on;'
  taskset -c 0 nginx -c "$2" -g 'daemon on;'
  taskset -c 0 "$BIN" serve --config "$3" > "$WORK/log/edgecache.out" 2> "$WORK/log/edgecache.err" &
  EDGE_PID=$!
  bench_pids+=("$EDGE_PID")
  local _
  for _ in $(seq 100); do
    curl -sf "http://$4/readyz" >/dev/null && return 0
    sleep 0.1
  done
  echo "edgecache not ready"; cat "$WORK/log/edgecache.err"; exit 1
}

# nginx_pids PIDFILE: the master and its worker processes (not the cache loader, which
# exits on its own).
nginx_pids() {
  local master
  master=$(cat "$1")
  echo "$master $(ps -o pid=,args= --ppid "$master" | awk '/worker process/ {print $1}' | tr '\n' ' ')"
}

# cpu_ticks PID...: user+system clock ticks the processes have used.
cpu_ticks() {
  local total=0 p
  for p in "$@"; do total=$((total + $(awk '{print $14 + $15}' "/proc/$p/stat"))); done
  echo $total
}
TICK_US=$((1000000 / $(getconf CLK_TCK)))

# wrk_figures WRK_OUTPUT TICKS_BEFORE TICKS_AFTER: "req/s p50 p99 requests bytes_read
# cpu_us_per_request" from one `wrk --latency` run and the proxy's CPU ticks around it.
wrk_figures() {
  local rps p50 p99 requests read_bytes
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$1")
  p50=$(awk '$1=="50%" {print $2}' <<<"$1")
  p99=$(awk '$1=="99%" {print $2}' <<<"$1")
  requests=$(awk '/requests in/ {print $1}' <<<"$1")
  read_bytes=$(awk '/requests in/ {print $5}' <<<"$1")
  echo "$rps $p50 $p99 $requests $read_bytes $(python3 -c "print(round(($3 - $2) * $TICK_US / $requests, 2))")"
}
