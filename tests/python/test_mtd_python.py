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


def test_protect_restore_bytes_in_memory(tmp_path, keys, model_file):
    """protect bytes -> restore bytes: nothing touches the disk, and torch.load of the
    restored bytes equals torch.load of the original."""
    import io

    torch = pytest.importorskip("torch")
    original = model_file.read_bytes()
    before = sorted(p.name for p in tmp_path.iterdir())
    prot, mp = modelcdr.protect(original, key_file=keys / "sym.key", sign=keys / "publisher.key")
    assert isinstance(prot, bytes) and isinstance(mp, bytes) and prot != original
    v = modelcdr.verify(prot, mp, key_file=keys / "sym.key", verify_signer=keys / "publisher.pub")
    assert v.ok and v.state == "protected" and v.signer_trusted
    back = modelcdr.restore(prot, mp, key_file=keys / "sym.key", verify_signer=keys / "publisher.pub")
    assert isinstance(back, bytes)
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no file written
    want = torch.load(model_file, weights_only=True)
    got = torch.load(io.BytesIO(back), weights_only=True)
    assert want.keys() == got.keys()
    for k in want:
        assert want[k].dtype == got[k].dtype and torch.equal(want[k], got[k]), k
    # The memory forms give what the file forms give: restore of the protected bytes is the
    # disarmed original, byte for byte; load(map=) takes bytes too.
    assert back == modelcdr.disarm(model_file)
    loaded = modelcdr.load(prot, map=mp, key_file=keys / "sym.key", verify_signer=keys / "publisher.pub")
    assert all(torch.equal(want[k], loaded[k]) for k in want)


def test_protect_to_file_objects_and_mixed(tmp_path, keys, model_file):
    import io

    buf, mbuf = io.BytesIO(), io.BytesIO()
    r = modelcdr.protect(model_file, buf, mbuf, key_file=keys / "sym.key")
    assert r.ok and r.permuted >= 2
    # A path for the model, memory for the map: the map's bytes come back.
    out, mp = modelcdr.protect(model_file, tmp_path / "p.pt", None, key_file=keys / "sym.key")
    assert out is None and mp.startswith(mbuf.getvalue()[:8])
    v = modelcdr.verify(tmp_path / "p.pt", mp, key_file=keys / "sym.key", allow_unsigned=True)
    assert v.ok
    restored = io.BytesIO()
    rr = modelcdr.restore(buf.getvalue(), mbuf.getvalue(), restored, key_file=keys / "sym.key", allow_unsigned=True)
    assert rr.ok and restored.getvalue() == modelcdr.disarm(model_file)


def test_tampered_protected_bytes_are_refused(tmp_path, keys, model_file):
    prot, mp = modelcdr.protect(model_file.read_bytes(), key_file=keys / "sym.key")
    bad = bytearray(prot)
    bad[len(bad) // 2] ^= 0x40  # inside the tensor payload
    v = modelcdr.verify(bytes(bad), mp, key_file=keys / "sym.key", allow_unsigned=True)
    assert not v.ok and v.outcome == "mismatch" and v.code == "tampered"
    tensors = [m for m in v.mismatches if m.what == "tensor"]
    assert tensors and tensors[0].name in ("a", "b", "c", "n") and tensors[0].expected != tensors[0].actual
    with pytest.raises(modelcdr.MapError) as e:
        modelcdr.restore(bytes(bad), mp, key_file=keys / "sym.key", allow_unsigned=True)
    assert e.value.report.outcome == "mismatch" and e.value.report.code == "tampered"
    # The map given as the model, and a map for another copy.
    with pytest.raises(modelcdr.MapError) as e:
        modelcdr.verify(mp, mp, key_file=keys / "sym.key", allow_unsigned=True)
    assert e.value.report.error["rule"] == "mtd.input-is-map"
    torch = pytest.importorskip("torch")
    torch.manual_seed(2)
    another = tmp_path / "another.pt"
    torch.save({"x": torch.randn(64, 32), "y": torch.randn(32)}, another)
    _, other_map = modelcdr.protect(another.read_bytes(), key_file=keys / "sym.key")
    w = modelcdr.verify(prot, other_map, key_file=keys / "sym.key", allow_unsigned=True)
    assert not w.ok and w.code == "wrong-file"


def test_mtd_uses_the_engines_limits(tmp_path, keys, model_file):
    strict = modelcdr.Engine(max_input_bytes=4096)  # the model is about 17 KB
    data = model_file.read_bytes()
    assert len(data) > 4096
    with pytest.raises(modelcdr.MapError) as e:
        strict.protect(data, key_file=keys / "sym.key")
    assert e.value.report.error["rule"] == "limits.input-size"
    prot, mp = modelcdr.Engine().protect(data, key_file=keys / "sym.key")
    v = strict.verify(prot, mp, key_file=keys / "sym.key", allow_unsigned=True)
    assert not v.ok
    with pytest.raises(modelcdr.MapError):
        strict.load(prot, map=mp, key_file=keys / "sym.key", allow_unsigned=True)
    assert modelcdr.verify(prot, mp, key_file=keys / "sym.key", allow_unsigned=True).ok
