#!/usr/bin/env python3
"""Writes the seed files of the per-format fuzz targets into fuzz/seeds/<target>/.

Every seed is our own small data (each under 64 KiB, the fuzzers' -max_len), written by the
library that defines the format: safetensors, numpy, joblib, torch.save / torch.jit.save, and
`modelcdr` itself for MTD maps and key files. Nothing is ever loaded. The tar seed is built
member by member as docs/FORMATS.md §3.3 describes (torch no longer writes that format).

Run with a Python that has torch 2.x, numpy, joblib, scikit-learn and safetensors (the project
venv) after building modelcdr:
    /work/main/.venv/bin/python fuzz/make_format_seeds.py [path/to/modelcdr]
"""
import base64
import collections
import io
import json
import os
import pickle
import shutil
import struct
import subprocess
import sys
import tarfile
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
SEEDS = os.path.join(HERE, "seeds")
MODELCDR = sys.argv[1] if len(sys.argv) > 1 else os.path.join(HERE, "..", "build", "modelcdr")


def write(target, name, data):
    d = os.path.join(SEEDS, target)
    os.makedirs(d, exist_ok=True)
    assert len(data) < 65536, (target, name, len(data))
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def dumped(save, *args, **kw):
    buf = io.BytesIO()
    save(*args, buf, **kw)
    return buf.getvalue()


def safetensors_seeds(torch):
    from safetensors.torch import save
    t = {"w": torch.arange(6, dtype=torch.float32).reshape(2, 3), "b": torch.zeros(3, dtype=torch.float16),
         "i": torch.tensor([1, 2], dtype=torch.int64), "m": torch.tensor([True, False])}
    write("safetensors", "tensors.safetensors", save(t))
    write("safetensors", "metadata.safetensors", save({"x": torch.ones(4)}, metadata={"format": "pt", "note": "x"}))
    write("safetensors", "empty.safetensors", save({}))


def numpy_seeds():
    arrays = {
        "f4.npy": np.arange(12, dtype="<f4").reshape(3, 4),
        "fortran.npy": np.asfortranarray(np.arange(6, dtype="<f8").reshape(2, 3)),
        "scalar.npy": np.array(7, dtype="<i8"),
        "big_endian.npy": np.arange(4, dtype=">i4"),
        "structured.npy": np.zeros(3, dtype=[("a", "<i4"), ("b", "<f8", (2,))]),
        "unicode.npy": np.array(["ab", "c"]),
        "bool.npy": np.array([True, False]),
    }
    for name, a in arrays.items():
        write("npy", name, dumped(lambda x, f: np.save(f, x), a))
    write("npy", "object.npy", dumped(lambda x, f: np.save(f, x, allow_pickle=True), np.array([1, "a", None], dtype=object)))
    write("npz", "plain.npz", dumped(lambda f, **k: np.savez(f, **k), **{"a": arrays["f4.npy"], "b": arrays["scalar.npy"]}))
    write("npz", "compressed.npz", dumped(lambda f, **k: np.savez_compressed(f, **k), x=arrays["fortran.npy"]))


def torch_seeds(torch):
    torch.manual_seed(0)
    sd = collections.OrderedDict(weight=torch.randn(2, 3), bias=torch.zeros(3, dtype=torch.float16))
    sd["tied"] = sd["weight"]
    sd["view"] = sd["weight"][1]
    legacy = dict(_use_new_zipfile_serialization=False)
    write("torch_legacy", "state_dict.pt", dumped(torch.save, sd, **legacy))
    write("torch_legacy", "module.pt", dumped(torch.save, torch.nn.Linear(2, 2), **legacy))
    write("torch_legacy", "nested.pt", dumped(torch.save, {"epoch": 3, "opt": {"lr": 0.1}, "sd": sd}, **legacy))
    write("torchscript", "linear_script.pt", dumped(torch.jit.save, torch.jit.script(torch.nn.Linear(2, 2))))
    seq = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.ReLU())
    write("torchscript", "seq_trace.pt", dumped(torch.jit.save, torch.jit.trace(seq, torch.zeros(1, 2))))
    write("torchscript", "state_dict_zip.pt", dumped(torch.save, sd))
    write("npz", "torch_zip.pt", dumped(torch.save, {"x": torch.ones(2)}))
    tar_seed(torch)


def tar_seed(torch):
    """PyTorch's tar format, member by member (docs/FORMATS.md §3.3): one float storage, one tensor."""
    def p(obj):
        return pickle.dumps(obj, protocol=2)

    class Ref:  # a persistent id in the `pickle` member
        def __init__(self, key):
            self.key = key

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            return obj.key if isinstance(obj, Ref) else None

    sys_info = p({"protocol_version": 1001, "little_endian": True, "type_sizes": {"short": 2, "int": 4, "long": 4}})
    data = struct.pack("<6f", *range(6))
    storages = p(1) + p(("0", "cpu", torch.FloatStorage)) + struct.pack("<q", 6) + data + p([])
    tensors = p(1) + p(("t0", "0", torch.FloatTensor)) + struct.pack("<i4x", 2) + struct.pack("<2q", 2, 3) + \
        struct.pack("<2q", 3, 1) + struct.pack("<q", 0)
    buf = io.BytesIO()
    Pickler(buf, protocol=2).dump(collections.OrderedDict(weight=Ref("t0")))
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, blob in (("sys_info", sys_info), ("pickle", buf.getvalue()), ("storages", storages), ("tensors", tensors)):
            info = tarfile.TarInfo(name)
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    write("tar", "state_dict.tar", out.getvalue())


def joblib_seeds():
    import joblib
    from sklearn.linear_model import LinearRegression
    from sklearn.preprocessing import StandardScaler
    x = np.arange(8, dtype=np.float64).reshape(4, 2)
    model = LinearRegression().fit(x, x[:, 0] * 2 + 1)
    plain = {"a": np.arange(5, dtype=np.float32), "names": ["x", "y"], "n": 3}
    with tempfile.TemporaryDirectory() as tmp:
        def dump(obj, **kw):
            path = os.path.join(tmp, "f")
            joblib.dump(obj, path, **kw)
            with open(path, "rb") as f:
                return f.read()
        write("joblib", "dict.joblib", dump(plain))
        write("joblib", "linear.joblib", dump(model))
        write("joblib", "scaler.joblib", dump(StandardScaler().fit(x)))
        write("joblib", "plain_p2.pkl", pickle.dumps(plain["names"], protocol=2))
        for codec in ("zlib", "gzip", "bz2", "xz", "lzma"):
            write("codecs", f"dict.{codec}", dump(plain, compress=(codec, 3)))
        write("codecs", "linear.zlib", dump(model, compress=("zlib", 1)))
        raw = os.path.join(tmp, "raw")
        with open(raw, "wb") as f:
            f.write(dump(plain))
        # joblib's lz4 codec needs the lz4 Python package; the lz4 tool writes the same frame format.
        if shutil.which("lz4"):
            subprocess.run(["lz4", "-q", "-f", raw, raw + ".lz4"], check=True)
            with open(raw + ".lz4", "rb") as f:
                write("codecs", "dict.lz4", f.read())


def mtd_seeds(torch):
    """A sealed map for the all-zero symmetric key (the target opens with it), its payload shape
    in clear, and key files as `modelcdr keygen` writes them."""
    with tempfile.TemporaryDirectory() as tmp:
        key = os.path.join(tmp, "zero.key")
        with open(key, "w") as f:
            f.write("modelcdr-key-v1\nkind: symmetric\nkey: " + base64.b64encode(bytes(32)).decode() + "\n")
        os.chmod(key, 0o600)
        model = os.path.join(tmp, "in.pt")
        torch.save({"a": torch.arange(64, dtype=torch.float32), "b": torch.ones(64)}, model)
        for i, extra in enumerate(([], ["--encrypt"])):
            out, m = os.path.join(tmp, f"o{i}.pt"), os.path.join(tmp, f"m{i}.map")
            subprocess.run([MODELCDR, "protect", model, "-o", out, "--map", m, "--key-file", key, "--quiet", *extra],
                           check=True)
            with open(m, "rb") as f:
                write("mtd_map", f"sealed{i}.map", f.read())
        with open(key, "rb") as f:
            write("key_file", "symmetric.key", f.read())
        subprocess.run([MODELCDR, "keygen", "-o", os.path.join(tmp, "pair")], check=True, capture_output=True)
        for name in ("pair.key", "pair.pub"):
            with open(os.path.join(tmp, name), "rb") as f:
                write("key_file", name, f.read())
    digest = "0" * 64
    payload = {
        "schema": "modelcdr.mtd-map/2", "hash": "sha-256", "permutation": {"scheme": "mtd-blockperm-v1"},
        "compat": "torch2", "secret": base64.b64encode(bytes(32)).decode(), "encryption": None,
        "non_tensor": {"before": digest, "after": digest}, "layout": {"after": digest}, "architecture": None,
        "storages": [{"key": i, "source": 1 - i, "nbytes": 256, "name": f"archive/data/{i}", "dtype": "float32",
                      "permuted": True, "before": digest, "after": digest} for i in range(2)],
    }
    write("mtd_map", "payload.json", json.dumps(payload).encode())


def json_seeds():
    docs = {
        "object.json": {"a": 1, "b": [1.5, -2, "x", None, True], "c": {"d": {}}},
        "st_header.json": {"__metadata__": {"format": "pt"}, "w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}},
        "array.json": [[[[1]]], "\u00e9\ud83d\ude00"],
    }
    for name, doc in docs.items():
        write("bounded_json", name, json.dumps(doc).encode())
    write("bounded_json", "duplicate.json", b'{"a": 1, "a": 2}')


def classify_seeds():
    write("classify", "text.txt", "plain text, caf\u00e9\n".encode())
    write("classify", "config.json", b'{"hidden_size": 8}')
    write("classify", "script.sh", b"#!/bin/sh\necho hi\n")
    write("classify", "p0.pkl", pickle.dumps({"a": [1, 2]}, protocol=0))
    write("classify", "p4.pkl", pickle.dumps({"a": [1, 2]}, protocol=4))
    write("classify", "png.png", b"\x89PNG\r\n\x1a\n" + bytes(24))
    write("classify", "zip.zip", dumped(lambda f: np.savez(f, a=np.zeros(2))))


def main():
    import torch
    safetensors_seeds(torch)
    numpy_seeds()
    torch_seeds(torch)
    joblib_seeds()
    mtd_seeds(torch)
    json_seeds()
    classify_seeds()


if __name__ == "__main__":
    main()
