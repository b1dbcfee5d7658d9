#!/usr/bin/env bash
# Benchmark: cost in the number of tensors (issue 14). State dicts of n tensors of 16 float32 each
# (n = 10k, 40k, 160k by default), written by torch.save; for each, `modelcdr disarm` and the
# Python way (torch.load(weights_only=True) + torch.save) run in turns under GNU time.
# Prints per-tensor wall time and peak RSS, the ratios to the Python way, and the linearity of
# disarm's time (time per tensor at each n against the smallest n).
#
#   bench/bench_tensor_count.sh
#   BENCH_COUNTS="10000 40000" BENCH_REPEAT=5 bench/bench_tensor_count.sh
#
# Environment:
#   BENCH_COUNTS   tensor counts (default "10000 40000 160000")
#   BENCH_REPEAT   runs per command, the median is reported (default 3)
#   BENCH_DIR      parent directory for the temp files (default: $TMPDIR or /tmp)
#   BENCH_SKIP_PYTHON=1   skip the torch.load/torch.save measurement
#   BENCH_STRICT=1 exit 1 when a target is missed
#   MODELCDR_BIN   binary (default: <repo>/build/modelcdr)
#   TORCH_PYTHON   python with torch (default /usr/bin/python3)
#
# Targets (at the largest n): disarm <= 1 s and peak RSS <= 1 KiB per tensor; time per tensor
# at the largest n within 10% of the one at the smallest n (linear cost).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/.." && pwd)"
BIN="${MODELCDR_BIN:-$REPO/build/modelcdr}"
PY="${TORCH_PYTHON:-/usr/bin/python3}"
COUNTS="${BENCH_COUNTS:-10000 40000 160000}"
REPEAT="${BENCH_REPEAT:-3}"
TIME=/usr/bin/time

[[ -x "$BIN" ]] || { echo "modelcdr binary not found at $BIN (set MODELCDR_BIN)" >&2; exit 2; }
[[ -x "$TIME" ]] || { echo "/usr/bin/time (GNU time) is required" >&2; exit 2; }
"$PY" -c 'import torch' 2>/dev/null || { echo "$PY cannot import torch (set TORCH_PYTHON)" >&2; exit 2; }

WORK="$(mktemp -d "${BENCH_DIR:-${TMPDIR:-/tmp}}/modelcdr-bench-n.XXXXXX")"
cleanup() { rm -rf -- "$WORK"; }
trap cleanup EXIT INT TERM

# run_once TAG I CMD... : timed run number I of TAG; its output file is removed afterwards
run_once() {
    local tag="$1" i="$2"; shift 2
    rm -f -- "$WORK/out.pt"
    # GNU time gives the peak RSS; its wall clock has 10 ms steps (a third of the 10k run), so
    # wall time comes from the nanosecond clock around it (the fork of time itself included).
    local t0; t0=$(date +%s%N)
    if ! "$TIME" -v -o "$WORK/$tag.$i.time" "$@" > "$WORK/$tag.$i.log" 2>&1; then
        echo "$tag run $i failed:" >&2
        cat "$WORK/$tag.$i.log" "$WORK/$tag.$i.time" >&2
        exit 1
    fi
    echo $(( $(date +%s%N) - t0 )) > "$WORK/$tag.$i.ns"
    rm -f -- "$WORK/out.pt"
}

for n in $COUNTS; do
    IN="$WORK/in$n.pt"
    "$PY" - "$IN" "$n" <<'PYEOF'
import collections, sys, torch
path, n = sys.argv[1], int(sys.argv[2])
g = torch.Generator().manual_seed(0)
sd = collections.OrderedDict((f"layer{i}.weight", torch.rand(16, generator=g)) for i in range(n))
torch.save(sd, path)
PYEOF
    echo "== n=$n: $(stat -c %s "$IN") bytes; disarm$([[ "${BENCH_SKIP_PYTHON:-0}" != 1 ]] && echo " / python") interleaved x$REPEAT"
    cat "$IN" > /dev/null
    for ((i = 1; i <= REPEAT; i++)); do
        run_once "disarm.$n" "$i" "$BIN" disarm "$IN" -o "$WORK/out.pt" --quiet
        if [[ "${BENCH_SKIP_PYTHON:-0}" != 1 ]]; then
            run_once "python.$n" "$i" "$PY" -c \
                'import sys, torch; torch.save(torch.load(sys.argv[1], weights_only=True), sys.argv[2])' \
                "$IN" "$WORK/out.pt"
        fi
    done
    rm -f -- "$IN"
done

python3 - "$WORK" "$REPEAT" "${BENCH_STRICT:-0}" $COUNTS <<'PYEOF'
import os, re, statistics, sys
work, repeat, strict, counts = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1", [int(c) for c in sys.argv[4:]]

def parse(path):
    text = open(path).read()
    secs = int(open(path[: -len(".time")] + ".ns").read()) / 1e9
    rss_kib = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", text).group(1))
    return secs, rss_kib

def median(tag):
    runs = [parse(os.path.join(work, f"{tag}.{i}.time")) for i in range(1, repeat + 1)
            if os.path.exists(os.path.join(work, f"{tag}.{i}.time"))]
    if not runs:
        return None
    return statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)

print(f"{'n':>8} {'disarm s':>9} {'us/tensor':>9} {'RSS MiB':>8} {'B/tensor':>8} "
      f"{'python s':>9} {'py MiB':>7} {'time/py':>7} {'rss/py':>6} {'linear':>6}")
base = None
ok = True
for n in counts:
    d = median(f"disarm.{n}")
    p = median(f"python.{n}")
    per_t = d[0] / n
    per_m = d[1] * 1024 / n
    base = base or per_t
    line = f"{n:>8} {d[0]:>9.3f} {per_t * 1e6:>9.2f} {d[1] / 1024:>8.1f} {per_m:>8.0f} "
    if p:
        line += f"{p[0]:>9.3f} {p[1] / 1024:>7.1f} {d[0] / p[0]:>7.2f} {d[1] / p[1]:>6.2f} "
    else:
        line += f"{'-':>9} {'-':>7} {'-':>7} {'-':>6} "
    line += f"{per_t / base:>6.2f}"
    print(line)
big = counts[-1]
d = median(f"disarm.{big}")
lin = (d[0] / big) / base
print(f"targets at n={big}: time {d[0]:.3f} s (<= 1 s), {d[1] * 1024 / big:.0f} B peak RSS per tensor (<= 1024); "
      f"time per tensor {lin:.2f}x the one at n={counts[0]} (<= 1.10)")
if d[0] > 1.0 or d[1] * 1024 / big > 1024 or lin > 1.10:
    ok = False
    print("TARGET MISSED")
sys.exit(1 if strict and not ok else 0)
PYEOF
