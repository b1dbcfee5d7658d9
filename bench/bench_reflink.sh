#!/usr/bin/env bash
# Benchmark (issue 15): disarm on a copy-on-write file system against plain and reflink copies.
#
#   sudo bench/bench_reflink.sh              # 1 GiB and 4 GiB float32 checkpoints
#   BENCH_SIZES_MB="256" bench/bench_reflink.sh
#
# Makes a sparse XFS image (mkfs.xfs -m reflink=1), mounts it on a loop device, writes each
# checkpoint there with torch.save and times, with a warm page cache (the input is read with cat
# before each run), in turns:
#   cp --reflink=never IN OUT     the plain copy
#   cp --reflink=always IN OUT    the metadata-only floor
#   modelcdr disarm IN -o OUT     block sharing on (default)
#   modelcdr disarm --no-reflink  every byte copied
# and reports median wall times (of the command alone, and of the command plus the sync that
# writes back what it left dirty), the ratio disarm / plain copy, the share of tensor payload
# bytes that the output shares with the input (report field shared_bytes, and FIEMAP's shared
# extents), and the extra space the disarmed output takes on the file system (df after sync).
#
# Environment:
#   BENCH_SIZES_MB  checkpoint sizes in MiB (default "1024 4096"), tensors of 64 MiB
#   BENCH_REPEAT    runs per command, the median is reported (default 3)
#   BENCH_DIR       where the image lives (default /tmp); needs about 2.2 x the largest size free
#   BENCH_STRICT=1  exit 1 when a target is missed
#   MODELCDR_BIN, TORCH_PYTHON as in bench_disarm.sh
#
# Targets: disarm <= 0.1 x the plain copy; >= 99% of payload bytes shared; extra space <= 1% of
# the input. Needs root (loop mount) and xfsprogs.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/.." && pwd)"
BIN="${MODELCDR_BIN:-$REPO/build/modelcdr}"
PY="${TORCH_PYTHON:-/usr/bin/python3}"
SIZES="${BENCH_SIZES_MB:-1024 4096}"
REPEAT="${BENCH_REPEAT:-3}"
[[ -x "$BIN" ]] || { echo "modelcdr binary not found at $BIN (set MODELCDR_BIN)" >&2; exit 2; }
[[ "$(id -u)" == 0 ]] || { echo "needs root for the loop mount" >&2; exit 2; }
command -v mkfs.xfs >/dev/null || { echo "mkfs.xfs missing: scripts/install-deps.sh installs xfsprogs" >&2; exit 2; }

largest=0
for s in $SIZES; do ((s > largest)) && largest=$s; done
WORK="$(mktemp -d "${BENCH_DIR:-/tmp}/modelcdr-reflink.XXXXXX")"
MNT="$WORK/mnt"
mkdir "$MNT"
cleanup() { umount "$MNT" 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
truncate -s "$((largest * 22 / 10 + 2048))M" "$WORK/xfs.img"
mkfs.xfs -q -f -m reflink=1 "$WORK/xfs.img"
mount -o loop "$WORK/xfs.img" "$MNT"

now() { date +%s.%N; }
used_bytes() {
  sync
  local blocks free size
  read -r blocks free size < <(stat -f -c '%b %f %S' "$MNT")
  echo $(((blocks - free) * size))
}
median() { sort -g | awk '{a[NR] = $1} END {print a[int((NR + 1) / 2)]}'; }

# Bytes of a file in extents the file system marks shared (FIEMAP_EXTENT_SHARED).
fiemap_shared() {
  "$PY" - "$1" <<'EOF'
import fcntl, struct, sys
H, E = struct.Struct("=QQIIII"), struct.Struct("=QQQQQIIII")
total, start = 0, 0
with open(sys.argv[1], "rb") as f:
    while True:
        buf = bytearray(H.pack(start, (1 << 64) - 1 - start, 1, 0, 512, 0)) + bytes(E.size * 512)
        fcntl.ioctl(f.fileno(), 0xC020660B, buf)
        n = H.unpack_from(buf)[3]
        last = None
        for i in range(n):
            lo, ph, ln, _, _, fl, _, _, _ = E.unpack_from(buf, H.size + i * E.size)
            total += ln if fl & 0x2000 else 0
            last = lo + ln
        if n < 512:
            break
        start = last
print(total)
EOF
}

missed=0
for SIZE_MB in $SIZES; do
  IN="$MNT/in-$SIZE_MB.pt"
  "$PY" - "$IN" "$SIZE_MB" <<'EOF'
import sys, torch
path, mb = sys.argv[1], int(sys.argv[2])
n = max(1, mb // 64)
numel = mb * (1 << 20) // 4 // n
torch.save({f"layer{i}.weight": torch.arange(numel, dtype=torch.float32) + i for i in range(n)}, path)
EOF
  in_size=$(stat -c %s "$IN")
  declare -A T=() S=()
  for ((r = 0; r < REPEAT; r++)); do
    for cmd in never always disarm noreflink; do
      OUT="$MNT/out.pt"
      rm -f "$OUT" "$OUT.json"
      sync
      cat "$IN" >/dev/null
      t0=$(now)
      case $cmd in
        never) cp --reflink=never "$IN" "$OUT" ;;
        always) cp --reflink=always "$IN" "$OUT" ;;
        disarm) "$BIN" disarm "$IN" -o "$OUT" --quiet --report "$OUT.json" ;;
        noreflink) "$BIN" disarm --no-reflink "$IN" -o "$OUT" --quiet ;;
      esac
      t1=$(now)
      sync  # what the command left to write back: a copy's data, disarm's headers
      t2=$(now)
      T[$cmd]+="$(echo "$t1 - $t0" | bc -l) "
      S[$cmd]+="$(echo "$t2 - $t0" | bc -l) "
      if [[ $cmd == disarm && $r == 0 ]]; then
        cp "$OUT.json" "$WORK/report.json"
        rm -f "$OUT"; before=$(used_bytes)
        "$BIN" disarm "$IN" -o "$OUT" --quiet
        extra=$(( $(used_bytes) - before ))
        fiemap=$(fiemap_shared "$OUT")
      fi
    done
  done
  rm -f "$MNT/out.pt" "$MNT/out.pt.json"
  m() { tr ' ' '\n' <<<"${T[$1]}" | grep . | median; }
  never=$(m never) always=$(m always) dis=$(m disarm) nor=$(m noreflink)
  ms() { tr ' ' '\n' <<<"${S[$1]}" | grep . | median; }
  never_s=$(ms never) always_s=$(ms always) dis_s=$(ms disarm) nor_s=$(ms noreflink)
  read -r shared payload < <("$PY" -c "import json,sys; f=json.load(open(sys.argv[1]))['files'][0]; print(f['shared_bytes'], f['tensors']['total_bytes'])" "$WORK/report.json")
  ratio=$(echo "$dis / $never" | bc -l)
  share=$(echo "100 * $shared / $payload" | bc -l)
  space=$(echo "100 * $extra / $in_size" | bc -l)
  printf '\n== %s MiB checkpoint (%s bytes, payload %s bytes), median of %s ==\n' "$SIZE_MB" "$in_size" "$payload" "$REPEAT"
  printf '                          command   command + sync\n'
  printf '  cp --reflink=never     %8.3f s   %8.3f s\n' "$never" "$never_s"
  printf '  cp --reflink=always    %8.3f s   %8.3f s\n' "$always" "$always_s"
  printf '  modelcdr disarm        %8.3f s   %8.3f s   (%.4f x plain copy; with sync %.4f x; target <= 0.1)\n' \
    "$dis" "$dis_s" "$ratio" "$(echo "$dis_s / $never_s" | bc -l)"
  printf '  disarm --no-reflink    %8.3f s   %8.3f s\n' "$nor" "$nor_s"
  printf '  shared: %s bytes = %.3f%% of payload (target >= 99%%); FIEMAP shared extents: %s bytes\n' "$shared" "$share" "$fiemap"
  printf '  extra space: %s bytes = %.4f%% of the input (target <= 1%%)\n' "$extra" "$space"
  (( $(echo "$ratio <= 0.1" | bc) )) || { echo "  MISSED: time"; missed=1; }
  (( $(echo "$share >= 99" | bc) )) || { echo "  MISSED: shared"; missed=1; }
  (( $(echo "$space <= 1" | bc) )) || { echo "  MISSED: space"; missed=1; }
  rm -f "$IN"
  unset T S
done
if [[ "${BENCH_STRICT:-0}" == 1 && $missed == 1 ]]; then exit 1; fi
