#!/usr/bin/env bash
# Creates or updates .venv/, the Python environment of the e2e suite under PyTorch 2.x, from the
# pinned tests/requirements.txt. Idempotent and quick when nothing changed: a stamp file holds the
# hash of the requirements (and of the interpreter) the venv was last built from.
# Debian's /usr/bin/python3 (torch 1.13, from scripts/install-deps.sh) is left untouched; it runs
# the --compat torch1.13 tests.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.venv
REQ=tests/requirements.txt
STAMP="$VENV/.requirements.sha256"

# The machine's CPython 3.11: $PYTHON if set, else python3.11, else python3.
PY="${PYTHON:-$(command -v python3.11 || command -v python3)}"
"$PY" -c 'import sys; assert sys.version_info[:2] == (3, 11), sys.version' \
  || { echo "venv.sh: $PY is not CPython 3.11 (set PYTHON=...)" >&2; exit 1; }

want="$( (sha256sum "$REQ"; "$PY" -c 'import sys; print(sys.version)') | sha256sum | cut -d' ' -f1)"
if [ -x "$VENV/bin/python" ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ]; then
  exit 0
fi

# Debian's python3 without python3-venv has no ensurepip: `python3 -m venv` then fails.
if ! "$PY" -c 'import ensurepip' 2>/dev/null; then
  SUDO=""; if [ "$(id -u)" != 0 ]; then SUDO=sudo; fi
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends python3-venv >/dev/null
fi

rm -f "$STAMP"
# A venv made by another interpreter (or half-made) is rebuilt from scratch.
version() { "$1" -c 'import sys; print(sys.version)' 2>/dev/null; }
if [ ! -x "$VENV/bin/python" ] || [ "$(version "$VENV/bin/python")" != "$(version "$PY")" ]; then
  "$PY" -m venv --clear "$VENV"
fi
# pip's "Location ... is ignored" lines are noise from this machine's optional local indexes.
"$VENV/bin/python" -m pip install -q --disable-pip-version-check -r "$REQ" 2>&1 \
  | { grep -v "is ignored: it is neither a file nor a directory" || true; }
"$VENV/bin/python" -c 'import torch, numpy, sklearn, joblib, safetensors, transformers, pytest'
echo "$want" > "$STAMP"
