#!/usr/bin/env bash
# Installs dependencies, builds, and runs every test: GoogleTest unit tests (ctest), then the
# end-to-end pytest suite in two passes (markers: tests/e2e/README.md):
#   1. PyTorch 2.x from .venv/ (scripts/venv.sh): every test not marked torch113;
#   2. Debian's torch 1.13 (/usr/bin/python3): the --compat torch1.13 tests (torch113) and the
#      tests that need torchvision, which has no CPU build for the venv's torch here;
# then installs the Python package into .venv/ and runs tests/python there.
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

# The Python package (docs/PYTHON.md) in the torch 2.x venv: the wheel links build/'s library
# (MODELCDR_PREBUILT_DIR), so this adds one compiled file and a link, not a second build.
start=$SECONDS
echo "== python package: pip install . && pytest tests/python"
if .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps --force-reinstall \
     -Ccmake.define.MODELCDR_PREBUILT_DIR="$PWD/build" . 2>&1 \
     | { grep -v "is ignored: it is neither a file nor a directory" || true; }; then
  .venv/bin/python -m pytest -q -p no:cacheprovider tests/python || rc=1
else
  rc=1
fi
echo "== python package: $((SECONDS - start)) s"
exit $rc
