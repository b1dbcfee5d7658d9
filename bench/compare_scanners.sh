#!/bin/bash
# modelcdr scan side by side with picklescan, modelscan, fickling and modelaudit (issue 11 item 6).
# Installs the four tools, pinned, in a scratch venv (bench/.venv-scanners, or $SCANNERS_VENV),
# then runs bench/compare_scanners.py on the corpus. Not a test: prints a table (bench/README.md).
#   bench/compare_scanners.sh [--jobs N] [--limit N] [--repeat N] [--json OUT]
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
REPO="$(dirname "$HERE")"
VENV="${SCANNERS_VENV:-$HERE/.venv-scanners}"
BIN="${MODELCDR_BIN:-$REPO/build/modelcdr}"
CORPUS="${MODELCDR_CORPUS:-$REPO/../shared/corpus}"
PINS="picklescan==1.0.5 modelscan==0.8.8 fickling==0.1.12 modelaudit==0.2.54"
if [ ! -x "$VENV/bin/modelaudit" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q $PINS
fi
"$VENV/bin/python" "$HERE/compare_scanners.py" --venv "$VENV" --modelcdr "$BIN" --corpus "$CORPUS" "$@"
