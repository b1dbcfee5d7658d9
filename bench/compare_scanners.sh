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
# py7zr: picklescan needs it for the corpus's 7z archives; without it picklescan stops with an
# exception at the first one and its whole-folder time is that of a partial scan.
PINS="picklescan==1.0.5 py7zr==1.1.4 modelscan==0.8.8 fickling==0.1.12 modelaudit==0.2.54"
if [ ! -x "$VENV/bin/modelaudit" ] || ! "$VENV/bin/python" -c "import py7zr" 2>/dev/null; then
  [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q $PINS
fi
"$VENV/bin/python" "$HERE/compare_scanners.py" --venv "$VENV" --modelcdr "$BIN" --corpus "$CORPUS" "$@"
