"""joblib, scikit-learn (vetted class registry), TorchScript and the legacy tar format.

Inputs are benign files generated here (and, for the tar format and the malicious checks, corpus
files, which are only read as bytes).  Our *outputs* made from inputs generated here may be loaded
with joblib.load / pickle.load (their globals are checked statically first: numpy, joblib's
wrapper and the vetted registry classes only).  Corpus-derived outputs are only loaded with
torch.load(weights_only=True) or inspected statically.
"""
from __future__ import annotations

import json
import pickle
import pickletools
import re
import subprocess
from pathlib import Path

import pytest

from conftest import (corpus_dir, disarm, explain, load_default_output, manifest_records, require_bin,
                      run_cli)
import vocab

np = pytest.importorskip("numpy")
joblib = pytest.importorskip("joblib")
torch = pytest.importorskip("torch")

# The one globals table (src/pickle/globals.def): what the emitter may write into a plain
# pickle / joblib stream, and the built-in class registry.
GLOBALS_DEF = (Path(__file__).resolve().parents[2] / "src/pickle/globals.def").read_text()
WRITER_GLOBALS = set(re.findall(r'^MCDR_EMIT\(\w+, "([\w.]+)", "(\w+)", kEmit(?:Plain|Both),', GLOBALS_DEF, re.M))
assert len(WRITER_GLOBALS) == 6, WRITER_GLOBALS


def registry_globals():
    found = set(re.findall(r'^MCDR_CLASS(?:_TUPLE|_KNOWN)?\("([\w.]+)", "(\w+)",', GLOBALS_DEF, re.M))
    assert len(found) >= 30, found
    return found


def pickle_globals(data: bytes):
    """GLOBAL/STACK_GLOBAL names of a pickle, statically (joblib outputs: only up to the first array)."""
    out = set()
    strings = []
    try:
        for op, arg, _ in pickletools.genops(data):
            if op.name == "GLOBAL":
                m, n = arg.split(" ", 1)
                out.add((m, n))
            elif op.name == "STACK_GLOBAL":
                out.add((strings[-2], strings[-1]))
            elif isinstance(arg, str):
                strings.append(arg)
    except Exception:
        pass  # joblib: raw array bytes follow the first wrapper
    return out


def writer_globals_ok(path: Path):
    got = pickle_globals(path.read_bytes())
    bad = got - WRITER_GLOBALS - registry_globals()
    assert not bad, f"unexpected globals in our output: {bad}"


def supports_to(fmt: str) -> bool:
    rc, so, se = run_cli("disarm", "--help")
    return "--to" in so + se


def run(tmp_path, inp, *extra, expect=(0, 1), out_name="out.pt"):
    require_bin()
    out = tmp_path / out_name
    rep = tmp_path / (out_name + ".report.json")
    rc, so, se, report = disarm(inp, out, *extra, report=rep)
    assert rc in expect, explain(rc, so, se)
    return out, report


def to(tmp_path, inp, fmt, *extra):
    if not supports_to(fmt):
        pytest.skip("this modelcdr has no --to option yet")
    out, report = run(tmp_path, inp, "--to", fmt, *extra, out_name=f"out.{fmt}")
    assert out.is_file()
    writer_globals_ok(out)
    return out, report


def sample_arrays():
    rng = np.random.default_rng(0)
    return {
        "f8": rng.standard_normal((5, 3)),
        "f4": rng.standard_normal(7).astype(np.float32),
        "i8": np.arange(12, dtype=np.int64).reshape(3, 4),
        "u1": np.arange(10, dtype=np.uint8),
        "b1": np.array([True, False, True]),
        "fortran": np.asfortranarray(rng.standard_normal((4, 6))),
        "empty": np.zeros((0, 3)),
        "scalar": np.float64(2.5),
        "nested": {"list": [1, 2.5, "x"], "t": (np.arange(3, dtype=np.int32),)},
    }


def assert_same(exp, got, path="$"):
    if isinstance(exp, np.ndarray):
        got = got.numpy() if isinstance(got, torch.Tensor) else got
        assert isinstance(got, np.ndarray), f"{path}: {type(got)}"
        assert got.shape == exp.shape and got.dtype == exp.dtype, f"{path}: {got.shape} {got.dtype}"
        assert np.array_equal(got, exp), path
    elif isinstance(exp, dict):
        assert set(got) == set(exp), path
        for k in exp:
            assert_same(exp[k], got[k], f"{path}.{k}")
    elif isinstance(exp, (list, tuple)):
        assert len(got) == len(exp), path
        for i, (e, g) in enumerate(zip(exp, got)):
            assert_same(e, g, f"{path}[{i}]")
    else:
        assert exp == got, f"{path}: {exp!r} != {got!r}"


# ------------------------------------------------------------------------------------------------
# joblib containers
# ------------------------------------------------------------------------------------------------
COMPRESS = [None, ("zlib", 3), ("gzip", 3), ("bz2", 3), ("xz", 3), ("lzma", 3)]
try:
    import lz4  # noqa: F401
    COMPRESS.append(("lz4", 3))
except ImportError:
    pass


@pytest.mark.parametrize("compress", COMPRESS, ids=lambda c: c[0] if c else "raw")
def test_joblib_arrays_to_pt(tmp_path, compress):
    obj = sample_arrays()
    inp = tmp_path / "in.joblib"
    joblib.dump(obj, inp, compress=compress or 0)
    out, report = run(tmp_path, inp)
    assert report["files"][0]["format"] == "joblib", report["files"][0]
    assert vocab.check_output(out, "torch2") == []
    got = load_default_output(out)
    for k in ("f8", "f4", "i8", "u1", "b1", "fortran", "empty"):
        assert np.array_equal(got[k].numpy(), obj[k]), k
    assert got["scalar"] == 2.5
    assert np.array_equal(got["nested"]["t"][0].numpy(), obj["nested"]["t"][0])


@pytest.mark.parametrize("writer", ["pickle", "joblib"])
def test_report_counts_numpy_arrays_as_tensors(tmp_path, writer):
    """Numeric numpy arrays are written as tensors: the report counts them (it said 0 while summing
    their bytes); an object array in a pickle becomes a list and is not counted (joblib drops it)."""
    obj = sample_arrays()
    inp = tmp_path / f"in.{writer}"
    if writer == "joblib":
        joblib.dump(obj, inp)
    else:
        obj["objects"] = np.array(["a", 1], dtype=object)
        inp.write_bytes(pickle.dumps(obj, protocol=4))
    out, report = run(tmp_path, inp)
    got = load_default_output(out)
    tensors = [k for k, v in got.items() if isinstance(v, torch.Tensor)] + ["nested.t[0]"]
    if writer == "pickle":
        assert isinstance(got["objects"], list), type(got["objects"])
    stats = report["files"][0]["tensors"]
    assert stats["count"] == len(tensors) == 8, (stats, tensors)
    assert stats["dtypes"] == {"float64": 3, "float32": 1, "int64": 1, "uint8": 1, "bool": 1, "int32": 1}, stats
    want_bytes = sum(a.nbytes for k, a in obj.items() if isinstance(a, np.ndarray) and a.dtype != object) + 12
    assert stats["total_bytes"] == want_bytes, (stats, want_bytes)


@pytest.mark.parametrize("compress", [None, ("zlib", 3), ("xz", 3)], ids=lambda c: c[0] if c else "raw")
def test_joblib_arrays_to_joblib(tmp_path, compress):
    obj = sample_arrays()
    inp = tmp_path / "in.joblib"
    joblib.dump(obj, inp, compress=compress or 0)
    out, _ = to(tmp_path, inp, "joblib")
    got = joblib.load(out)  # our output, made from a benign input generated here
    exp = dict(obj, scalar=2.5)
    assert_same(exp, got)


def test_joblib_bomb_is_capped(tmp_path):
    require_bin()
    import zlib
    # 1 GiB of zeros behind a tiny zlib stream: the decompression cap must stop it.
    c = zlib.compressobj(9)
    chunk = b"\0" * (1 << 20)
    data = c.compress(b"\x80\x04") + b"".join(c.compress(chunk) for _ in range(1024)) + c.flush()
    inp = tmp_path / "bomb.joblib"
    inp.write_bytes(data)
    out, report = run(tmp_path, inp, expect=(2,))
    assert report["files"][0]["error"]["rule"] == "codec.too-large", report["files"][0]


# ------------------------------------------------------------------------------------------------
# scikit-learn through the vetted class registry
# ------------------------------------------------------------------------------------------------
def digits():
    from sklearn.datasets import load_digits
    X, y = load_digits(return_X_y=True)
    return X, y


def models():
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LinearRegression, LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.tree import DecisionTreeClassifier
    return {
        "linreg": LinearRegression(),
        "logreg": LogisticRegression(max_iter=200),
        "pipeline": Pipeline([("scale", StandardScaler()), ("clf", LogisticRegression(max_iter=200))]),
        "tree": DecisionTreeClassifier(random_state=0),
        "forest": RandomForestClassifier(n_estimators=5, random_state=0),
    }


@pytest.mark.parametrize("name", list(models()))
@pytest.mark.parametrize("writer", ["joblib", "pickle"])
def test_sklearn_roundtrip(tmp_path, name, writer):
    X, y = digits()
    model = models()[name].fit(X, y)
    inp = tmp_path / f"in.{writer}"
    if writer == "joblib":
        joblib.dump(model, inp)
    else:
        with open(inp, "wb") as f:
            pickle.dump(model, f, protocol=4)
    out, report = to(tmp_path, inp, writer)
    got = joblib.load(out) if writer == "joblib" else pickle.loads(out.read_bytes())
    assert type(got) is type(model)
    assert np.array_equal(got.predict(X), model.predict(X))


def test_policy_extends_registry(tmp_path):
    from sklearn.neighbors import NearestCentroid
    X, y = digits()
    model = NearestCentroid().fit(X, y)
    inp = tmp_path / "centroid.joblib"
    joblib.dump(model, inp)
    # not vetted: the main object would be dropped, so the file is rejected (never a None model, exit 1)
    rc, so, se = run_cli("disarm", inp, "-o", tmp_path / "out.joblib")
    assert rc == 2 and "cdr.main-object-dropped" in se and not (tmp_path / "out.joblib").exists(), explain(rc, so, se)
    policy = tmp_path / "policy.json"
    policy.write_text(json.dumps({"allow_classes": ["sklearn.neighbors._nearest_centroid.NearestCentroid"]}))
    out2, _ = run(tmp_path, inp, "--to", "joblib", "--policy", policy, out_name="out2.joblib")
    got = joblib.load(out2)
    assert np.array_equal(got.predict(X), model.predict(X))
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"allow_classes": ["os.*"]}))
    rc, so, se = run_cli("disarm", inp, "-o", tmp_path / "o3", "--policy", bad)
    assert rc == 2 and "wildcard" in se, explain(rc, so, se)


# ------------------------------------------------------------------------------------------------
# TorchScript
# ------------------------------------------------------------------------------------------------
TS_SRC = '''
import torch
class M(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.l = torch.nn.Linear(3, 2)
        self.bn = torch.nn.BatchNorm1d(2)
        self.seq = torch.nn.Sequential(torch.nn.Linear(2, 4), torch.nn.ReLU(), torch.nn.Linear(4, 1))
        self.register_buffer("buf", torch.ones(2))
    def forward(self, x):
        return self.seq(self.bn(self.l(x)) + self.buf)
'''


def test_torchscript_state_dict(tmp_path):
    require_bin()
    src = tmp_path / "tsmod.py"
    src.write_text(TS_SRC)
    import importlib.util
    spec = importlib.util.spec_from_file_location("tsmod", src)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    m = torch.jit.script(mod.M())
    m(torch.randn(4, 3))
    inp = tmp_path / "ts.pt"
    torch.jit.save(m, str(inp))
    out, report = run(tmp_path, inp, expect=(1,))
    f = report["files"][0]
    assert f["format"] == "torchscript"
    assert any(x["rule"] == "torchscript.code" for x in f["removed"])
    assert vocab.check_output(out, "torch2") == []
    names = [n for n in __import__("zipfile").ZipFile(out).namelist()]
    assert not any("code/" in n or "constants" in n for n in names), names
    got = torch.load(out, weights_only=True)
    exp = m.state_dict()
    assert list(got.keys()) == list(exp.keys())
    for k in exp:
        assert torch.equal(got[k], exp[k]), k
    arch = json.loads(Path(f["architecture"]).read_text())
    assert any(mm["class"].endswith("Linear") for mm in arch["modules"])


# ------------------------------------------------------------------------------------------------
# Legacy tar format (corpus files: bytes only; the output is loaded with weights_only=True)
# ------------------------------------------------------------------------------------------------
def test_torch_tar_corpus(tmp_path):
    files = sorted((corpus_dir() / "benign" / "pytorch-aux-reward-rl").glob("*.t7"))
    if not files:
        pytest.skip("corpus .t7 files not found")
    for i, f in enumerate(files):
        out, report = run(tmp_path, f, out_name=f"t{i}.pt")
        assert report["files"][0]["format"] == "torch-tar"
        assert vocab.check_output(out, "torch2") == []
        sd = torch.load(out, weights_only=True)
        assert len(sd) >= 4 and all(isinstance(v, torch.Tensor) for v in sd.values()), list(sd)
        assert any(k.endswith("weight") for k in sd)


# ------------------------------------------------------------------------------------------------
# Corpus: joblib / torchscript / pickle-of-sklearn files
# ------------------------------------------------------------------------------------------------
def corpus_records(formats, label):
    return [r for r in manifest_records() if r.get("format") in formats and r.get("label") == label]


@pytest.mark.parametrize("rec", corpus_records({"joblib", "torchscript"}, "malicious")
                         + [r for r in corpus_records({"pickle"}, "malicious") if "Malicious-Models" in r["path"]],
                         ids=lambda r: r["path"])
def test_corpus_malicious_disarmed(tmp_path, rec):
    require_bin()
    inp = corpus_dir() / rec["path"]
    out = tmp_path / "o.pt"
    rc, so, se, report = disarm(inp, out, report=tmp_path / "r.json")
    assert rc in (1, 2), explain(rc, so, se)
    if rc == 2:
        assert not out.exists()
        return
    assert report["files"][0]["removed"], "a malicious file was passed as clean"
    assert vocab.check_output(out, "torch2") == []
    if supports_to("pickle"):
        out2 = tmp_path / "o.pkl"
        rc2, so, se, _ = disarm(inp, out2, "--to", "pickle")
        if rc2 != 2:
            writer_globals_ok(out2)


@pytest.mark.parametrize("rec", corpus_records({"joblib", "torchscript"}, "benign"), ids=lambda r: r["path"])
def test_corpus_benign_joblib(tmp_path, rec):
    require_bin()
    inp = corpus_dir() / rec["path"]
    out = tmp_path / "o.pt"
    rc, so, se, report = disarm(inp, out, report=tmp_path / "r.json")
    if rc == 2 and "cdr.main-object-dropped" in se:
        assert not out.exists()
        return  # the model's class is outside the registry: rejected, never written as None
    assert rc in (0, 1), explain(rc, so, se)
    assert vocab.check_output(out, "torch2") == []
    load_default_output(out)
