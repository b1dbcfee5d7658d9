"""Real library round trips: transformers (tiny GPT-2 / BERT from configs, random weights),
huggingface_hub's cache layout, scikit-learn, and modelcdr from several threads."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from conftest import modelcdr, modelcdr_command, strict_diff


def tiny_models():
    transformers = pytest.importorskip("transformers")
    gpt2 = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=2, n_head=2, n_embd=32, vocab_size=100,
                                                                n_positions=64))
    bert = transformers.BertModel(transformers.BertConfig(num_hidden_layers=2, num_attention_heads=2, hidden_size=32,
                                                          intermediate_size=64, vocab_size=100,
                                                          max_position_embeddings=64))
    return {"gpt2": gpt2, "bert": bert}


def save_bin(model, folder, torch):
    """save_pretrained(safe_serialization=False): transformers 5 writes only safetensors, so the
    weights go to pytorch_model.bin with torch.save, as transformers 4 wrote them (tied weights
    stay one tensor under two names); from_pretrained still reads that file."""
    model.save_pretrained(folder)
    for f in Path(folder).glob("*.safetensors"):
        f.unlink()
    torch.save(model.state_dict(), Path(folder) / "pytorch_model.bin")


def logits(model, torch):
    model.eval()
    ids = torch.arange(10).reshape(1, 10) % 100
    with torch.no_grad():
        out = model(input_ids=ids)
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


def cli(*args):
    return subprocess.run([modelcdr_command(), *map(str, args)], capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("name", ["gpt2", "bert"])
def test_transformers_disarmed_folder_bit_identical(tmp_path, torch, name):
    torch.manual_seed(0)
    model = tiny_models()[name]
    src, out = tmp_path / "src", tmp_path / "out"
    save_bin(model, src, torch)
    r = cli("disarm", src, "-o", out, "--copy-other")  # config.json is copied, weights rebuilt
    assert r.returncode == 0, r.stderr
    assert (out / "pytorch_model.bin").read_bytes() != (src / "pytorch_model.bin").read_bytes()
    again = type(model).from_pretrained(out)
    assert torch.equal(logits(model, torch), logits(again, torch))


@pytest.mark.parametrize("name", ["gpt2", "bert"])
def test_transformers_through_guard(tmp_path, torch, name):
    torch.manual_seed(0)
    model = tiny_models()[name]
    src = tmp_path / "src"
    save_bin(model, src, torch)
    calls = []
    real = modelcdr._loader.load

    def counting(*a, **k):
        calls.append(a[0])
        return real(*a, **k)

    import modelcdr._guard as g
    original = torch.load
    try:
        modelcdr._loader.load = counting
        with modelcdr.guard():
            again = type(model).from_pretrained(src)
    finally:
        modelcdr._loader.load = real
    assert torch.load is original
    assert calls, "from_pretrained did not go through modelcdr.load"
    assert torch.equal(logits(model, torch), logits(again, torch))


def test_hf_hub_cache_layout(tmp_path, torch):
    """huggingface_hub's cache: snapshots/<rev>/ holds relative symlinks into blobs/. A snapshot
    file is an input like any other (load, scan, disarm follow the link to its blob), and
    from_pretrained(<snapshot>) under guard() loads through modelcdr."""
    torch.manual_seed(0)
    model = tiny_models()["gpt2"]
    saved = tmp_path / "saved"
    save_bin(model, saved, torch)
    repo = tmp_path / "hub" / "models--org--tiny-gpt2"
    snap = repo / "snapshots" / "0123456789abcdef"
    (repo / "blobs").mkdir(parents=True)
    snap.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123456789abcdef")
    for f in saved.iterdir():
        blob = repo / "blobs" / f"blob-{f.name}"
        shutil.copy(f, blob)
        os.symlink(os.path.relpath(blob, snap), snap / f.name)
    weights = snap / "pytorch_model.bin"
    assert weights.is_symlink()
    got = modelcdr.load(weights)
    ref = torch.load(saved / "pytorch_model.bin", weights_only=True)
    assert list(got) == list(ref) and all(torch.equal(got[k], ref[k]) for k in ref)
    assert modelcdr.scan(weights).status == "clean"
    out = tmp_path / "out"
    shutil.copytree(saved, out, ignore=shutil.ignore_patterns("*.bin"))
    modelcdr.disarm(weights, out / "pytorch_model.bin")
    with modelcdr.guard():
        from_snapshot = type(model).from_pretrained(snap)
    assert torch.equal(logits(model, torch), logits(from_snapshot, torch))
    assert torch.equal(logits(model, torch), logits(type(model).from_pretrained(out), torch))


def test_sklearn_pipeline_roundtrip(tmp_path):
    np = pytest.importorskip("numpy")
    joblib = pytest.importorskip("joblib")
    pytest.importorskip("sklearn")
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 4))
    y = (X[:, 0] + X[:, 1] > 0).astype(int)
    pipe = make_pipeline(StandardScaler(), LogisticRegression()).fit(X, y)
    path = tmp_path / "pipe.joblib"
    joblib.dump(pipe, path)
    got = modelcdr.load(path)
    assert type(got) is type(pipe)
    assert (got.predict(X) == pipe.predict(X)).all()
    assert np.array_equal(got.predict_proba(X), pipe.predict_proba(X))


def test_threads(tmp_path, torch):
    """Several threads load and disarm at once (the engine runs without the GIL)."""
    paths = []
    for i in range(4):
        p = tmp_path / f"m{i}.pt"
        torch.save({"w": torch.full((1000,), float(i))}, p)
        paths.append(p)
    errors = []

    def work(i):
        try:
            for _ in range(5):
                got = modelcdr.load(paths[i])
                assert float(got["w"][0]) == float(i)
                assert modelcdr.disarm(paths[i]) == modelcdr.disarm(paths[i])
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    ts = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert errors == []
