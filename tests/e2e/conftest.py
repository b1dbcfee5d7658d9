"""Shared helpers for the modelcdr end-to-end tests.

Run with the interpreter that has torch (Debian's torch 1.13 is at /usr/bin/python3):

    /usr/bin/python3 -m pytest tests/e2e -q

Environment:
  MODELCDR_BIN     path of the modelcdr binary (default: <repo>/build/modelcdr)
  MODELCDR_CORPUS  corpus directory with manifest.json (default: <repo>/../shared/corpus)
  MODELCDR_TORCH_PY  python with torch for subprocess checks (default: sys.executable if it has torch,
                     else /usr/bin/python3)
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))

import vocab  # noqa: E402


def bin_path() -> Path:
    return Path(os.environ.get("MODELCDR_BIN") or (REPO / "build" / "modelcdr"))


def corpus_dir() -> Path:
    return Path(os.environ.get("MODELCDR_CORPUS") or (REPO.parent / "shared" / "corpus"))


def manifest_records():
    m = corpus_dir() / "manifest.json"
    if not m.is_file():
        return []
    data = json.loads(m.read_text())
    if isinstance(data, dict):
        data = data.get("files") or data.get("records") or []
    return data


def _has_torch(py) -> bool:
    try:
        return subprocess.run([py, "-c", "import torch"], capture_output=True, timeout=60).returncode == 0
    except Exception:
        return False


_TORCH_PY = None


def torch_python() -> str:
    global _TORCH_PY
    if _TORCH_PY is None:
        cand = os.environ.get("MODELCDR_TORCH_PY")
        if cand:
            _TORCH_PY = cand
        else:
            try:
                import torch  # noqa: F401

                _TORCH_PY = sys.executable
            except ImportError:
                _TORCH_PY = "/usr/bin/python3"
    return _TORCH_PY


def binary_works() -> bool:
    b = bin_path()
    return b.is_file() and os.access(b, os.X_OK)


def run_cli(*args, cwd=None, timeout=120, env=None):
    """Run modelcdr; return (rc, stdout, stderr) as text."""
    cmd = [str(bin_path())] + [str(a) for a in args]
    p = subprocess.run(cmd, cwd=cwd, capture_output=True, timeout=timeout, env=env)
    return p.returncode, p.stdout.decode("utf-8", "replace"), p.stderr.decode("utf-8", "replace")


def disarm(inp, out, *extra, report=None, timeout=120):
    """modelcdr disarm IN -o OUT [--report R] EXTRA...; returns (rc, stdout, stderr, report_dict|None)."""
    args = ["disarm", inp, "-o", out]
    if report is not None:
        args += ["--report", report]
    args += list(extra)
    rc, so, se = run_cli(*args, timeout=timeout)
    rep = None
    if report is not None and Path(report).is_file():
        try:
            rep = json.loads(Path(report).read_text())
        except Exception as e:  # leave it to the test to complain
            rep = {"_unparseable": str(e)}
    return rc, so, se, rep


def explain(rc, so, se):
    return f"rc={rc}\nstdout:\n{so[-3000:]}\nstderr:\n{se[-3000:]}"


def require_bin():
    if not binary_works():
        pytest.skip(f"modelcdr binary not found at {bin_path()} (build it or set MODELCDR_BIN)")


@pytest.fixture(scope="session")
def cdr_bin():
    if not binary_works():
        pytest.skip(f"modelcdr binary not found at {bin_path()} (build it or set MODELCDR_BIN)")
    return bin_path()


@pytest.fixture(scope="session")
def corpus():
    d = corpus_dir()
    if not (d / "manifest.json").is_file():
        pytest.skip(f"corpus not found at {d} (set MODELCDR_CORPUS)")
    return d


@pytest.fixture
def torch_mod():
    return pytest.importorskip("torch")
