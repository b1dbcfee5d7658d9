#!/usr/bin/env bash
# modelcdr serve: cached-file throughput against nginx sendfile of the same bytes (wrk, 1 and 32
# connections), and first-request latency against `modelcdr disarm` of the same file. Prints
# ratios measured in this one run (bench/README.md). Targets: throughput >= 0.8x nginx,
# first request <= 1.2x disarm. BENCH_STRICT=1 exits 1 when a target is missed.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${MODELCDR_BIN:-$ROOT/build/modelcdr}
PY=${TORCH_PYTHON:-/usr/bin/python3}
SIZE_MB=${BENCH_SIZE_MB:-64}
DUR=${BENCH_DURATION:-5}
REPEAT=${BENCH_REPEAT:-3}
for tool in wrk nginx curl; do
  command -v $tool >/dev/null || [ -x /usr/sbin/$tool ] || { echo "bench_serve: $tool missing (scripts/install-deps.sh)"; exit 2; }
done
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
W=$(mktemp -d "${BENCH_DIR:-/tmp}/bench_serve.XXXXXX")
chmod 755 "$W"  # nginx's workers (nobody) read the served copy below it
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$W"; }
trap cleanup EXIT

free_port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
mkdir -p "$W/store/bench/model"
"$PY" - "$W/store/bench/model/pytorch_model.bin" "$SIZE_MB" <<'PYEOF'
import sys, torch
n = int(sys.argv[2]) * (1 << 20) // 4 // 8
torch.save({f"t{i}": torch.randn(n) for i in range(8)}, sys.argv[1])
PYEOF
IN=$W/store/bench/model/pytorch_model.bin

# First-request latency: a fresh cache each time, against disarm of the same file.
GW_PORT=$(free_port)
"$BIN" serve --store "$W/store" --cache "$W/cache" --listen 127.0.0.1:$GW_PORT >"$W/gw.out" 2>"$W/gw.err" &
GW_PID=$!
PIDS+=($GW_PID)
for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$GW_PORT/api/models/bench/model" && break; sleep 0.1; done
t() { local s e; s=$(date +%s%N); "$@" >/dev/null 2>&1; e=$(date +%s%N); echo $(( e - s )); }  # ns
# CPU seconds (user + sys) too, since wall times are inflated on a loaded machine: of the disarm
# process, and of the gateway process (/proc/PID/stat, clock ticks) over its first request.
TCK=$(getconf CLK_TCK)
gw_ticks() { awk '{print $14 + $15}' "/proc/$GW_PID/stat"; }
first=(); disarm=(); first_cpu=(); disarm_cpu=()
for i in $(seq "$REPEAT"); do
  cat "$IN" >/dev/null
  rm -rf "$W/out.bin"; disarm+=("$(t /usr/bin/time -f "%U %S" -o "$W/disarm.cpu" "$BIN" disarm "$IN" -o "$W/out.bin" --quiet)")
  disarm_cpu+=("$(awk '{print $1 + $2}' "$W/disarm.cpu")")
  rm -rf "$W/cache/objects" "$W/cache/refs"; mkdir -p "$W/cache/objects"
  before=$(gw_ticks)
  first+=("$(t curl -sf -o /dev/null "http://127.0.0.1:$GW_PORT/bench/model/resolve/main/pytorch_model.bin")")
  sleep 0.5  # the entry is committed after the last byte is sent; its CPU belongs to the request
  first_cpu+=("$(awk -v a="$before" -v b="$(gw_ticks)" -v t="$TCK" 'BEGIN {print (b - a) / t}')")
done
# The served (cached) bytes, also given to nginx.
curl -sf -o "$W/served.bin" "http://127.0.0.1:$GW_PORT/bench/model/resolve/main/pytorch_model.bin"
mkdir -p "$W/nginx/www/bench/model/resolve/main"
cp "$W/served.bin" "$W/nginx/www/bench/model/resolve/main/pytorch_model.bin"
NG_PORT=$(free_port)
cat >"$W/nginx/nginx.conf" <<NGEOF
worker_processes 1;
events { worker_connections 1024; }
http { access_log off; sendfile on; tcp_nopush on;
  server { listen 127.0.0.1:$NG_PORT; root $W/nginx/www; } }
NGEOF
"$NGINX" -p "$W/nginx" -c "$W/nginx/nginx.conf" -e "$W/nginx/error.log" -g "daemon off; pid $W/nginx/nginx.pid; error_log $W/nginx/error.log;" &
PIDS+=($!)
sleep 1
path=/bench/model/resolve/main/pytorch_model.bin
for port in $GW_PORT $NG_PORT; do  # both must serve the same bytes, or the comparison means nothing
  curl -sf "http://127.0.0.1:$port$path" | cmp - "$W/served.bin" || { echo "bench_serve: port $port did not serve the file"; exit 2; }
done
rate() {  # bytes/s wrk measured
  wrk -t "$(( $1 < 4 ? $1 : 4 ))" -c "$1" -d "${DUR}s" "$2" | awk '/Transfer\/sec/ {v=$2; u=substr(v,length(v)-1); n=substr(v,1,length(v)-2);
    m=(u=="GB")?1073741824:(u=="MB")?1048576:(u=="KB")?1024:1; print n*m}'
}
results=()
for c in 1 32; do
  gw=$(rate $c "http://127.0.0.1:$GW_PORT$path"); ng=$(rate $c "http://127.0.0.1:$NG_PORT$path")
  results+=("$c $gw $ng")
done
"$PY" - "${first[*]}" "${disarm[*]}" "${first_cpu[*]}" "${disarm_cpu[*]}" "${results[@]}" <<'PYEOF'
import os, statistics, sys
first = [int(x) / 1e9 for x in sys.argv[1].split()]
disarm = [int(x) / 1e9 for x in sys.argv[2].split()]
ok = True
f, d = statistics.median(first), statistics.median(disarm)
print(f"load average {os.getloadavg()[0]:.1f}")
print(f"first request (fetch + rebuild + send): {f:.3f} s; modelcdr disarm: {d:.3f} s; ratio {f/d:.2f} (target <= 1.2)")
fc, dc = statistics.median(map(float, sys.argv[3].split())), statistics.median(map(float, sys.argv[4].split()))
print(f"  CPU (user + sys): gateway over the first request {fc:.3f} s; disarm {dc:.3f} s; ratio {fc/max(dc, 1e-9):.2f}")
ok &= f / d <= 1.2
for line in sys.argv[5:]:
    c, gw, ng = line.split()
    r = float(gw) / float(ng)
    print(f"cached file, {c:>2} connections: gateway {float(gw)/2**20:.0f} MiB/s, nginx sendfile {float(ng)/2**20:.0f} MiB/s, ratio {r:.2f} (target >= 0.8)")
    ok &= r >= 0.8
if os.environ.get("BENCH_STRICT") == "1" and not ok:
    sys.exit(1)
PYEOF
