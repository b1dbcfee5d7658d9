#!/usr/bin/env bash
# Configure and build modelcdr (release-with-debug-info) into build/. Position-independent, so
# the Python package links this build's library (pip install . -Ccmake.define.MODELCDR_PREBUILT_DIR=build).
set -euo pipefail
cd "$(dirname "$0")/.."
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_POSITION_INDEPENDENT_CODE=ON >/dev/null
ninja -C build -j"$(nproc)"
