#!/usr/bin/env bash
# Builds the libFuzzer targets (clang-14, ASan+UBSan) and runs each for N seconds (default 60)
# on its seed corpus. Fails on any crash, leak or sanitizer report.
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-60}"
CC=clang-14 CXX=clang++-14 cmake -S . -B build-fuzz -G Ninja -DMODELCDR_FUZZ=ON -DMODELCDR_TESTS=OFF \
  -DMODELCDR_SANITIZE=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
ninja -C build-fuzz -j"$(nproc)" $(cd fuzz && ls *_fuzz.cpp | sed 's/\.cpp$//')
for src in fuzz/*_fuzz.cpp; do
  name=$(basename "$src" .cpp)
  seeds="fuzz/seeds/${name%%_*}"
  work=$(mktemp -d)
  [ -d "$seeds" ] && cp -r "$seeds"/. "$work"/ 2>/dev/null || true
  echo "== fuzzing $name for ${secs}s =="
  build-fuzz/"$name" -max_total_time="$secs" -rss_limit_mb=2048 -max_len=65536 -print_final_stats=1 "$work" 2>&1 | tail -n 12
  rm -rf "$work"
done
