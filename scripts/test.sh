#!/usr/bin/env bash
# Installs dependencies, builds, and runs every test: GoogleTest unit tests (ctest) and the
# end-to-end pytest suite under Debian's torch (/usr/bin/python3).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
scripts/build.sh
(cd build && ctest --output-on-failure -j"$(nproc)")
MODELCDR_BIN="$PWD/build/modelcdr" /usr/bin/python3 -m pytest -q -p no:cacheprovider tests/e2e
