"""Tests of the Python package (docs/PYTHON.md). They need `modelcdr` installed in the
interpreter that runs them (scripts/test.sh: `pip install .` into .venv, then this folder).

Reference results come from torch itself: torch.load(<disarmed file>, weights_only=True),
where the disarmed file is written by the CLI (MODELCDR_BIN) or by modelcdr.disarm.
"""
from __future__ import annotations

import collections
import os
import sys
from pathlib import Path
from typing import Any, Dict, List

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO / "tests" / "e2e"))

modelcdr = pytest.importorskip("modelcdr", reason="the modelcdr package is not installed (pip install .)")

import vocab  # noqa: E402


def modelcdr_command() -> str:
    """The `modelcdr` command the package installed (next to the interpreter), else MODELCDR_BIN."""
    installed = Path(sys.executable).parent / "modelcdr"
    if installed.exists():
        return str(installed)
    return os.environ.get("MODELCDR_BIN", str(REPO / "build" / "modelcdr"))


def corpus_dir() -> Path:
    return Path(os.environ.get("MODELCDR_CORPUS", REPO.parent / "shared" / "corpus"))


def _storage_key(t) -> tuple:
    u = t.untyped_storage()
    return (u.data_ptr(), u.nbytes())


def strict_diff(exp: Any, got: Any, path: str = "$", ids: Dict[int, Any] | None = None,
                storages: Dict[tuple, tuple] | None = None) -> List[str]:
    """Differences between torch.load's result and ours: exact types (OrderedDict, torch.Size,
    torch.device, Parameter), dtypes, shapes, strides, offsets, bytes, `_metadata`, shared
    objects and shared storages (two tensors share a storage in one iff in the other)."""
    import torch

    ids = {} if ids is None else ids
    storages = {} if storages is None else storages
    d: List[str] = []
    if type(exp) is not type(got):
        return [f"{path}: type {type(got).__name__} != {type(exp).__name__}"]
    if isinstance(exp, (torch.Tensor, dict, list, set)):
        if id(exp) in ids:
            if ids[id(exp)][0] is not got:
                d.append(f"{path}: shared in torch.load's result, not in ours")
            return d
        ids[id(exp)] = (got, exp)
    if isinstance(exp, torch.Tensor):
        d += vocab.compare_tensors(exp, got, path)
        if exp.layout == torch.strided and not exp.is_quantized and exp.device.type != "meta":
            ke, kg = _storage_key(exp), _storage_key(got)
            if ke in storages and storages[ke] != kg:
                d.append(f"{path}: storage sharing differs")
            storages.setdefault(ke, kg)
            if exp.untyped_storage().nbytes() != got.untyped_storage().nbytes():
                d.append(f"{path}: storage size differs")
        return d
    if isinstance(exp, dict):
        if list(exp.keys()) != list(got.keys()):
            return [f"{path}: keys {list(got.keys())[:5]} != {list(exp.keys())[:5]}"]
        if hasattr(exp, "_metadata") != hasattr(got, "_metadata"):
            d.append(f"{path}: _metadata present in one only")
        elif hasattr(exp, "_metadata"):
            d += strict_diff(exp._metadata, got._metadata, path + "._metadata", ids, storages)
        for k in exp:
            d += strict_diff(exp[k], got[k], f"{path}[{k!r}]", ids, storages)
        return d
    if isinstance(exp, (list, tuple)):
        if len(exp) != len(got):
            return [f"{path}: length {len(got)} != {len(exp)}"]
        for i, (e, g) in enumerate(zip(exp, got)):
            d += strict_diff(e, g, f"{path}[{i}]", ids, storages)
        return d
    if isinstance(exp, float) and exp != exp:
        return [] if got != got else [f"{path}: {got!r} != nan"]
    if exp != got:
        d.append(f"{path}: {got!r} != {exp!r}")
    return d


@pytest.fixture
def torch():
    return pytest.importorskip("torch")


@pytest.fixture
def reference(tmp_path, torch):
    """reference(path) -> torch.load(modelcdr-disarmed copy of path, weights_only=True)."""
    def load_reference(path, **kw):
        out = tmp_path / (Path(path).name + ".disarmed.pt")
        modelcdr.disarm(path, out, force=True)
        return torch.load(out, weights_only=True, **kw)
    return load_reference
