"""Shared helpers for the modelcdr end-to-end tests.

Two passes (scripts/test.sh; the marker scheme is in tests/e2e/README.md):

    .venv/bin/python -m pytest tests/e2e -m "not torch113"          # PyTorch 2.x (scripts/venv.sh)
    /usr/bin/python3 -m pytest tests/e2e -m "torch113 or torchvision"  # Debian's torch 1.13

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


# --------------------------------------------------------------------------------------------------
# Which torch a test needs (tests/e2e/README.md).  Unmarked tests are written for torch 2.x.
# --------------------------------------------------------------------------------------------------
MARKERS = {
    "torch113": "checks --compat torch1.13 output with torch 1.13's own loader: runs only under "
                "torch 1.x (the Debian pass, -m torch113)",
    "torch2": "checks a feature that only torch >= 2 has: skipped under torch 1.x",
    "torchvision": "builds its models with torchvision: also selected in the Debian pass, because "
                   "torchvision has no CPU build for the venv's torch 2.x here",
}


def torch_major():
    """Major version of the torch this pytest runs under, or None without torch."""
    try:
        import torch
    except ImportError:
        return None
    return int(torch.__version__.split(".")[0])


def pytest_configure(config):
    for name, doc in MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {doc}")


def pytest_runtest_setup(item):
    major = torch_major()
    if major is None:
        return  # torch-free tests run anywhere; the others importorskip torch themselves
    if item.get_closest_marker("torch113") and major != 1:
        pytest.skip(f"needs torch 1.13 (runs in the Debian pass: /usr/bin/python3 -m pytest -m torch113); "
                    f"this is torch {major}.x")
    if item.get_closest_marker("torch2") and major < 2:
        pytest.skip("needs torch >= 2 (a torch-2-only feature); this is torch 1.x")


def import_torchvision(module_level=False):
    """torchvision, or a skip that says why (no CPU wheel next to the venv's torch 2.x here)."""
    try:
        import torchvision
    except Exception as e:  # the CUDA wheel raises RuntimeError/OSError, not ImportError
        pytest.skip(f"torchvision unavailable ({type(e).__name__}: {str(e)[:120]}); marked torchvision, "
                    "these run in the Debian torch 1.13 pass", allow_module_level=module_level)
    return torchvision


def load_default_output(path):
    """Load a default-mode (torch2 profile) output: torch 2.x's own weights_only loader.

    Under torch 1.x (whose weights_only loader has no BINFLOAT) fall back to vocab's data-only
    evaluator, which resolves only the same allowlisted reconstructors.
    """
    import torch

    if torch_major() >= 2:
        return torch.load(path, weights_only=True)
    return vocab.static_torch_load(path)


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


_TORCH_PY_MAJOR = None


def torch_python_major() -> int:
    """Major torch version of torch_python() (the interpreter of subprocess checks)."""
    global _TORCH_PY_MAJOR
    if _TORCH_PY_MAJOR is None:
        p = subprocess.run([torch_python(), "-c", "import torch; print(torch.__version__)"],
                           capture_output=True, timeout=120, check=True)
        _TORCH_PY_MAJOR = int(p.stdout.decode().strip().split(".")[0])
    return _TORCH_PY_MAJOR


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
