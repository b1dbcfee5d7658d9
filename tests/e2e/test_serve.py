"""`modelcdr serve` over a local store (docs/SERVE.md): real huggingface_hub and transformers clients
with HF_ENDPOINT at a gateway started by the test, on a tiny model made by the test."""
from __future__ import annotations

import json
import pickle
import re
import sys
from pathlib import Path

import pytest

from conftest import require_bin
from serve_util import Fire, Gateway, http, make_tiny_bert, run_client
import vocab

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("huggingface_hub")



@pytest.fixture(scope="module")
def store(tmp_path_factory):
    require_bin()
    root = tmp_path_factory.mktemp("serve")
    s = root / "store"
    make_tiny_bert(s / "acme" / "tiny-bert")
    make_tiny_bert(s / "acme" / "tiny-bert-bin", bin_weights=True, seed=1)
    # A checkpoint whose state dict also carries a call of os.system: it must come out rebuilt, without it.
    evil = s / "acme" / "payload"
    evil.mkdir(parents=True)
    sd = {"w": torch.arange(6, dtype=torch.float32).reshape(2, 3), "hook": Fire(root / "FIRED")}
    torch.save(sd, evil / "pytorch_model.bin")
    # Files that are not proven inert, and a pickle whose only object is the call: refused.
    (evil / "run.sh").write_text("#!/bin/sh\necho hi\n")
    (evil / "blob.dat").write_bytes(b"\x00\x01\x02\xff" * 64)
    (evil / "model.pkl").write_bytes(pickle.dumps(Fire(root / "FIRED"), protocol=2))
    (evil / "config.json").write_text('{"a": 1}')
    return root


@pytest.fixture(scope="module")
def gateway(store):
    g = Gateway("--store", store / "store", "--cache", store / "cache")
    yield g
    g.stop()


def test_serve_snapshot_and_automodel_tensors_bit_identical(gateway, store, tmp_path):
    res = run_client(f"""
        import json, torch, transformers
        from huggingface_hub import snapshot_download, hf_hub_download
        out = {{}}
        for repo in ("acme/tiny-bert", "acme/tiny-bert-bin"):
            snap = snapshot_download(repo)
            local = transformers.AutoModel.from_pretrained({str(store / 'store')!r} + "/" + repo)
            remote = transformers.AutoModel.from_pretrained(repo)
            a, b = local.state_dict(), remote.state_dict()
            bad = [k for k in a if k not in b or a[k].dtype != b[k].dtype or not torch.equal(a[k], b[k])]
            bits = all(a[k].numpy().tobytes() == b[k].numpy().tobytes() for k in a if k in b)
            import os
            out[repo] = {{"keys": len(a), "bad": bad, "bits": bits, "files": sorted(os.listdir(snap))}}
        print("@@" + json.dumps(out))
    """, gateway.url, tmp_path / "hf")
    for repo, r in res.items():
        assert r["keys"] > 5 and r["bad"] == [] and r["bits"], (repo, r)
    assert "model.safetensors" in res["acme/tiny-bert"]["files"]
    assert "pytorch_model.bin" in res["acme/tiny-bert-bin"]["files"]
    assert "config.json" in res["acme/tiny-bert-bin"]["files"]


def test_serve_payload_checkpoint_downloads_as_clean_rebuild(gateway, store, tmp_path):
    from test_corpus import run_tripwire

    res = run_client("""
        import json
        from huggingface_hub import hf_hub_download
        print("@@" + json.dumps(hf_hub_download("acme/payload", "pytorch_model.bin")))
    """, gateway.url, tmp_path / "hf")
    path = Path(res)
    original = (store / "store" / "acme" / "payload" / "pytorch_model.bin").read_bytes()
    assert path.read_bytes() != original
    assert vocab.check_output(path) == []
    trip = run_tripwire([str(path)], tmp_path / "trip")[str(path)]
    assert trip["events"] == [] and trip["error"] is None and not trip["cwd_changed"], trip
    assert not (store / "FIRED").exists()
    loaded = torch.load(path, weights_only=True)
    assert torch.equal(loaded["w"], torch.arange(6, dtype=torch.float32).reshape(2, 3))
    assert loaded.get("hook") is None
    st, h, _ = http("HEAD", f"{gateway.url}/acme/payload/resolve/main/pytorch_model.bin")
    assert st == 200 and h["X-Modelcdr-Verdict"] == "removed"
    st, _, body = http("GET", gateway.url + h["X-Modelcdr-Report"])
    rep = json.loads(body)
    assert st == 200 and rep["files"][0]["status"] == "removed"
    # the removed call is one item (its cdr.dropped folded into it, as scan reports it)
    assert any(r["rule"] == "pickle.call" and "removed by disarm" in r["message"] for r in rep["files"][0]["removed"]), rep


@pytest.mark.parametrize("name,code", [("run.sh", "copy.not-inert"), ("blob.dat", "copy.not-inert"),
                                       ("model.pkl", None)])
def test_serve_refused_file_makes_client_raise_with_reason(gateway, tmp_path, name, code):
    res = run_client(f"""
        import json
        from huggingface_hub import hf_hub_download
        try:
            hf_hub_download("acme/payload", {name!r})
            print("@@" + json.dumps({{"raised": None}}))
        except Exception as e:
            # what the traceback shows: the error and the causes chained behind it
            chain, x = [], e
            while x is not None:
                chain.append(type(x).__name__ + ": " + str(x))
                x = x.__cause__
            print("@@" + json.dumps({{"raised": type(e).__name__, "text": " | ".join(chain)}}))
    """, gateway.url, tmp_path / "hf")
    assert res["raised"], res
    assert "refused by modelcdr" in res["text"], res
    st, h, body = http("GET", f"{gateway.url}/acme/payload/resolve/main/{name}")
    assert st == 403 and h["X-Error-Message"] in res["text"], (h, res)
    if code:
        assert h["X-Error-Code"] == code
    assert json.loads(body)["code"] == h["X-Error-Code"]


def test_serve_inert_file_served_as_is(gateway, store):
    st, h, body = http("GET", f"{gateway.url}/acme/payload/resolve/main/config.json")
    assert st == 200 and body == b'{"a": 1}' and h["X-Modelcdr-Verdict"] == "inert"


def test_serve_hub_api_headers_and_ranges(gateway, store):
    st, _, body = http("GET", f"{gateway.url}/api/models/acme/tiny-bert")
    info = json.loads(body)
    assert st == 200 and re.fullmatch(r"[0-9a-f]{40}", info["sha"])
    assert {s["rfilename"] for s in info["siblings"]} == {"config.json", "model.safetensors"}
    st, _, body = http("GET", f"{gateway.url}/api/models/acme/tiny-bert/revision/{info['sha']}")
    assert st == 200 and json.loads(body)["sha"] == info["sha"]
    st, _, body = http("GET", f"{gateway.url}/api/models/acme/tiny-bert/tree/main?recursive=true")
    assert st == 200 and sorted(e["path"] for e in json.loads(body)) == ["config.json", "model.safetensors"]
    assert not any(k in body.decode() for k in ("xet", "lfs")), body

    url = f"{gateway.url}/acme/tiny-bert/resolve/main/model.safetensors"
    st, head, _ = http("HEAD", url)
    st2, get, data = http("GET", url)
    assert st == st2 == 200 and head["X-Repo-Commit"] == info["sha"]
    assert head["ETag"] == get["ETag"] and int(head["Content-Length"]) == len(data)
    import hashlib
    assert head["ETag"] == '"' + hashlib.sha256(data).hexdigest() + '"'
    st, h, part = http("GET", url, {"Range": "bytes=3-10"})
    assert st == 206 and part == data[3:11] and h["Content-Range"] == f"bytes 3-10/{len(data)}"
    st, h, part = http("GET", url, {"Range": f"bytes={len(data) - 4}-{len(data) + 100}"})
    assert st == 206 and part == data[-4:]
    st, h, part = http("GET", url, {"Range": "bytes=-5"})
    assert st == 206 and part == data[-5:]
    for bad in (f"bytes={len(data)}-", f"bytes={len(data) + 10}-{len(data) + 20}"):
        st, h, _ = http("GET", url, {"Range": bad})
        assert st == 416 and h["Content-Range"] == f"bytes */{len(data)}" and h["X-Error-Code"] == "RangeNotSatisfiable", bad
    for bad in ("bytes=9-3", "lines=1-2", "bytes=1-2,5-6"):  # malformed, or several ranges
        st, h, _ = http("GET", url, {"Range": bad})
        assert st == 416 and h["X-Error-Code"] == "RangeNotSatisfiable", (bad, h)

    for path, code in (("/acme/tiny-bert/resolve/main/nope.bin", "EntryNotFound"),
                       ("/acme/nope/resolve/main/config.json", "RepoNotFound"),
                       ("/acme/tiny-bert/resolve/v9/config.json", "RevisionNotFound"),
                       ("/api/models/acme/nope", "RepoNotFound")):
        st, h, _ = http("GET", gateway.url + path)
        assert st == 404 and h["X-Error-Code"] == code, (path, st, h)


def test_serve_cache_entry_built_once_and_reused(gateway, store):
    objects = store / "cache" / "objects"
    http("GET", f"{gateway.url}/acme/tiny-bert-bin/resolve/main/pytorch_model.bin")
    before = {p.name: p.stat().st_mtime_ns for p in objects.iterdir()}
    st, _, a = http("GET", f"{gateway.url}/acme/tiny-bert-bin/resolve/main/pytorch_model.bin")
    st2, _, b = http("GET", f"{gateway.url}/acme/tiny-bert-bin/resolve/main/pytorch_model.bin")
    assert st == st2 == 200 and a == b
    assert {p.name: p.stat().st_mtime_ns for p in objects.iterdir()} == before
    assert list((store / "cache" / "tmp").iterdir()) == []
