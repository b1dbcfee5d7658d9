"""Directory mode and paths (issue 16, items 7-13): long paths, output aliasing the input through
links, links planted in the input, output-name collisions, prefix-named siblings, code in
--to safetensors conversions, and shard indexes naming files outside the folder. Every tree is
made here by a generator; nothing is loaded from the inputs."""
from __future__ import annotations

import hashlib
import json
import os
import random
from pathlib import Path

import pytest

from conftest import explain, require_bin, run_cli

torch = pytest.importorskip("torch")


@pytest.fixture(autouse=True)
def _needs_bin():
    require_bin()


def save_sd(path, n=4):
    torch.save({"w": torch.arange(n, dtype=torch.float32)}, path)
    return path


def snapshot(root: Path):
    """Everything under root (never following links): relative path -> (type, sha256 or target)."""
    out = {}
    for dirpath, dirs, files in os.walk(root, followlinks=False):
        for name in dirs + files:
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            if p.is_symlink():
                out[rel] = ("link", os.readlink(p))
            elif p.is_file():
                out[rel] = ("file", hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            else:
                out[rel] = ("dir",)
    return out


def no_temp_files(root: Path):
    return [str(p) for p in root.rglob("*") if ".modelcdr-" in p.name]


# ---- item 7: paths longer than 4096 bytes --------------------------------------------------------
def test_path_longer_than_path_max(tmp_path):
    src, out, rep = tmp_path / "in", tmp_path / "out", tmp_path / "r.json"
    src.mkdir()
    fd = os.open(src, os.O_RDONLY | os.O_DIRECTORY)
    depth = 20
    try:
        for _ in range(depth):  # 20 * 250 bytes: deeper than PATH_MAX, made relative to descriptors
            os.mkdir("d" * 250, dir_fd=fd)
            nfd = os.open("d" * 250, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = nfd
        save_sd(tmp_path / "tmp.pt")
        data = (tmp_path / "tmp.pt").read_bytes()
        wfd = os.open("deep.pt", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
        os.write(wfd, data)
        os.close(wfd)
    finally:
        os.close(fd)
    save_sd(src / "top.pt")
    rc, so, se = run_cli("disarm", src, "-o", out, "--report", rep)
    assert rc == 0, explain(rc, so, se)
    report = json.loads(rep.read_text())
    names = sorted(Path(f["input"]).name for f in report["files"])
    assert names == ["deep.pt", "top.pt"], names
    fd = os.open(out, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(depth):
            nfd = os.open("d" * 250, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = nfd
        rfd = os.open("deep.pt", os.O_RDONLY, dir_fd=fd)
        assert os.read(rfd, 4) == b"PK\x03\x04"
        os.close(rfd)
    finally:
        os.close(fd)


# ---- item 8: output is the input through a link --------------------------------------------------
def test_output_link_to_input_is_refused(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    save_sd(src / "model.pt")
    (tmp_path / "outlink").symlink_to(src)
    before = snapshot(src)
    rc, so, se = run_cli("disarm", src, "-o", tmp_path / "outlink", "--force")
    assert rc == 2, explain(rc, so, se)
    assert snapshot(src) == before, "input folder changed"


# ---- item 9: a link planted inside the input as the output folder ---------------------------------
def test_planted_output_link_is_refused(tmp_path):
    src, elsewhere = tmp_path / "in", tmp_path / "elsewhere"
    src.mkdir()
    elsewhere.mkdir()
    save_sd(src / "model.pt")
    (src / "clean").symlink_to(elsewhere)
    rc, so, se = run_cli("disarm", src, "-o", src / "clean")
    assert rc == 2, explain(rc, so, se)
    assert list(elsewhere.iterdir()) == [], "wrote through a planted link"


def test_planted_link_below_output_folder_is_not_followed(tmp_path):
    """-o in/clean where in/clean is a real folder holding a planted link in/clean/sub -> elsewhere."""
    src, elsewhere = tmp_path / "in", tmp_path / "elsewhere"
    (src / "sub").mkdir(parents=True)
    (src / "clean").mkdir()
    elsewhere.mkdir()
    save_sd(src / "sub" / "model.pt")
    (src / "clean" / "sub").symlink_to(elsewhere)
    rc, so, se = run_cli("disarm", src, "-o", src / "clean")
    assert rc == 2, explain(rc, so, se)
    assert list(elsewhere.iterdir()) == [], "wrote through a planted link"


# ---- item 10: two inputs, one output name --------------------------------------------------------
def test_output_name_collision_rejects_both(tmp_path):
    src, out, rep = tmp_path / "in", tmp_path / "out", tmp_path / "r.json"
    src.mkdir()
    save_sd(src / "pytorch_model.bin", 4)
    save_sd(tmp_path / "x.pt", 6)
    rc, so, se = run_cli("disarm", tmp_path / "x.pt", "-o", src / "model.safetensors")
    assert rc == 0, explain(rc, so, se)
    (src / "keep.pt").write_bytes((src / "pytorch_model.bin").read_bytes())
    rc, so, se = run_cli("disarm", src, "-o", out, "--to", "safetensors", "--report", rep)
    assert rc == 2, explain(rc, so, se)
    files = {Path(f["input"]).name: f for f in json.loads(rep.read_text())["files"]}
    for name in ("pytorch_model.bin", "model.safetensors"):
        assert files[name]["status"] == "rejected" and files[name]["error"]["rule"] == "io.name-collision", files[name]
        assert files[name]["output"] is None or files[name]["output"] == ""
    assert not (out / "model.safetensors").exists()
    assert files["keep.pt"]["status"] == "clean" and (out / "keep.safetensors").exists()
    assert no_temp_files(out) == []


# ---- item 11: a sibling whose name starts with the output folder's name ---------------------------
def test_prefix_named_sibling_is_processed(tmp_path):
    src, rep = tmp_path / "in", tmp_path / "r.json"
    src.mkdir()
    save_sd(src / "out_evil.pt")
    rc, so, se = run_cli("disarm", src, "-o", src / "out", "--report", rep)
    assert rc == 0, explain(rc, so, se)
    names = [Path(f["input"]).name for f in json.loads(rep.read_text())["files"]]
    assert names == ["out_evil.pt"], names
    assert (src / "out" / "out_evil.pt").is_file()


# ---- item 12: --to safetensors never copies code -------------------------------------------------
def test_to_safetensors_copies_no_code(tmp_path):
    src, out, rep = tmp_path / "in", tmp_path / "out", tmp_path / "r.json"
    src.mkdir()
    save_sd(src / "pytorch_model.bin")
    (src / "config.json").write_text('{"a": 1}\n')
    (src / "modeling.py").write_text("import os\n")
    (src / "run.sh").write_text("#!/bin/sh\necho hi\n")
    (src / "notes.txt").write_bytes(b"cos\nsystem\n(S'echo hi'\ntR.")
    rc, so, se = run_cli("disarm", src, "-o", out, "--to", "safetensors", "--report", rep)
    assert rc == 2, explain(rc, so, se)  # the pickle in notes.txt is a model file, and it is rejected
    got = sorted(p.name for p in out.iterdir())
    assert got == ["config.json", "model.safetensors"], got
    files = {Path(f["input"]).name: f for f in json.loads(rep.read_text())["files"]}
    assert files["notes.txt"]["status"] in ("rejected", "removed")


# ---- item 13: a ready-made safetensors index naming files outside the folder ----------------------
@pytest.mark.parametrize("shard", ["../evil.safetensors", "/etc/passwd", "sub/../../x.safetensors"])
def test_safetensors_index_outside_folder_is_rejected(tmp_path, shard):
    src, out, rep = tmp_path / "in", tmp_path / "out", tmp_path / "r.json"
    src.mkdir()
    save_sd(src / "pytorch_model.bin")
    (src / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": {"w": shard}}))
    rc, so, se = run_cli("disarm", src, "-o", out, "--to", "safetensors", "--report", rep)
    assert rc == 2, explain(rc, so, se)
    files = {Path(f["input"]).name: f for f in json.loads(rep.read_text())["files"]}
    assert files["model.safetensors.index.json"]["status"] == "rejected"
    assert not (out / "model.safetensors.index.json").exists()


def test_rewritten_index_cannot_be_overwritten_by_ready_made_one(tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    save_sd(src / "pytorch_model-00001-of-00001.bin")
    wm = {"weight_map": {"w": "pytorch_model-00001-of-00001.bin"}}
    (src / "pytorch_model.bin.index.json").write_text(json.dumps(wm))
    (src / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"w": "other.safetensors"}}))
    rc, so, se = run_cli("disarm", src, "-o", out, "--to", "safetensors")
    assert rc == 2, explain(rc, so, se)
    assert not (out / "model.safetensors.index.json").exists()
    assert (out / "model-00001-of-00001.safetensors").exists()


# ---- property: aliasing never writes outside OUT or over an input ---------------------------------
def _scenario(base: Path, rnd: random.Random):
    """A random tree with links, hard links and an output spelled with '..' or inside the input."""
    src = base / "in"
    (src / "a" / "b").mkdir(parents=True)
    outside = base / "outside"
    outside.mkdir()
    (outside / "victim.pt").write_bytes(b"victim")
    save_sd(src / "m.pt")
    save_sd(src / "a" / "b" / "n.pt")
    choices = []
    if rnd.random() < 0.5:
        (src / "a" / "link_out").symlink_to(outside)
    if rnd.random() < 0.5:
        (src / "a" / "link_in").symlink_to(src)
    if rnd.random() < 0.5:
        os.link(src / "m.pt", src / "a" / "hard.pt")
    kind = rnd.choice(["inside", "dotdot", "link_in", "link_out", "sibling", "hardlinked_out"])
    if kind == "inside":
        out = src / "a" / "clean"
    elif kind == "dotdot":
        out = src / "a" / ".." / "a" / "b" / ".." / "clean"
    elif kind == "link_in":
        if not (src / "a" / "link_in").exists():
            (src / "a" / "link_in").symlink_to(src)
        out = src / "a" / "link_in" / "a" / "clean"
    elif kind == "link_out":
        if not (src / "a" / "link_out").exists():
            (src / "a" / "link_out").symlink_to(outside)
        out = src / "a" / "link_out"
    elif kind == "sibling":
        out = base / "out"
    else:  # an output folder prepared with hard links to the inputs, replaced with --force
        out = base / "out"
        out.mkdir()
        os.link(src / "m.pt", out / "m.pt")
        choices.append("--force")
    return src, outside, out, choices, kind


@pytest.mark.parametrize("seed", range(12))
def test_aliasing_never_writes_outside_output_or_over_input(tmp_path, seed):
    rnd = random.Random(seed)
    src, outside, out, extra, kind = _scenario(tmp_path, rnd)
    before_in = {k: v for k, v in snapshot(src).items()}
    before_outside = snapshot(outside)
    input_hashes = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in src.rglob("*.pt") if p.is_file() and not p.is_symlink()}
    rc, so, se = run_cli("disarm", src, "-o", out, *extra)
    assert rc in (0, 2), explain(rc, so, se)
    assert snapshot(outside) == before_outside, (kind, "wrote outside the output folder")
    for p, h in input_hashes.items():
        assert hashlib.sha256(p.read_bytes()).hexdigest() == h, (kind, f"input {p} modified")
    real_out = Path(os.path.realpath(out)) if rc == 0 else None
    after_in = snapshot(src)
    for rel, v in after_in.items():
        if rel in before_in:
            continue
        # anything new under the input must be inside the output folder we asked for
        assert real_out is not None and Path(os.path.realpath(src / rel)).is_relative_to(real_out), (kind, rel)
    assert no_temp_files(tmp_path) == []
