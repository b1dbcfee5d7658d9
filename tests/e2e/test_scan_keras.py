"""Keras models in scan (issue 11 item 2; src/cdr/scan_keras.hpp): an HDF5 `.h5` or a Keras v3
`.keras` zip is never `clean` (keras.not-disarmable, `unknown`); a Lambda layer (Python code Keras
runs) is `dangerous`; a class imported from outside Keras is keras.custom-object. Every HDF5 file
is written here by h5py (real libhdf5 layouts: fixed-length and variable-length string attributes,
dense attribute storage, a user block); nothing is loaded with Keras."""
from __future__ import annotations

import json
import zipfile

import pytest

from conftest import corpus_dir, explain, require_bin, run_cli

h5py = pytest.importorskip("h5py")  # pinned in tests/requirements.txt
np = pytest.importorskip("numpy")

LAMBDA = {"class_name": "Sequential", "config": {"name": "m", "layers": [
    {"class_name": "Lambda", "config": {"name": "l", "function": "lambda x: eval('print(1)')"}}]}}
DENSE = {"class_name": "Sequential", "config": {"name": "m", "layers": [
    {"class_name": "Dense", "config": {"units": 10}}]}}


@pytest.fixture(autouse=True)
def _needs_bin():
    require_bin()


def scan(path, *extra):
    rc, so, se = run_cli("scan", "--json", *extra, path)
    assert so, explain(rc, so, se)
    return rc, json.loads(so)["files"][0]


def rules(e):
    return {x["rule"] for x in e["findings"]}


def h5(tmp_path, name, config=None, fixed=False, userblock=0, weights=True):
    p = tmp_path / name
    with h5py.File(p, "w", userblock_size=userblock) as f:
        if config is not None:
            text = config if isinstance(config, str) else json.dumps(config)
            # h5py writes str as a variable-length string (global heap), np.bytes_ fixed-length
            f.attrs["model_config"] = np.bytes_(text.encode()) if fixed else text
            f.attrs["keras_version"] = "2.15.0"
        if weights:
            f.create_dataset("model_weights/dense/kernel", data=np.arange(40, dtype="f4").reshape(4, 10))
    return p


@pytest.mark.parametrize("fixed", [False, True], ids=["vlen-string", "fixed-string"])
def test_hdf5_lambda_is_dangerous_with_its_function(tmp_path, fixed):
    rc, e = scan(h5(tmp_path, "m.h5", LAMBDA, fixed=fixed))
    assert rc == 1 and e["verdict"] == "dangerous" and e["format"] == "hdf5", e
    lam = [x for x in e["findings"] if x["rule"] == "keras.lambda"]
    assert len(lam) == 1 and "eval('print(1)')" in lam[0]["message"], e["findings"]


def test_hdf5_plain_keras_model_is_unknown_never_clean(tmp_path):
    p = h5(tmp_path, "m.h5", DENSE)
    rc, e = scan(p)
    assert rc == 1 and e["verdict"] == "unknown" and e["status"] == "findings", e
    assert rules(e) == {"keras.not-disarmable"}, e["findings"]
    rc, e = scan(p, "--fail-on", "dangerous")
    assert rc == 0 and e["verdict"] == "unknown", e


def test_hdf5_escaped_lambda_name_is_still_found(tmp_path):
    # json.loads (what Keras uses) reads "Lam\u0062da" as "Lambda": a byte search would miss it
    text = json.dumps(LAMBDA).replace('"Lambda"', '"Lam\\u0062da"')
    rc, e = scan(h5(tmp_path, "m.h5", text))
    assert e["verdict"] == "dangerous" and "keras.lambda" in rules(e), e


def test_hdf5_dense_attribute_storage_and_user_block(tmp_path):
    # a config over 64 KiB goes to dense attribute storage (a fractal heap); a 512-byte user block
    # moves the HDF5 signature off offset 0
    big = json.loads(json.dumps(LAMBDA))
    big["config"]["layers"] = [{"class_name": "Dense", "config": {"units": i, "pad": "x" * 100}} for i in range(800)] + \
        big["config"]["layers"]
    p = tmp_path / "big.h5"
    with h5py.File(p, "w", userblock_size=512) as f:
        f.attrs["model_config"] = json.dumps(big)
    assert p.read_bytes()[512:516] == b"\x89HDF"
    rc, e = scan(p)
    assert e["verdict"] == "dangerous" and "keras.lambda" in rules(e), e


def test_hdf5_weights_only_file_is_unknown_with_reason(tmp_path):
    rc, e = scan(h5(tmp_path, "w.h5", None))
    assert rc == 1 and e["verdict"] == "unknown", e
    assert {"keras.not-disarmable", "keras.config-unreadable"} <= rules(e), e["findings"]


def test_hdf5_is_never_disarmed(tmp_path):
    p = h5(tmp_path, "m.h5", DENSE)
    rc, so, se = run_cli("disarm", p, "-o", tmp_path / "out.pt")
    assert rc != 0 and not (tmp_path / "out.pt").exists(), explain(rc, so, se)


def keras_zip(tmp_path, config, name="m.keras"):
    p = tmp_path / name
    with zipfile.ZipFile(p, "w") as z:
        z.writestr("metadata.json", json.dumps({"keras_version": "3.3.3"}))
        z.writestr("config.json", json.dumps(config))
        z.writestr("model.weights.h5", b"\x89HDF\r\n\x1a\n" + bytes(64))
    return p


def test_keras_zip_lambda_is_dangerous(tmp_path):
    rc, e = scan(keras_zip(tmp_path, LAMBDA))
    assert rc == 1 and e["verdict"] == "dangerous" and e["format"] == "keras", e
    lam = [x for x in e["findings"] if x["rule"] == "keras.lambda"]
    assert lam and lam[0]["entry"] == "config.json", e["findings"]


def test_keras_zip_project_class_is_unknown_and_os_function_is_dangerous(tmp_path):
    project = {"module": "malicious_model", "class_name": "MaliciousModel", "config": {},
               "registered_name": "Custom>MaliciousModel"}
    rc, e = scan(keras_zip(tmp_path, project, "p.keras"))
    assert rc == 1 and e["verdict"] == "unknown" and "keras.custom-object" in rules(e), e
    assert any("malicious_model.MaliciousModel" in x["message"] for x in e["findings"]), e["findings"]
    system = {"module": "keras.layers", "class_name": "Dense", "config": {"activation": {
        "module": "os", "class_name": "function", "config": "system", "registered_name": "function"}}}
    rc, e = scan(keras_zip(tmp_path, system, "s.keras"))
    assert e["verdict"] == "dangerous" and "keras.custom-object" in rules(e), e
    plain = {"module": "keras.layers", "class_name": "Dense", "config": {"units": 1}, "registered_name": None}
    rc, e = scan(keras_zip(tmp_path, plain, "d.keras"))
    assert e["verdict"] == "unknown" and rules(e) == {"keras.not-disarmable"}, e


@pytest.mark.parametrize("path,verdict", [
    ("malicious/modelaudit/malicious_lambda.h5", "dangerous"),
    ("malicious/Malicious-Models/malicious_model.h5", "unknown"),
    ("malicious/Malicious-Models/malicious_model.keras", "unknown"),
    ("benign/modelaudit/safe_model.h5", "unknown"),
])
def test_corpus_keras_files(path, verdict):
    p = corpus_dir() / path
    if not p.is_file():
        pytest.skip(f"corpus file {p} not found")
    rc, e = scan(p)
    assert rc == 1 and e["verdict"] == verdict and "keras.not-disarmable" in rules(e), e
