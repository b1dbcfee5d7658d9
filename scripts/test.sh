#!/usr/bin/env bash
# Installs dependencies, builds, and runs every test: GoogleTest unit tests (ctest), then the
# end-to-end pytest suite in two passes (markers: tests/e2e/README.md):
#   1. PyTorch 2.x from .venv/ (scripts/venv.sh): every test not marked torch113;
#   2. Debian's torch 1.13 (/usr/bin/python3): the --compat torch1.13 tests (torch113) and the
#      tests that need torchvision, which has no CPU build for the venv's torch here.
# Both passes always run; the script fails if either does.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
scripts/venv.sh
scripts/build.sh
(cd build && ctest --output-on-failure -j"$(nproc)")
export MODELCDR_BIN="$PWD/build/modelcdr"
unset MODELCDR_TORCH_PY  # each pass's subprocess checks use that pass's own interpreter

rc=0
e2e_pass() {  # e2e_pass NAME PYTHON MARKEXPR
  local start=$SECONDS
  echo "== e2e pass: $1 ($("$2" -c 'import torch; print("torch", torch.__version__)'))"
  "$2" -m pytest -q -p no:cacheprovider tests/e2e -m "$3" || rc=1
  echo "== e2e pass $1: $((SECONDS - start)) s"
}
e2e_pass torch2 .venv/bin/python "not torch113"
e2e_pass torch1.13 /usr/bin/python3 "torch113 or torchvision"
exit $rc
