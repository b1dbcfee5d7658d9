"""Every benign corpus file that is model data comes back equal under torch 2.x (issue 12, Proof).

One walk over the benign records of the corpus manifest:

* each record is either compared, loaded original against loaded output, by the test named in
  ``comparing_test`` (the torch and plain-pickle files by test_corpus.py / test_torch2x_corpus.py,
  the .npy/.npz/safetensors files by test_formats_tensors.py, the old TorchScript archive by
  test_old_torchscript.py, the joblib files here), or listed in EXCEPTIONS with its reason;
* each exception's documented outcome is checked (rejected files leave no output, converted ones
  exit 1), so the list cannot go stale, and README.md lists exactly these files;
* joblib files (scikit-learn models among them) are compared here: the original is loaded with
  joblib only because the manifest labels it benign, in a subprocess (python -I) whose working
  directory is a throwaway folder; our output is loaded only after its globals were checked
  statically (writer + registry names). Estimators must give identical predictions.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap

import pytest

from conftest import HERE, binary_works, bin_path, corpus_dir, disarm, explain, manifest_records
from test_formats_objects import writer_globals_ok

BENIGN = [r for r in manifest_records() if r.get("label") == "benign"]
TORCHISH = ("pickle", "torch-zip", "torch-legacy", "torch-tar")

# path -> (outcome disarm gives it, reason); README.md's exception list names exactly these files.
NOT_MODEL = "not a model file torch, numpy or joblib can read"
EXCEPTIONS = {
    "benign/picklescan/bad_pytorch.pt": ("rejected", NOT_MODEL + " (8 bytes, no pickle)"),
    "benign/picklescan/not_a_pickle.bin": ("rejected", NOT_MODEL + " (not a pickle stream)"),
    "benign/picklescan/benign_password_protected.zip": ("rejected", NOT_MODEL + " (a zip of text files)"),
    "benign/modelscan/password_protected.zip": ("rejected", NOT_MODEL + " (a zip of text files)"),
    "benign/modelaudit/safe_model.zip": ("rejected", NOT_MODEL + " (a zip of text files)"),
    "benign/modelaudit/safe_model.h5": ("rejected", NOT_MODEL + " (Keras HDF5)"),
    "benign/modelaudit/safe_model.pt": ("rejected", "a zip with version/data.pkl outside any folder, a layout "
                                                    "torch neither writes nor reads"),
    "benign/modelaudit/agpl_model.pkl": ("rejected", "its main object is a project's own class "
                                                     "(__main__.AGPLNeuralNetwork): user code, not model data"),
    "benign/picklescan/object_array.npy": ("rejected", "a numpy object array is a pickle; an .npy output "
                                                       "holds no pickle (np.load refuses it without allow_pickle)"),
    "benign/picklescan/object_arrays.npz": ("rejected", "object arrays only: nothing an .npz output can hold"),
    "benign/picklescan/object_arrays_compressed.npz": ("rejected", "object arrays only: nothing an .npz output "
                                                                   "can hold"),
    "benign/joblib/joblib_0.9.2_pickle_py35_np19.pkl_03.npy": ("rejected", "an object array (a side file of "
                                                                           "joblib 0.9)"),
    "benign/joblib/joblib_0.9.2_pickle_py27_np16.pkl": ("converted", "joblib 0.9 keeps its arrays in side "
                                                                     "files (NDArrayWrapper): they become None"),
    "benign/joblib/joblib_0.9.2_pickle_py35_np19.pkl": ("converted", "joblib 0.9 keeps its arrays in side "
                                                                     "files (NDArrayWrapper): they become None"),
    "benign/joblib/joblib_0.10.0_pickle_py27_np17.pkl": ("converted", "a Python 2 joblib pickle: joblib "
                                                                      "under Python 3 refuses to load it, so "
                                                                      "no reference loader exists"),
    "benign/joblib/joblib_0.8.4_compressed_pickle_py27_np17.gz": ("converted", "a Python 2 joblib pickle: no "
                                                                               "reference loader exists"),
    "benign/joblib/joblib_0.12.2_pickle_py36_np114.pkl.lz4": ("converted", "joblib reads lz4 only with the lz4 "
                                                                           "package, which the test environment "
                                                                           "does not install: no reference loader"),
    "benign/aegnn/last.ckpt": ("converted", "Lightning < 1.5 callback state keyed by callback classes: the keys "
                                           "become the classes' dotted names; the classes make torch's "
                                           "weights_only loader refuse the original, so no reference exists"),
    "benign/torch2x/torch2_whole_module.pt": ("converted", "a whole nn.Module becomes its state dict (no "
                                                           "_metadata); tensors compared by test_torch2x_corpus.py::"
                                                           "test_torch2x_whole_module_tensors"),
    "benign/pytorch-aux-reward-rl/ddpg_actor.t7": ("converted", "pre-0.1.10 tar format: torch 2.x's "
                                                                "weights_only loader refuses it, so no safe "
                                                                "reference exists; module source code dropped"),
    "benign/pytorch-aux-reward-rl/model.t7": ("converted", "pre-0.1.10 tar format: torch 2.x's weights_only "
                                                           "loader refuses it, so no safe reference exists; "
                                                           "module source code dropped"),
    "benign/modelaudit/simple_nested.pkl": ("converted", "its nested pickle is rebuilt by our writer (other "
                                                         "bytes, same content) and flagged"),
}


def comparing_test(rec) -> str:
    """The test that compares this record's loaded original and loaded output."""
    fmt, path = rec["format"], rec["path"]
    if path.startswith("benign/torch2x/"):
        return "test_torch2x_corpus.py::test_torch2x_content_equal"
    if fmt in TORCHISH:
        return "test_corpus.py::test_benign_content_equal"
    if fmt in ("npy", "npz", "safetensors"):
        return "test_formats_tensors.py::test_corpus_benign"
    if fmt == "joblib":
        return "test_corpus_fidelity.py::test_joblib_corpus_file_loads_equal"
    if fmt == "torchscript":
        return "test_old_torchscript.py::test_corpus_old_torchscript_mnist"
    return ""


def params(records):
    if not records:
        return [pytest.param(None, marks=pytest.mark.skip(reason=f"corpus not found at {corpus_dir()}"))]
    return [pytest.param(r, id=r["path"]) for r in records]


def test_every_benign_file_is_compared_or_an_exception():
    if not BENIGN:
        pytest.skip(f"corpus not found at {corpus_dir()}")
    paths = {r["path"] for r in BENIGN}
    assert set(EXCEPTIONS) <= paths, sorted(set(EXCEPTIONS) - paths)
    unplaced = [r["path"] for r in BENIGN if r["path"] not in EXCEPTIONS and not comparing_test(r)]
    assert unplaced == [], unplaced


def test_readme_lists_exactly_the_exceptions():
    readme = (HERE.parent.parent / "README.md").read_text()
    section = readme.split("- benign corpus files that are not compared equal", 1)[1].split("\n- ", 1)[0]
    listed = set(re.findall(r"`(benign/[^`]+)`", section))
    assert listed == set(EXCEPTIONS), {"README only": sorted(listed - set(EXCEPTIONS)),
                                       "test only": sorted(set(EXCEPTIONS) - listed)}


@pytest.mark.parametrize("rec", params([r for r in BENIGN if r["path"] in EXCEPTIONS]))
def test_exception_outcome_is_as_documented(tmp_path, rec):
    if not binary_works():
        pytest.skip(f"modelcdr binary not found at {bin_path()}")
    outcome, reason = EXCEPTIONS[rec["path"]]
    suffix = {"joblib": "joblib", "npy": "npy", "npz": "npz"}.get(rec["format"], "pt")
    out = tmp_path / f"out.{suffix}"
    extra = ("--to", "joblib") if rec["format"] == "joblib" else ()
    rc, so, se, _ = disarm(corpus_dir() / rec["path"], out, *extra, report=tmp_path / "r.json")
    if outcome == "rejected":
        assert rc == 2 and not out.exists(), f"{reason}\n" + explain(rc, so, se)
    else:
        assert rc == 1 and out.is_file(), f"{reason}\n" + explain(rc, so, se)


# --------------------------------------------------------------------------------------------------
# joblib files: loaded original (benign per manifest, throwaway cwd) vs loaded output
# --------------------------------------------------------------------------------------------------
JOBLIB_CMP = textwrap.dedent(r'''
import json, os, sys, warnings
warnings.simplefilter("ignore")
import joblib
import numpy as np

src, out = sys.argv[1], sys.argv[2]
os.chdir(sys.argv[3])  # a throwaway folder
exp, got = joblib.load(src), joblib.load(out)
diffs = []

def inputs_for(est):
    n = getattr(est, "n_features_in_", None)
    if not isinstance(n, int):
        return None
    return np.random.default_rng(0).normal(5.0, 2.0, size=(32, n))

def cmp(e, g, path):
    if isinstance(e, np.matrix):  # an ndarray subclass: written as a plain ndarray (README)
        e = np.asarray(e)
    if isinstance(e, np.generic) and not isinstance(g, np.generic):  # numpy scalar -> Python number
        if e.item() != g:
            diffs.append(f"{path}: {e!r} != {g!r}")
        return
    if type(e) is not type(g):
        diffs.append(f"{path}: {type(g).__name__} != {type(e).__name__}")
        return
    if isinstance(e, np.ndarray):
        if e.dtype != g.dtype or e.shape != g.shape:
            diffs.append(f"{path}: {g.dtype}{g.shape} != {e.dtype}{e.shape}")
        elif e.dtype == object:
            for i, (a, b) in enumerate(zip(e.ravel(), g.ravel())):
                cmp(a, b, f"{path}.flat[{i}]")
        elif e.dtype.names:  # records: compared field by field (padding bytes are not data)
            for name in e.dtype.names:
                if e[name].tobytes() != g[name].tobytes():
                    diffs.append(f"{path}[{name!r}]: field bytes differ")
        elif e.tobytes() != g.tobytes():
            diffs.append(f"{path}: array bytes differ")
    elif isinstance(e, dict):
        if list(e) != list(g):
            diffs.append(f"{path}: keys {list(g)} != {list(e)}")
        for k in e:
            if k in g:
                cmp(e[k], g[k], f"{path}[{k!r}]")
    elif isinstance(e, (list, tuple)):
        if len(e) != len(g):
            diffs.append(f"{path}: length {len(g)} != {len(e)}")
        for i, (a, b) in enumerate(zip(e, g)):
            cmp(a, b, f"{path}[{i}]")
    elif hasattr(e, "get_params") and hasattr(e, "__dict__"):  # a scikit-learn estimator
        cmp(vars(e), vars(g), path + ".__dict__")
        X = inputs_for(e)
        for m in ("predict", "predict_proba", "transform", "decision_function"):
            if X is not None and hasattr(e, m):
                try:
                    want = getattr(e, m)(X)
                except Exception:
                    continue
                if not np.array_equal(np.asarray(want), np.asarray(getattr(g, m)(X))):
                    diffs.append(f"{path}.{m}(X) differs")
    elif type(e).__module__.split(".")[0] == "sklearn" and hasattr(e, "__getstate__"):
        cmp(e.__getstate__(), g.__getstate__(), path + ".__getstate__()")  # Cython: Tree, KDTree, metrics
    elif e != g and not (isinstance(e, float) and e != e and g != g):
        diffs.append(f"{path}: {g!r} != {e!r}")

cmp(exp, got, "$")
print("@@RESULT@@" + json.dumps({"type": type(exp).__name__, "diffs": diffs[:40]}))
''')


@pytest.mark.parametrize("rec", params([r for r in BENIGN if r["format"] == "joblib" and r["path"] not in EXCEPTIONS]))
def test_joblib_corpus_file_loads_equal(tmp_path, rec):
    pytest.importorskip("joblib")
    pytest.importorskip("sklearn")
    if not binary_works():
        pytest.skip(f"modelcdr binary not found at {bin_path()}")
    src = corpus_dir() / rec["path"]
    out = tmp_path / "out.joblib"
    rc, so, se, report = disarm(src, out, "--to", "joblib", report=tmp_path / "r.json")
    assert rc in (0, 1) and out.is_file(), explain(rc, so, se)
    writer_globals_ok(out)  # before anything loads it
    # documented conversions only: numpy scalars become Python numbers, a numpy.matrix a plain ndarray
    removed = [f for f in report["files"][0]["removed"] if f["rule"] != "cdr.converted"]
    assert removed == [], "\n".join(f["message"] for f in removed)
    work = tmp_path / "cwd"
    work.mkdir()
    script = tmp_path / "cmp.py"
    script.write_text(JOBLIB_CMP)
    p = subprocess.run([sys.executable, "-I", str(script), str(src), str(out), str(work)], capture_output=True,
                       text=True, timeout=300, cwd=str(work))
    assert "@@RESULT@@" in p.stdout, p.stdout[-2000:] + p.stderr[-3000:]
    res = json.loads(p.stdout.split("@@RESULT@@", 1)[1])
    assert res["diffs"] == [], "\n".join(res["diffs"])
    assert sorted(x.name for x in work.iterdir()) == [], "loading wrote into the throwaway folder"
