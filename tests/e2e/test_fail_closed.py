"""Fail closed everywhere (issue 9): directory mode decides by content, --copy-other copies only
inert files, output format follows the output name, exit codes, no silent data loss, messages.

Payload-carrying inputs use a harmless tripwire: running them only creates a marker file
(`touch`). Every file in OUT is then loaded with the unsafe loaders (pickle, joblib,
torch.load(weights_only=False), numpy allow_pickle) in a subprocess inside a throwaway folder,
and no marker may appear. Inputs themselves are never loaded.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import lzma
import os
import pickle
import subprocess
import textwrap
from pathlib import Path

import pytest

from conftest import explain, require_bin, run_cli, torch_python

torch = pytest.importorskip("torch")
np = pytest.importorskip("numpy")
joblib = pytest.importorskip("joblib")


@pytest.fixture(autouse=True)
def _needs_bin():
    require_bin()


def sha(p):
    return hashlib.sha256(Path(p).read_bytes()).hexdigest()


class _Payload:
    """Pickles to a call of os.system(cmd); built with pickle.dumps, never loaded here."""

    def __init__(self, cmd):
        self.cmd = cmd

    def __reduce__(self):
        return (os.system, (self.cmd,))


def payload(marker: Path, protocol: int) -> bytes:
    return pickle.dumps(_Payload(f"touch {marker}"), protocol=protocol)


def p0_payload(marker: Path) -> bytes:
    return f"cos\nsystem\n(S'touch {marker}'\ntR.".encode()


PNG = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + bytes(range(64))

LOADER = textwrap.dedent(r'''
import json, os, pickle, sys
files = json.loads(sys.stdin.read())
os.chdir(sys.argv[1])
import numpy as np, joblib, torch
for f in files:
    for name, load in (("pickle", lambda p: pickle.load(open(p, "rb"))), ("joblib", joblib.load),
                       ("torch", lambda p: torch.load(p, weights_only=False)),
                       ("numpy", lambda p: np.load(p, allow_pickle=True))):
        try:
            load(f)
        except BaseException:
            pass
print("done")
''')


def unsafe_load_all(out: Path, base: Path):
    """Loads every file under `out` with every unsafe loader (our outputs only)."""
    files = [str(p) for p in out.rglob("*") if p.is_file()]
    work = base / "loadcwd"
    work.mkdir()
    script = base / "loader.py"
    script.write_text(LOADER)
    p = subprocess.run([torch_python(), str(script), str(work)], input=json.dumps(files).encode(),
                       capture_output=True, timeout=300)
    assert b"done" in p.stdout, p.stderr.decode()[-3000:]
    return files


def make_tree(src: Path, marker: Path):
    """Every kind of file issue 9 names; returns (benign models, payload files)."""
    src.mkdir(parents=True)
    (src / "sub").mkdir()
    torch.save({"w": torch.arange(6, dtype=torch.float32)}, src / "model.pt")
    arrays = {"a": np.arange(5, dtype=np.float64), "b": np.ones((2, 3), dtype=np.int32)}
    joblib.dump(arrays, src / "benign.joblib.gz", compress=("gzip", 3))
    joblib.dump(arrays, src / "sub" / "benign.joblib.xz", compress=("xz", 3))
    (src / "evil.joblib.gz").write_bytes(gzip.compress(payload(marker, 2)))
    (src / "evil.joblib.xz").write_bytes(lzma.compress(payload(marker, 4), format=lzma.FORMAT_XZ))
    (src / "model.sav").write_bytes(p0_payload(marker))
    (src / "sub" / "noext").write_bytes(payload(marker, 4))
    (src / "notes.txt").write_bytes(p0_payload(marker))  # an ASCII pickle under a text name
    (src / "config.json").write_text('{"hidden_size": 4}\n')
    (src / "broken.json").write_text('{"hidden_size": \n')
    (src / "README.md").write_text("This model is a test.\n")
    (src / "run.py").write_text("import os\nos.system('echo hi')\n")
    (src / "setup.sh").write_text("#!/bin/sh\necho hi\n")
    (src / "tool").write_text("#!/usr/bin/env python3\nprint(1)\n")
    (src / "logo.png").write_bytes(PNG)
    # a GIF polyglot: 'G' is BINFLOAT, so an unpickler reads 8 bytes and then runs the pickle after them
    (src / "poly.gif").write_bytes(b"GIF89a\x10\x00\x10" + p0_payload(marker))
    (src / "blob.dat").write_bytes(bytes([0x07, 0xFE, 0x00, 0x11]) * 64)
    (src / "model.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(200))
    (src / "model.onnx").write_bytes(b"\x08\x07\x12\x07pytorch" + bytes(100))
    (src / "model.gguf").write_bytes(b"GGUF\x03\x00\x00\x00" + bytes(100))
    (src / "weights.7z").write_bytes(b"7z\xbc\xaf\x27\x1c\x00\x04" + bytes(100))
    return arrays


def by_name(report):
    return {Path(f["input"]).name: f for f in report["files"]}


def check_summary(se, report):
    statuses = [f["status"] for f in report["files"]]
    copied = sum(1 for f in report["files"] if f["status"] == "skipped" and f["output"])
    left = sum(1 for f in report["files"] if f["status"] == "skipped" and not f["output"])
    want = (f"{len(statuses)} files: {statuses.count('clean')} clean, {statuses.count('removed')} disarmed with "
            f"removals, {statuses.count('rejected')} rejected, {copied} copied, {left} left out")
    assert want in se, se


@pytest.mark.parametrize("copy_other", [False, True])
def test_directory_fails_closed(tmp_path, copy_other):
    marker = tmp_path / "MARKER"
    src, out, rep = tmp_path / "in", tmp_path / "out", tmp_path / "r.json"
    arrays = make_tree(src, marker)
    args = ["disarm", src, "-o", out, "--report", rep, "--jobs", "2"] + (["--copy-other"] if copy_other else [])
    rc, so, se = run_cli(*args)
    assert rc == 2, explain(rc, so, se)
    report = json.loads(rep.read_text())
    files = by_name(report)
    # every payload file was treated as a model file (rebuilt without the call, or rejected)
    for name in ("evil.joblib.gz", "evil.joblib.xz", "model.sav", "noext", "notes.txt", "poly.gif"):
        assert files[name]["status"] in ("rejected", "removed"), files[name]
    # unsupported model formats are never copied and say so
    for name in ("model.h5", "model.onnx", "model.gguf"):
        assert files[name]["status"] == "rejected" and files[name]["error"]["rule"] == "format.unsupported", files[name]
    assert files["weights.7z"]["status"] == "rejected"
    # benign models, compressed joblib included, are rebuilt (uncompressed, named for their content)
    assert files["model.pt"]["status"] == "clean"
    for rel in ("benign.joblib", "sub/benign.joblib"):
        got = joblib.load(out / rel)  # our output: safe to load
        assert set(got) == {"a", "b"} and all(np.array_equal(got[k], arrays[k]) for k in arrays), rel
    assert torch.equal(torch.load(out / "model.pt", weights_only=True)["w"], torch.arange(6, dtype=torch.float32))
    outs = {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()}
    for never in ("run.py", "setup.sh", "tool", "blob.dat", "model.h5", "model.onnx", "model.gguf", "broken.json",
                  "notes.txt", "model.sav", "sub/noext", "evil.joblib.gz", "evil.joblib.xz", "weights.7z",
                  "poly.gif"):
        assert never not in outs, (never, outs)
    if copy_other:
        for name in ("config.json", "README.md", "logo.png"):
            assert (out / name).read_bytes() == (src / name).read_bytes(), name
        for name in ("run.py", "setup.sh", "tool", "blob.dat", "broken.json"):
            assert files[name]["status"] == "rejected" and files[name]["error"]["rule"] == "copy.not-inert", files[name]
    else:
        for name in ("config.json", "README.md", "logo.png", "run.py", "blob.dat"):
            assert files[name]["status"] == "skipped" and not files[name]["output"], files[name]
    assert not any(".modelcdr-" in p.name for p in out.rglob("*")), "temporary file left behind"
    unsafe_load_all(out, tmp_path)
    assert not marker.exists(), "a payload ran while loading OUT"
    check_summary(se, report)


# ---- item 3: output format follows the output name ------------------------------------------------
def _sd(path):
    torch.save({"w": torch.arange(4, dtype=torch.float32)}, path)
    return path


@pytest.mark.parametrize("name,check", [
    ("x.safetensors", lambda b: b[8:9] == b"{"),
    ("x.npz", lambda b: b[:4] == b"PK\x03\x04" and b".npy" in b),
    ("x.pt", lambda b: b[:4] == b"PK\x03\x04" and b"data.pkl" in b),
    ("x.ckpt", lambda b: b[:4] == b"PK\x03\x04" and b"data.pkl" in b),
])
def test_output_format_follows_name(tmp_path, name, check):
    src = _sd(tmp_path / "in.pt")
    rc, so, se = run_cli("disarm", src, "-o", tmp_path / name)
    assert rc == 0, explain(rc, so, se)
    assert check((tmp_path / name).read_bytes()), name


def test_output_joblib_by_name(tmp_path):
    src = tmp_path / "in.joblib"
    joblib.dump({"a": np.arange(3.0)}, src)
    rc, so, se = run_cli("disarm", src, "-o", tmp_path / "o.joblib")
    assert rc == 0, explain(rc, so, se)
    assert np.array_equal(joblib.load(tmp_path / "o.joblib")["a"], np.arange(3.0))


def test_output_name_contradicting_to_is_usage_error(tmp_path):
    src = _sd(tmp_path / "in.pt")
    rc, so, se = run_cli("disarm", src, "-o", tmp_path / "x.safetensors", "--to", "pt")
    assert rc == 2 and "--to" in se, explain(rc, so, se)
    assert not (tmp_path / "x.safetensors").exists()


def test_directory_output_names_match_content(tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    _sd(src / "a.pt")
    rc, so, se = run_cli("disarm", src, "-o", tmp_path / "st", "--to", "safetensors")
    assert rc == 0, explain(rc, so, se)
    (src / "a.pt").unlink()
    os.replace(tmp_path / "st" / "a.safetensors", src / "model.safetensors")
    rc, so, se = run_cli("disarm", src, "-o", out, "--to", "pt")
    assert rc == 0, explain(rc, so, se)
    assert sorted(p.name for p in out.iterdir()) == ["model.pt"]
    assert torch.equal(torch.load(out / "model.pt", weights_only=True)["w"], torch.arange(4, dtype=torch.float32))


# ---- item 4: exit codes ------------------------------------------------------------------------------
@pytest.mark.parametrize("args", [["disarm"], ["bogus-command"], ["disarm", "a", "-o", "b", "--jobs", "0"],
                                  ["disarm", "a", "-o", "b", "--no-such-flag"], ["scan"], ["disarm", "a", "-o", "b", "--to", "xyz"]])
def test_usage_errors_exit_2(tmp_path, args):
    rc, so, se = run_cli(*args)
    assert rc == 2, explain(rc, so, se)


def test_help_exits_0():
    assert run_cli("--help")[0] == 0 and run_cli("disarm", "--help")[0] == 0


class Custom:  # a class outside the registry: its instance cannot be rebuilt
    def __init__(self):
        self.weights = [1.0, 2.0]


def test_main_object_dropped_is_rejected(tmp_path):
    src = tmp_path / "model.pkl"
    src.write_bytes(pickle.dumps(Custom(), protocol=2))
    out = tmp_path / "out.pt"
    rep = tmp_path / "r.json"
    rc, so, se = run_cli("disarm", src, "-o", out, "--report", rep)
    assert rc == 2, explain(rc, so, se)
    assert not out.exists()
    f = json.loads(rep.read_text())["files"][0]
    assert f["status"] == "rejected" and f["error"]["rule"] == "cdr.main-object-dropped", f


# ---- item 5: no silent data loss ---------------------------------------------------------------------
def test_existing_output_not_replaced_without_force(tmp_path):
    src = _sd(tmp_path / "in.pt")
    out = tmp_path / "out.pt"
    out.write_bytes(b"precious")
    rc, so, se = run_cli("disarm", src, "-o", out)
    assert rc == 2 and "--force" in se, explain(rc, so, se)
    assert out.read_bytes() == b"precious"
    rc, so, se = run_cli("disarm", src, "-o", out, "--force")
    assert rc == 0, explain(rc, so, se)
    assert torch.load(out, weights_only=True)["w"].numel() == 4


def test_existing_output_in_folder_not_replaced(tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    out.mkdir()
    _sd(src / "a.pt")
    (out / "a.pt").write_bytes(b"precious")
    rc, so, se = run_cli("disarm", src, "-o", out)
    assert rc == 2, explain(rc, so, se)
    assert (out / "a.pt").read_bytes() == b"precious"
    rc, so, se = run_cli("disarm", src, "-o", out, "-f")
    assert rc == 0, explain(rc, so, se)
    assert (out / "a.pt").read_bytes()[:2] == b"PK"


def test_rejected_input_keeps_existing_output_without_force(tmp_path):
    src = tmp_path / "bad.pt"
    src.write_bytes(b"PK\x03\x04 not a zip")
    out = tmp_path / "out.pt"
    out.write_bytes(b"precious")
    rc, so, se = run_cli("disarm", src, "-o", out)
    assert rc == 2 and out.read_bytes() == b"precious", explain(rc, so, se)


def test_unwritable_report_fails_before_output(tmp_path):
    src = _sd(tmp_path / "in.pt")
    out = tmp_path / "out.pt"
    rc, so, se = run_cli("disarm", src, "-o", out, "--report", tmp_path / "missing" / "r.json")
    assert rc == 2 and "report" in se, explain(rc, so, se)
    assert not out.exists(), "output committed although the report cannot be written"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.pt"]


def test_quiet_still_prints_errors(tmp_path):
    src = tmp_path / "bad.pt"
    src.write_bytes(b"PK\x03\x04 not a zip")
    rc, so, se = run_cli("disarm", src, "-o", tmp_path / "out.pt", "-q")
    assert rc == 2 and "bad.pt" in se, explain(rc, so, se)


def test_randomize_lsb_beyond_mantissa_is_usage_error(tmp_path):
    src = _sd(tmp_path / "in.pt")
    rc, so, se = run_cli("disarm", src, "-o", tmp_path / "out.pt", "--randomize-lsb=10")
    assert rc == 2 and "randomize-lsb" in se, explain(rc, so, se)
    assert not (tmp_path / "out.pt").exists()


def _symmetric_key(tmp_path):
    key = tmp_path / "k.key"
    rc, so, se = run_cli("keygen", "--symmetric", "-o", key)
    assert rc == 0, explain(rc, so, se)
    return key


def test_protect_refuses_existing_map_and_input_as_output(tmp_path):
    src = _sd(tmp_path / "in.pt")
    key = _symmetric_key(tmp_path)
    m = tmp_path / "m.map"
    m.write_bytes(b"an older map")
    out = tmp_path / "p.pt"
    rc, so, se = run_cli("protect", src, "-o", out, "--map", m, "--key-file", key)
    assert rc == 2, explain(rc, so, se)
    assert m.read_bytes() == b"an older map" and not out.exists()
    before = sha(src)
    rc, so, se = run_cli("protect", src, "-o", src, "--map", tmp_path / "new.map", "--key-file", key)
    assert rc == 2, explain(rc, so, se)
    assert sha(src) == before and not (tmp_path / "new.map").exists()


# ---- item 6: messages ----------------------------------------------------------------------------------
def test_error_without_offset_prints_none(tmp_path):
    src = tmp_path / "empty.pt"
    src.write_bytes(b"")
    rc, so, se = run_cli("disarm", src, "-o", tmp_path / "out.pt")
    assert rc == 2, explain(rc, so, se)
    message = se.split("empty.pt:", 1)[1]
    assert "empty" in message and "offset" not in message, se


def test_missing_output_folder_names_output(tmp_path):
    src = _sd(tmp_path / "in.pt")
    out = tmp_path / "nodir" / "out.pt"
    rc, so, se = run_cli("disarm", src, "-o", out)
    assert rc == 2, explain(rc, so, se)
    assert str(out) in se and "rejected" not in se, se


def test_randomize_lsb_flag_before_input(tmp_path):
    src = _sd(tmp_path / "in.pt")
    out = tmp_path / "out.pt"
    rc, so, se = run_cli("disarm", "--randomize-lsb", src, "-o", out)
    assert rc == 0, explain(rc, so, se)
    assert torch.load(out, weights_only=True)["w"].shape == (4,)


def test_lab_usage_errors_exit_2():
    from conftest import bin_path
    lab = bin_path().parent / "modelcdr-lab"
    if not lab.is_file():
        pytest.skip("modelcdr-lab not built")
    p = subprocess.run([str(lab), "--no-such-flag"], capture_output=True, timeout=60)
    assert p.returncode == 2, p.stderr.decode()
