"""Command-line contract (docs/CLI.md): scan JSON/SARIF, exit codes, disarm hygiene, directory mode."""
from __future__ import annotations

import collections
import gzip
import hashlib
import json
import os
import random
from pathlib import Path

import pytest

from conftest import explain, require_bin, run_cli
import vocab

torch = pytest.importorskip("torch")

# a classic protocol-0 "os.system" pickle; written as bytes, never loaded
EVIL = b"cos\nsystem\n(S'echo hi'\ntR."
SEVERITIES = {"info", "low", "medium", "high", "critical"}


@pytest.fixture(autouse=True)
def _needs_bin():
    require_bin()


def make_clean(path):
    torch.manual_seed(0)
    sd = collections.OrderedDict(w=torch.randn(3, 4), b=torch.zeros(4, dtype=torch.int64))
    sd._metadata = collections.OrderedDict([("", {"version": 1})])
    torch.save(sd, path)
    return path


def make_evil(path):
    Path(path).write_bytes(EVIL)
    return path


def sha(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def bad_inputs(d: Path):
    d.mkdir(exist_ok=True)
    rnd = random.Random(1234)
    clean = make_clean(d / "whole.pt")
    data = clean.read_bytes()
    files = {
        "truncated_zip.pt": data[: len(data) // 2],
        "truncated_pickle.pkl": b"\x80\x02}q\x00(X\x01\x00\x00\x00aq\x01",
        "archive.7z": b"7z\xbc\xaf\x27\x1c\x00\x04" + bytes(rnd.getrandbits(8) for _ in range(200)),
        "blob.gz": gzip.compress(bytes(rnd.getrandbits(8) for _ in range(300))),
        "random.bin": bytes(rnd.getrandbits(8) for _ in range(4096)),
    }
    clean.unlink()
    out = []
    for name, b in files.items():
        (d / name).write_bytes(b)
        out.append(d / name)
    return out


# --------------------------------------------------------------------------------------------------
# scan
# --------------------------------------------------------------------------------------------------
def test_scan_json_clean(tmp_path):
    f = make_clean(tmp_path / "model.pt")
    rc, so, se = run_cli("scan", "--json", f)
    assert rc == 0, explain(rc, so, se)
    doc = json.loads(so)
    assert doc["schema"] == "modelcdr.scan/1"
    assert doc["tool"]["name"] == "modelcdr" and isinstance(doc["tool"]["version"], str)
    assert len(doc["files"]) == 1
    e = doc["files"][0]
    for k in ("path", "format", "status", "error", "tensors", "findings"):
        assert k in e, e
    assert e["path"].endswith("model.pt")
    assert e["format"] == "torch-zip"
    assert e["status"] == "clean" and e["error"] is None
    assert [x for x in e["findings"] if x.get("severity") not in ("info",)] == []
    assert e["tensors"]["count"] == 2
    assert e["tensors"]["total_bytes"] == 12 * 4 + 4 * 8
    assert e["tensors"]["dtypes"] == {"float32": 1, "int64": 1}
    assert doc["summary"] == {"files": 1, "clean": 1, "with_findings": 0, "errors": 0, "skipped": 0,
                              "verdicts": {"clean": 1, "safe": 0, "unknown": 0, "dangerous": 0}}
    assert e["verdict"] == "clean"


def test_scan_json_malicious(tmp_path):
    f = make_evil(tmp_path / "evil.pkl")
    rc, so, se = run_cli("scan", "--json", f)
    assert rc == 1, explain(rc, so, se)
    doc = json.loads(so)
    e = doc["files"][0]
    assert e["status"] == "findings" and e["format"] == "pickle", e
    assert e["findings"], e
    for x in e["findings"]:
        for k in ("severity", "rule", "message", "entry", "offset"):
            assert k in x, x
        assert x["severity"] in SEVERITIES, x
    crit = [x for x in e["findings"] if x["severity"] in ("high", "critical")]
    assert crit and any("system" in x["message"] for x in crit), e["findings"]
    assert doc["summary"]["with_findings"] == 1 and doc["summary"]["files"] == 1


def test_scan_sarif(tmp_path):
    f = make_evil(tmp_path / "evil.pkl")
    rc, so, se = run_cli("scan", "--sarif", f)
    assert rc == 1, explain(rc, so, se)
    doc = json.loads(so)
    assert doc["version"] == "2.1.0"
    run = doc["runs"][0]
    assert run["tool"]["driver"]["name"] == "modelcdr"
    assert run["results"], run
    for r in run["results"]:
        assert isinstance(r.get("ruleId"), str) and r["ruleId"]
        assert "message" in r and r["message"].get("text")
    # every ruleId used is declared by the driver if the driver lists rules
    rules = run["tool"]["driver"].get("rules")
    if rules is not None:
        ids = {x["id"] for x in rules}
        assert {r["ruleId"] for r in run["results"]} <= ids


def test_scan_text_default(tmp_path):
    f = make_evil(tmp_path / "evil.pkl")
    rc, so, se = run_cli("scan", f)
    assert rc == 1, explain(rc, so, se)
    assert "evil.pkl" in so + se


def test_scan_exit_codes(tmp_path):
    assert run_cli("scan", make_clean(tmp_path / "c.pt"))[0] == 0
    assert run_cli("scan", make_evil(tmp_path / "e.pkl"))[0] == 1
    for f in bad_inputs(tmp_path / "bad"):
        rc, so, se = run_cli("scan", "--json", f)
        assert rc == 2, f"{f.name}: " + explain(rc, so, se)
        e = json.loads(so)["files"][0]
        assert e["status"] == "error" and e["error"] and e["error"].get("rule"), e


def test_scan_directory_recurses(tmp_path):
    d = tmp_path / "tree"
    (d / "sub").mkdir(parents=True)
    make_clean(d / "a.pt")
    make_clean(d / "sub" / "b.pth")
    make_evil(d / "sub" / "evil.pkl")
    rc, so, se = run_cli("scan", "--json", d)
    assert rc == 1, explain(rc, so, se)
    doc = json.loads(so)
    paths = sorted(Path(x["path"]).name for x in doc["files"])
    assert {"a.pt", "b.pth", "evil.pkl"} <= set(paths), paths
    assert doc["summary"]["with_findings"] == 1


# --------------------------------------------------------------------------------------------------
# disarm: single files
# --------------------------------------------------------------------------------------------------
def test_disarm_clean_exit0_and_input_untouched(tmp_path):
    f = make_clean(tmp_path / "in.pt")
    os.utime(f, ns=(1_600_000_000_000_000_000, 1_600_000_000_000_000_000))
    before = (sha(f), f.stat().st_mtime_ns, f.stat().st_size)
    out = tmp_path / "o" / "out.pt"
    out.parent.mkdir()
    rc, so, se = run_cli("disarm", f, "-o", out)
    assert rc == 0, explain(rc, so, se)
    assert (sha(f), f.stat().st_mtime_ns, f.stat().st_size) == before, "input file modified"
    assert vocab.check_output(out) == []
    assert sorted(p.name for p in out.parent.iterdir()) == ["out.pt"], "stray files in output dir"
    got = torch.load(out, weights_only=True)
    assert list(got) == ["w", "b"] and torch.equal(got["w"], torch.load(f)["w"])


def test_disarm_evil_pickle(tmp_path):
    f = make_evil(tmp_path / "evil.pkl")
    out = tmp_path / "o" / "out.pt"
    out.parent.mkdir()
    rep = tmp_path / "r.json"
    rc, so, se = run_cli("disarm", f, "-o", out, "--report", rep)
    assert rc in (1, 2), explain(rc, so, se)
    report = json.loads(rep.read_text())
    if rc == 2:
        assert not out.exists()
        assert list(out.parent.iterdir()) == []
        assert report["files"][0]["status"] == "rejected"
    else:
        assert vocab.check_output(out) == []
        assert ("posix", "system") not in vocab.pickle_globals(vocab.read_data_pkl(out))
        assert ("os", "system") not in vocab.pickle_globals(vocab.read_data_pkl(out))
        assert report["files"][0]["removed"], report
        assert se.strip(), "exit 1 must say on stderr what was removed"


@pytest.mark.parametrize("name", ["truncated_zip.pt", "truncated_pickle.pkl", "archive.7z", "blob.gz", "random.bin"])
def test_disarm_rejects_cleanly(tmp_path, name):
    files = {p.name: p for p in bad_inputs(tmp_path / "bad")}
    f = files[name]
    od = tmp_path / "o"
    od.mkdir()
    out = od / "out.pt"
    rep = tmp_path / "r.json"
    before = sha(f)
    rc, so, se = run_cli("disarm", f, "-o", out, "--report", rep)
    assert rc == 2, explain(rc, so, se)
    assert not out.exists(), "rejected but output exists"
    assert list(od.iterdir()) == [], f"temp files left behind: {list(od.iterdir())}"
    assert sha(f) == before
    r = json.loads(rep.read_text())
    assert r["files"][0]["status"] == "rejected" and r["files"][0]["error"], r
    assert r["summary"]["rejected"] == 1
    assert se.strip(), "a rejection should say why on stderr"


def test_disarm_reject_removes_preexisting_output(tmp_path):
    """CLI.md: exit 2 with --force => OUT does not exist afterwards (even if it existed before)."""
    f = tmp_path / "random.bin"
    f.write_bytes(bytes(random.Random(5).getrandbits(8) for _ in range(1000)))
    od = tmp_path / "o"
    od.mkdir()
    out = od / "out.pt"
    out.write_bytes(b"stale")
    rc, so, se = run_cli("disarm", f, "-o", out, "--force")
    assert rc == 2, explain(rc, so, se)
    assert not out.exists()
    assert list(od.iterdir()) == []


def test_disarm_overwrites_existing_output(tmp_path):
    f = make_clean(tmp_path / "in.pt")
    out = tmp_path / "out.pt"
    out.write_bytes(b"old junk")
    rc, so, se = run_cli("disarm", f, "-o", out, "--force")
    assert rc == 0, explain(rc, so, se)
    assert vocab.check_output(out) == []


def test_disarm_quiet(tmp_path):
    f = make_clean(tmp_path / "in.pt")
    rc, so, se = run_cli("disarm", f, "-o", tmp_path / "out.pt", "--quiet")
    assert rc == 0, explain(rc, so, se)
    assert so.strip() == ""


# --------------------------------------------------------------------------------------------------
# disarm: directories
# --------------------------------------------------------------------------------------------------
def make_tree(d: Path):
    (d / "sub" / "deeper").mkdir(parents=True)
    make_clean(d / "model.pt")
    make_clean(d / "sub" / "weights.pth")
    make_clean(d / "sub" / "deeper" / "pytorch_model.bin")
    (d / "README.md").write_text("# hello\n")
    (d / "sub" / "config.json").write_text('{"a": 1}\n')
    return ["model.pt", "sub/weights.pth", "sub/deeper/pytorch_model.bin"], ["README.md", "sub/config.json"]


def _files_under(d: Path):
    return sorted(str(p.relative_to(d)) for p in d.rglob("*") if p.is_file())


def test_disarm_directory(tmp_path):
    src = tmp_path / "in"
    models, others = make_tree(src)
    snap = {m: sha(src / m) for m in models + others}
    out = tmp_path / "out"
    rep = tmp_path / "r.json"
    rc, so, se = run_cli("disarm", src, "-o", out, "--jobs", "2", "--report", rep)
    assert rc == 0, explain(rc, so, se)
    assert _files_under(out) == sorted(models), _files_under(out)
    for m in models:
        assert vocab.check_output(out / m) == [], m
        got = torch.load(out / m, weights_only=True)
        assert list(got) == ["w", "b"]
    assert {m: sha(src / m) for m in models + others} == snap, "inputs modified"
    last = [ln for ln in se.splitlines() if ln.strip()]
    assert last and any(ch.isdigit() for ch in last[-1]), "no one-line summary on stderr:\n" + se
    r = json.loads(rep.read_text())
    by_name = {Path(x["input"]).name: x for x in r["files"]}
    for m in models:
        assert by_name[Path(m).name]["status"] == "clean"
    for o in others:
        assert by_name[Path(o).name]["status"] == "skipped", by_name.get(Path(o).name)
    assert r["summary"]["clean"] == len(models) and r["summary"]["skipped"] == len(others), r["summary"]


def test_disarm_directory_copy_other(tmp_path):
    src = tmp_path / "in"
    models, others = make_tree(src)
    out = tmp_path / "out"
    rc, so, se = run_cli("disarm", src, "-o", out, "--copy-other", "--jobs", "2")
    assert rc == 0, explain(rc, so, se)
    assert _files_under(out) == sorted(models + others)
    for o in others:
        assert (out / o).read_bytes() == (src / o).read_bytes()


def test_disarm_directory_worst_exit(tmp_path):
    src = tmp_path / "in"
    models, _ = make_tree(src)
    (src / "sub" / "junk.pt").write_bytes(b"PK\x03\x04 definitely not a zip")
    out = tmp_path / "out"
    rc, so, se = run_cli("disarm", src, "-o", out, "--jobs", "2")
    assert rc == 2, explain(rc, so, se)
    assert not (out / "sub" / "junk.pt").exists()
    for m in models:
        assert vocab.check_output(out / m) == [], m
    leftovers = [p for p in _files_under(out) if p not in models]
    assert leftovers == [], f"unexpected files in OUTDIR: {leftovers}"


def _flip_byte_in_record(path, suffix):
    """Flip one payload byte of the first zip record whose name ends with `suffix`."""
    import struct
    import zipfile
    with zipfile.ZipFile(path) as z:
        info = next(i for i in z.infolist() if i.filename.endswith(suffix) and i.file_size > 0)
    data = bytearray(Path(path).read_bytes())
    name_len, extra_len = struct.unpack_from("<HH", data, info.header_offset + 26)
    data[info.header_offset + 30 + name_len + extra_len] ^= 0x01
    Path(path).write_bytes(bytes(data))


@pytest.mark.parametrize("kind", ["checkpoint", "large-checkpoint", "torchscript"])
def test_disarm_rejects_bad_crc(tmp_path, kind):
    """A storage record whose bytes no longer match the zip CRC is rejected, whichever reader
    handles the archive (the plain-checkpoint path checks it while copying; records of 4 MiB
    and more are copied in the kernel and checksummed from the output)."""
    require_bin()
    import torch
    src = tmp_path / "in.pt"
    if kind == "checkpoint":
        torch.save({"w": torch.arange(64, dtype=torch.float32)}, src)
    elif kind == "large-checkpoint":
        torch.save({"w": torch.arange(3 << 20, dtype=torch.float32)}, src)  # 12 MiB record
    else:
        torch.jit.save(torch.jit.script(torch.nn.Linear(8, 4)), str(src))
    _flip_byte_in_record(src, "data/0")
    out = tmp_path / "out.pt"
    rc, _, err = run_cli("disarm", str(src), "-o", str(out))
    assert rc == 2, explain(rc, "", err)
    assert "zip.bad-crc" in err
    assert not out.exists()


def test_large_records_keep_input_folio_phase(tmp_path):
    """Large records are copied to the same offset modulo 64 KiB as in the input (so the kernel
    moves whole page-cache folios), stay 64-byte aligned, and load equal in torch."""
    require_bin()
    import struct
    import zipfile
    src = tmp_path / "in.pt"
    sd = {"small": torch.arange(10, dtype=torch.float32),
          "a": torch.rand(5 << 20), "b": torch.rand(3 << 20, dtype=torch.float64)}
    torch.save(sd, src)
    out = tmp_path / "out.pt"
    rc, _, err = run_cli("disarm", str(src), "-o", str(out))
    assert rc == 0, explain(rc, "", err)

    def data_offsets(path):
        offsets = {}
        raw = Path(path).read_bytes()
        for info in zipfile.ZipFile(path).infolist():
            name_len, extra_len = struct.unpack_from("<HH", raw, info.header_offset + 26)
            offsets[info.filename.split("/", 1)[1]] = info.header_offset + 30 + name_len + extra_len
        return offsets
    a, b = data_offsets(src), data_offsets(out)
    big = [k for k in a if k.startswith("data/") and zipfile.ZipFile(src).getinfo("in/" + k).file_size >= 4 << 20]
    assert len(big) == 2
    for k in big:
        assert b[k] % 65536 == a[k] % 65536, k
    assert all(off % 64 == 0 for k, off in b.items() if k.startswith("data/"))
    back = torch.load(out, weights_only=True)
    assert all(torch.equal(back[k], sd[k]) for k in sd)
