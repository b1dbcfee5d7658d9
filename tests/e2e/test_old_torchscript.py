"""Old TorchScript archives (torch 1.0-1.3: model.json + attributes.pkl + tensors/), issue 12 item 3.

No installed torch writes this format, so the sample is built here by hand from its description
(docs/FORMATS.md §4; torch 1.0's ModelDef as JSON: tensors with decimal-string dims/strides/offset,
dataType, data.key "tensors/<n>" raw storage records; mainModule with parameters (name, tensorId,
isBuffer) and submodules). The weights come back as a state dict in a torch zip, loaded with
torch.load(weights_only=True) and compared bit for bit; the code is removed and reported.
"""
from __future__ import annotations

import json
import pickle
import zipfile

import pytest

from conftest import corpus_dir, disarm, explain, require_bin
import vocab

torch = pytest.importorskip("torch")
np = pytest.importorskip("numpy")


def tensor_desc(arr, key, offset=0, shape=None, strides=None, dtype="FLOAT"):
    shape = list(arr.shape) if shape is None else shape
    strides = [s // arr.itemsize for s in arr.strides] if strides is None else strides
    return {"dims": [str(d) for d in shape], "offset": str(offset), "strides": [str(s) for s in strides],
            "requiresGrad": True, "dataType": dtype, "data": {"key": key}, "device": "cpu"}


def make_old_archive(path):
    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 3)).astype(np.float32)
    b = rng.standard_normal(4).astype(np.float32)
    shared = rng.standard_normal(10).astype(np.float64)  # one record, two views
    steps = np.array([7], dtype=np.int64)
    tensors = [
        tensor_desc(w, "tensors/0"),
        tensor_desc(b, "tensors/1"),
        tensor_desc(shared, "tensors/2", offset=0, shape=[4], strides=[1], dtype="DOUBLE"),
        tensor_desc(shared, "tensors/2", offset=4, shape=[3, 2], strides=[2, 1], dtype="DOUBLE"),
        tensor_desc(steps, "tensors/3", dtype="INT64"),
    ]
    model = {
        "protoVersion": "6",
        "mainModule": {
            "name": "net", "optimize": True, "torchscriptArena": {"key": "code/net.py"},
            "parameters": [{"isBuffer": False, "tensorId": "0", "name": "weight"},
                           {"isBuffer": False, "tensorId": "1", "name": "bias"}],
            "submodules": [{"name": "bn", "optimize": True,
                            "parameters": [{"isBuffer": True, "tensorId": "2", "name": "running_mean"},
                                           {"isBuffer": True, "tensorId": "3", "name": "running_var"},
                                           {"isBuffer": True, "tensorId": "4", "name": "num_batches_tracked"}]}],
        },
        "producerName": "pytorch", "producerVersion": "1.1",
        "tensors": tensors,
    }
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("net/version", "1\n")
        z.writestr("net/model.json", json.dumps(model))
        z.writestr("net/code/net.py", "op_version_set = 0\ndef forward(self, x):\n  return x\n")
        z.writestr("net/attributes.pkl", pickle.dumps([], protocol=2))
        z.writestr("net/tensors/0", w.tobytes())
        z.writestr("net/tensors/1", b.tobytes(), compress_type=zipfile.ZIP_DEFLATED)
        z.writestr("net/tensors/2", shared.tobytes())
        z.writestr("net/tensors/3", steps.tobytes())
    return {
        "weight": torch.from_numpy(w), "bias": torch.from_numpy(b),
        "bn.running_mean": torch.from_numpy(shared[:4].copy()),
        "bn.running_var": torch.from_numpy(shared[4:10].reshape(3, 2).copy()),
        "bn.num_batches_tracked": torch.from_numpy(steps),
    }


def disarm_ok(tmp_path, inp):
    require_bin()
    out = tmp_path / "out.pt"
    rc, so, se, report = disarm(inp, out, report=tmp_path / "r.json")
    assert rc == 1 and out.is_file(), explain(rc, so, se)  # code removed: exit 1 by design
    assert vocab.check_output(out, "torch2") == []
    rules = [f["rule"] for f in report["files"][0]["findings"]]
    assert "torchscript.converted" in rules and "torchscript.code" in rules, rules
    return out


def test_old_torchscript_weights_become_a_state_dict(tmp_path):
    inp = tmp_path / "net.pt"
    exp = make_old_archive(inp)
    got = torch.load(disarm_ok(tmp_path, inp), weights_only=True)
    assert list(got) == list(exp)
    for k, t in exp.items():
        assert got[k].dtype == t.dtype and got[k].shape == t.shape, k
        assert got[k].contiguous().numpy().tobytes() == t.numpy().tobytes(), k
    # the two views of one record still share it
    assert got["bn.running_mean"].untyped_storage().data_ptr() == got["bn.running_var"].untyped_storage().data_ptr()


def test_old_torchscript_view_past_its_record_is_rejected(tmp_path):
    inp = tmp_path / "bad.pt"
    make_old_archive(inp)
    with zipfile.ZipFile(inp) as z:
        files = {n: z.read(n) for n in z.namelist()}
    model = json.loads(files["net/model.json"])
    model["tensors"][0]["dims"] = ["400", "3"]
    files["net/model.json"] = json.dumps(model).encode()
    bad = tmp_path / "bad2.pt"
    with zipfile.ZipFile(bad, "w") as z:
        for n, d in files.items():
            z.writestr(n, d)
    require_bin()
    rc, so, se, _ = disarm(bad, tmp_path / "o.pt", report=tmp_path / "r.json")
    assert rc == 2 and "past the end" in se and not (tmp_path / "o.pt").exists(), explain(rc, so, se)


def test_corpus_old_torchscript_mnist(tmp_path):
    """benign/Libtorch_MNIST/mnist_cnn.pt (torch 1.0): read as a zip only, never loaded by torch."""
    src = corpus_dir() / "benign/Libtorch_MNIST/mnist_cnn.pt"
    if not src.is_file():
        pytest.skip("corpus file missing")
    got = torch.load(disarm_ok(tmp_path, src), weights_only=True)
    with zipfile.ZipFile(src) as z:
        desc = json.loads(z.read("mnist_cnn/model.json"))
        records = {n: z.read(n) for n in z.namelist() if "/tensors/" in n}
    names = [f"{m['name']}.{p['name']}" for m in desc["mainModule"]["submodules"] for p in m["parameters"]]
    assert list(got) == names
    for m in desc["mainModule"]["submodules"]:
        for p in m["parameters"]:
            t = desc["tensors"][int(p["tensorId"])]
            g = got[f"{m['name']}.{p['name']}"]
            assert list(g.shape) == [int(d) for d in t["dims"]] and g.dtype == torch.float32
            assert g.contiguous().numpy().tobytes() == records["mnist_cnn/" + t["data"]["key"]]
