"""protect / restore / verify from Python, and load(protected, map=...) in memory."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from conftest import modelcdr, modelcdr_command, strict_diff


def cli(*args):
    r = subprocess.run([modelcdr_command(), *map(str, args)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return r


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    d = tmp_path_factory.mktemp("keys")
    cli("keygen", "--symmetric", "-o", d / "sym.key")
    cli("keygen", "-o", d / "publisher")
    cli("keygen", "-o", d / "alice")
    return d


@pytest.fixture
def model_file(tmp_path):
    torch = pytest.importorskip("torch")
    torch.manual_seed(1)
    path = tmp_path / "m.pt"
    torch.save({"a": torch.randn(64, 32), "b": torch.randn(64, 32), "c": torch.randn(10), "n": torch.arange(5)}, path)
    return path


def test_protect_restore_verify(tmp_path, keys, model_file):
    prot, mp, back = tmp_path / "p.pt", tmp_path / "p.map", tmp_path / "r.pt"
    r = modelcdr.protect(model_file, prot, mp, key_file=keys / "sym.key", sign=keys / "publisher.key")
    assert r.ok and r.permuted >= 2
    v = modelcdr.verify(prot, mp, key_file=keys / "sym.key", verify_signer=keys / "publisher.pub")
    assert v.ok and v.state == "protected" and v.signer_trusted
    modelcdr.restore(prot, mp, back, key_file=keys / "sym.key", verify_signer=keys / "publisher.pub")
    assert back.read_bytes() == modelcdr.disarm(model_file)
    with pytest.raises(FileExistsError):
        modelcdr.protect(model_file, prot, tmp_path / "q.map", key_file=keys / "sym.key")


def test_signer_required_unless_opted_out(tmp_path, keys, model_file):
    prot, mp = tmp_path / "p.pt", tmp_path / "p.map"
    modelcdr.protect(model_file, prot, mp, key_file=keys / "sym.key")
    with pytest.raises(ValueError):
        modelcdr.verify(prot, mp, key_file=keys / "sym.key")
    assert modelcdr.verify(prot, mp, key_file=keys / "sym.key", allow_unsigned=True).ok


def test_load_protected_in_memory(tmp_path, keys, model_file, reference):
    torch = pytest.importorskip("torch")
    prot, mp = tmp_path / "p.pt", tmp_path / "p.map"
    modelcdr.protect(model_file, prot, mp, recipient=keys / "alice.pub", sign=keys / "publisher.key")
    before = sorted(p.name for p in tmp_path.iterdir())
    got = modelcdr.load(prot, map=mp, identity=keys / "alice.key", verify_signer=keys / "publisher.pub")
    # The restored weights exist only in memory: no file was written anywhere near.
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert strict_diff(reference(model_file), got) == []
    # ... while the protected file itself holds permuted weights
    plain = modelcdr.load(prot)
    assert not torch.equal(plain["a"], got["a"])
    got["a"].add_(1)  # restored tensors are ordinary writable tensors


def test_load_tampered_protected_fails(tmp_path, keys, model_file):
    prot, mp = tmp_path / "p.pt", tmp_path / "p.map"
    modelcdr.protect(model_file, prot, mp, key_file=keys / "sym.key")
    other = tmp_path / "other.pt"
    modelcdr.protect(model_file, other, tmp_path / "other.map", key_file=keys / "sym.key")
    with pytest.raises(modelcdr.MapError) as e:  # another copy's file: not this map's
        modelcdr.load(other, map=mp, key_file=keys / "sym.key", allow_unsigned=True)
    assert e.value.report.outcome == "mismatch"
