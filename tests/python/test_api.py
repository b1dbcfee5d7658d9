"""scan / disarm with paths, bytes and file objects; reports as objects; the installed
package (stubs, the `modelcdr` command)."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from importlib import resources
from pathlib import Path

import pytest

from conftest import modelcdr, vocab
from test_load import malicious_pickle


@pytest.fixture
def checkpoint(tmp_path, torch):
    path = tmp_path / "m.pt"
    torch.save({"w": torch.randn(4, 4), "step": 3}, path)
    return path


def test_package_ships_stubs_and_command():
    files = {p.name for p in resources.files("modelcdr").iterdir()}
    assert {"py.typed", "_core.pyi", "__init__.py"} <= files
    cmd = Path(sys.executable).parent / "modelcdr"
    assert cmd.exists(), "pip install . puts the modelcdr command next to the interpreter"
    out = subprocess.run([str(cmd), "--version"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and modelcdr.__version__ in out.stdout + out.stderr


def test_scan_report(checkpoint):
    r = modelcdr.scan(checkpoint)
    assert isinstance(r, modelcdr.Report)
    assert r.format == "torch-zip" and r.status == "clean" and r.tensors.count == 1
    assert r.tensors.dtypes == {"float32": 1}


def test_scan_finds_malicious_without_raising():
    r = modelcdr.scan(malicious_pickle())
    assert r.status in ("findings", "error")
    assert any(f.severity in ("high", "critical") for f in r.findings) or r.error is not None


# A project's own class (NEWOBJ of mypkg.layers.Block with a dict state): cannot be proven safe.
PROJECT_CLASS_PICKLE = b"\x80\x02cmypkg.layers\nBlock\nq\x00)\x81q\x01}q\x02X\x01\x00\x00\x00aq\x03K\x01sb."


def test_scan_verdict_matches_the_command(tmp_path, checkpoint):
    """Report.verdict is the verdict the `modelcdr scan` command prints for the same file."""
    files = {"clean": checkpoint, "dangerous": tmp_path / "evil.pkl", "unknown": tmp_path / "project.pkl"}
    files["dangerous"].write_bytes(malicious_pickle())
    files["unknown"].write_bytes(PROJECT_CLASS_PICKLE)
    cmd = Path(sys.executable).parent / "modelcdr"
    for expected, path in files.items():
        r = modelcdr.scan(path)
        out = subprocess.run([str(cmd), "scan", "--json", str(path)], capture_output=True, text=True, timeout=60)
        cli = json.loads(out.stdout)["files"][0]["verdict"]
        assert r.verdict == cli == expected, (path, r.verdict, cli)
    assert modelcdr.scan(PROJECT_CLASS_PICKLE).verdict == "unknown"
    # The Engine's own class policy counts: a class it allows is no longer unknown.
    allowed = modelcdr.Engine(allow_classes=["mypkg.layers.Block"]).scan(PROJECT_CLASS_PICKLE)
    assert allowed.verdict in ("clean", "safe"), allowed
    # disarm reports carry no verdict
    assert modelcdr.disarm(checkpoint, tmp_path / "out.pt").verdict == ""


def test_scan_missing_file_raises(tmp_path):
    with pytest.raises(modelcdr.ModelcdrError) as e:
        modelcdr.scan(tmp_path / "nope.pt")
    assert e.value.report.error.rule.startswith("io.")


def test_disarm_to_path_bytes_and_file(tmp_path, checkpoint, torch):
    out = tmp_path / "out.pt"
    r = modelcdr.disarm(checkpoint, out)
    assert isinstance(r, modelcdr.Report) and r.status == "clean" and r.output == str(out)
    assert vocab.check_output(out) == []
    data = modelcdr.disarm(checkpoint.read_bytes())
    assert isinstance(data, bytes) and data == out.read_bytes()
    buf = io.BytesIO()
    with open(checkpoint, "rb") as f:
        r2 = modelcdr.disarm(f, buf)
    assert r2.status == "clean" and buf.getvalue() == data
    st = modelcdr.disarm(checkpoint, output_format="safetensors")
    assert st[8:9] == b"{"  # a safetensors header


def test_disarm_never_replaces_without_force(tmp_path, checkpoint):
    out = tmp_path / "out.pt"
    out.write_bytes(b"keep me")
    with pytest.raises(modelcdr.ModelcdrError):
        modelcdr.disarm(checkpoint, out)
    assert out.read_bytes() == b"keep me"
    modelcdr.disarm(checkpoint, out, force=True)
    assert out.read_bytes() != b"keep me"


def test_disarm_rejects_with_report(tmp_path):
    out = tmp_path / "out.pt"
    with pytest.raises(modelcdr.RejectedError) as e:
        modelcdr.disarm(malicious_pickle(), out)
    assert not out.exists()
    assert e.value.report.status == "rejected" and e.value.report.error.rule


def test_bad_option_is_value_error(checkpoint):
    with pytest.raises(ValueError):
        modelcdr.disarm(checkpoint, output_format="onnx")


def test_temp_copies_are_removed(tmp_path, checkpoint, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)
    modelcdr.load(checkpoint.read_bytes())
    modelcdr.disarm(checkpoint.read_bytes())
    assert list((tmp_path / "tmp").iterdir()) == []
