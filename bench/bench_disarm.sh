#!/usr/bin/env bash
# Benchmark: modelcdr disarm vs cp vs the Python way (torch.load(weights_only=True) + torch.save).
#
#   bench/bench_disarm.sh                 # 1 GiB float32 state dict (16 tensors)
#   BENCH_SIZE_MB=256 bench/bench_disarm.sh
#
# Environment:
#   BENCH_SIZE_MB   total tensor payload in MiB (default 1024)
#   BENCH_TENSORS   number of tensors (default 16)
#   BENCH_REPEAT    runs per command, the median is reported (default 3)
#   BENCH_DIR       parent directory for the temp files (default: $TMPDIR or /tmp); input and all outputs
#                   live in one temp dir there, i.e. on one filesystem
#   BENCH_SKIP_PYTHON=1   skip the torch.load/torch.save measurement
#   BENCH_STRICT=1  exit 1 when a target is missed
#   MODELCDR_BIN    binary (default: <repo>/build/modelcdr)
#   TORCH_PYTHON    python with torch (default /usr/bin/python3)
#
# Targets: disarm wall time <= 1.25 x cp wall time; disarm peak RSS <= 64 MiB.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/.." && pwd)"
BIN="${MODELCDR_BIN:-$REPO/build/modelcdr}"
PY="${TORCH_PYTHON:-/usr/bin/python3}"
SIZE_MB="${BENCH_SIZE_MB:-1024}"
NT="${BENCH_TENSORS:-16}"
REPEAT="${BENCH_REPEAT:-3}"
TIME=/usr/bin/time

[[ -x "$BIN" ]] || { echo "modelcdr binary not found at $BIN (set MODELCDR_BIN)" >&2; exit 2; }
[[ -x "$TIME" ]] || { echo "/usr/bin/time (GNU time) is required" >&2; exit 2; }
"$PY" -c 'import torch' 2>/dev/null || { echo "$PY cannot import torch (set TORCH_PYTHON)" >&2; exit 2; }

WORK="$(mktemp -d "${BENCH_DIR:-${TMPDIR:-/tmp}}/modelcdr-bench.XXXXXX")"
cleanup() { rm -rf -- "$WORK"; }
trap cleanup EXIT INT TERM

IN="$WORK/in.pt"
echo "== generating ${SIZE_MB} MiB float32 state dict (${NT} tensors) in $WORK"
"$PY" - "$IN" "$SIZE_MB" "$NT" <<'PYEOF'
import collections, sys, torch
path, size_mb, nt = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
total = size_mb * 1024 * 1024 // 4            # float32 elements
per = total // nt
sd = collections.OrderedDict()
g = torch.Generator().manual_seed(0)
for i in range(nt):
    n = per if i < nt - 1 else total - per * (nt - 1)
    sd[f"layer{i}.weight"] = torch.rand(n, generator=g)
torch.save(sd, path)
PYEOF
ls -l "$IN"

echo "== warming the page cache"
cat "$IN" > /dev/null

# run_once NAME OUTFILE I CMD... : timed run number I, output removed (untimed) afterwards
run_once() {
    local name="$1" out="$2" i="$3"; shift 3
    rm -f -- "$out"
    sync
    cat "$IN" > /dev/null
    if ! "$TIME" -v -o "$WORK/$name.$i.time" "$@" > "$WORK/$name.$i.log" 2>&1; then
        echo "$name run $i failed:" >&2
        cat "$WORK/$name.$i.log" "$WORK/$name.$i.time" >&2
        exit 1
    fi
    rm -f -- "$out"
}

# The commands take turns (cp, disarm, python; cp, disarm, python; ...) so that a slow phase
# of the machine (writeback, a neighbour's load) hits all of them alike rather than one.
echo "== cp / modelcdr disarm$([[ "${BENCH_SKIP_PYTHON:-0}" != 1 ]] && echo " / python torch.load+torch.save"), interleaved x$REPEAT"
for ((i = 1; i <= REPEAT; i++)); do
    run_once cp "$WORK/cp.pt" "$i" cp "$IN" "$WORK/cp.pt"
    run_once disarm "$WORK/disarm.pt" "$i" "$BIN" disarm "$IN" -o "$WORK/disarm.pt" --quiet
    if [[ "${BENCH_SKIP_PYTHON:-0}" != 1 ]]; then
        run_once python "$WORK/python.pt" "$i" "$PY" -c \
            'import sys, torch; torch.save(torch.load(sys.argv[1], weights_only=True), sys.argv[2])' \
            "$IN" "$WORK/python.pt"
    fi
done

# a final correctness spot check of one disarm output (outside the timings)
"$BIN" disarm "$IN" -o "$WORK/check.pt" --quiet
"$PY" - "$IN" "$WORK/check.pt" <<'PYEOF'
import sys, torch
a = torch.load(sys.argv[1], weights_only=True)
b = torch.load(sys.argv[2], weights_only=True)
assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a), "disarm output differs"
print("disarm output verified equal to the input")
PYEOF
rm -f -- "$WORK/check.pt"

# peak memory split into anonymous vs file-backed pages (GNU time's max RSS counts mmapped input pages)
echo "== disarm memory breakdown (one extra run, sampled from /proc)"
python3 "$HERE/rss_sampler.py" "$BIN" disarm "$IN" -o "$WORK/check.pt" --quiet
rm -f -- "$WORK/check.pt"

python3 "$HERE/bench_stats.py" "$WORK" "$REPEAT" "$SIZE_MB" "$(stat -c %s "$IN")"
