#!/usr/bin/env bash
# Builds the libFuzzer targets (clang-14, ASan+UBSan) and runs each for N seconds (default 60)
# on its seed corpus fuzz/seeds/<target without _fuzz>/. Fails on any crash, leak, timeout or
# sanitizer report; the input that caused it is kept in build-fuzz/artifacts/.
#   scripts/fuzz.sh [SECONDS] [TARGET...]     e.g. scripts/fuzz.sh 60 tar_fuzz npy_fuzz
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-60}"
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || mapfile -t targets < <(cd fuzz && ls *_fuzz.cpp | sed 's/\.cpp$//')
CC=clang-14 CXX=clang++-14 cmake -S . -B build-fuzz -G Ninja -DMODELCDR_FUZZ=ON -DMODELCDR_TESTS=OFF \
  -DMODELCDR_SANITIZE=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
ninja -C build-fuzz -j"$(nproc)" "${targets[@]}"
mkdir -p build-fuzz/artifacts
for name in "${targets[@]}"; do
  seeds="fuzz/seeds/${name%_fuzz}"
  work=$(mktemp -d)
  [ -d "$seeds" ] && cp -r "$seeds"/. "$work"/ 2>/dev/null || true
  echo "== fuzzing $name for ${secs}s =="
  # -timeout: one input running for 10 s is a hang (the readers are linear in their input).
  build-fuzz/"$name" -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -max_len=65536 -print_final_stats=1 \
    -artifact_prefix="build-fuzz/artifacts/$name-" "$work" 2>&1 | tail -n 12
  rm -rf "$work"
done
