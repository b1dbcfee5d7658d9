#!/usr/bin/env bash
# Installs dependencies, builds, then scans and disarms the bundled example checkpoint
# (a tiny CNN with an os.system payload), printing what was found and removed.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
scripts/build.sh
out="${TMPDIR:-/tmp}/modelcdr-demo"
mkdir -p "$out"
echo "== scan =="
build/modelcdr scan examples/tiny_cnn_with_payload.pt || true
echo "== disarm =="
rc=0
build/modelcdr disarm examples/tiny_cnn_with_payload.pt -o "$out/tiny_cnn.disarmed.pt" --report "$out/report.json" --force || rc=$?
echo "exit code $rc (1 = written, something removed); report: $out/report.json (--force: a second run replaces them)"
echo "== load the result with torch.load(weights_only=True) =="
/usr/bin/python3 - "$out/tiny_cnn.disarmed.pt" <<'PY'
import sys, torch
ckpt = torch.load(sys.argv[1], weights_only=True)
print({k: (type(v).__name__ if k != "state_dict" else f"{len(v)} tensors") for k, v in ckpt.items()})
PY
