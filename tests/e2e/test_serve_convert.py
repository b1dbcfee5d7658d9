"""`modelcdr serve` conversions (docs/SERVE.md): `--convert-bin safetensors` serves a store's `.bin`
weights as safetensors under the converted names, with the shard index rewritten, and
`?format=safetensors` converts one file on request. Real transformers and huggingface_hub clients
with HF_ENDPOINT at a gateway started by the test, on tiny models the test makes."""
from __future__ import annotations

import hashlib
import json
import struct

import pytest

from conftest import require_bin
from serve_util import Gateway, http, make_tiny_bert, run_client

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("huggingface_hub")
safetensors_torch = pytest.importorskip("safetensors.torch")


def shard_bin_repo(repo, sd):
    """Splits `sd` into two torch.save shards with a pytorch_model.bin.index.json, as transformers 4 wrote them."""
    keys = sorted(sd)
    names = ["pytorch_model-00001-of-00002.bin", "pytorch_model-00002-of-00002.bin"]
    halves = [keys[: len(keys) // 2], keys[len(keys) // 2:]]
    weight_map = {}
    for name, part in zip(names, halves):
        torch.save({k: sd[k] for k in part}, repo / name)
        weight_map.update({k: name for k in part})
    (repo / "pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {"total_size": 1}, "weight_map": weight_map}))


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    require_bin()
    root = tmp_path_factory.mktemp("serve-convert")
    s = root / "store"
    sds = {"acme/single": make_tiny_bert(s / "acme" / "single", bin_weights=True, seed=2)}
    sharded = s / "acme" / "sharded"
    sds["acme/sharded"] = make_tiny_bert(sharded, bin_weights=True, seed=3)
    (sharded / "pytorch_model.bin").unlink()
    shard_bin_repo(sharded, sds["acme/sharded"])
    # A value safetensors cannot hold (bytes): the conversion is refused, not served short.
    odd = s / "acme" / "odd"
    odd.mkdir(parents=True)
    torch.save({"w": torch.ones(2, 3), "blob": b"\x00raw"}, odd / "pytorch_model.bin")
    # A repository that ships both: the original safetensors keeps its name.
    make_tiny_bert(s / "acme" / "both", seed=4)
    torch.save({"other": torch.zeros(3)}, s / "acme" / "both" / "pytorch_model.bin")
    conv = Gateway("--store", s, "--cache", root / "cache-conv", "--convert-bin", "safetensors")
    plain = Gateway("--store", s, "--cache", root / "cache-plain")
    yield {"root": root, "store": s, "sds": sds, "conv": conv, "plain": plain}
    conv.stop()
    plain.stop()


def st_header(data: bytes) -> dict:
    n = struct.unpack("<Q", data[:8])[0]
    return json.loads(data[8:8 + n])


def test_serve_convert_bin_automodel_loads_safetensors_bit_identical(site, tmp_path):
    res = run_client("""
        import json, os, torch, transformers
        from huggingface_hub import snapshot_download
        out = {}
        for repo in ("acme/single", "acme/sharded"):
            snap = snapshot_download(repo)
            m = transformers.AutoModel.from_pretrained(repo)
            sd = m.state_dict()
            out[repo] = {"files": sorted(os.listdir(snap)),
                         "tensors": {k: [str(v.dtype), list(v.shape), v.detach().numpy().tobytes().hex()] for k, v in sd.items()}}
        print("@@" + json.dumps(out))
    """, site["conv"].url, tmp_path / "hf")
    single, sharded = res["acme/single"], res["acme/sharded"]
    assert single["files"] == ["config.json", "model.safetensors"], single["files"]
    assert sharded["files"] == ["config.json", "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
                                "model.safetensors.index.json"], sharded["files"]
    for repo, r in res.items():
        want = site["sds"][repo]
        got = r["tensors"]
        assert set(want) <= set(got), (repo, set(want) - set(got))
        for k, v in want.items():
            assert got[k] == [str(v.dtype), list(v.shape), v.numpy().tobytes().hex()], (repo, k)


def test_serve_convert_bin_lists_converted_names_and_rewritten_index(site):
    url = site["conv"].url
    st, _, body = http("GET", f"{url}/api/models/acme/sharded")
    assert st == 200
    names = sorted(x["rfilename"] for x in json.loads(body)["siblings"])
    assert names == ["config.json", "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
                     "model.safetensors.index.json"]
    st, _, body = http("GET", f"{url}/api/models/acme/sharded/tree/main")
    assert sorted(e["path"] for e in json.loads(body)) == names
    st, h, body = http("GET", f"{url}/acme/sharded/resolve/main/model.safetensors.index.json")
    index = json.loads(body)
    assert st == 200 and h["X-Modelcdr-Verdict"] == "rewritten"
    assert set(index["weight_map"].values()) == {"model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"}
    assert set(index["weight_map"]) == set(site["sds"]["acme/sharded"])
    for shard in set(index["weight_map"].values()):
        st, h, data = http("GET", f"{url}/acme/sharded/resolve/main/{shard}")
        keys = {k for k, n in index["weight_map"].items() if n == shard}
        assert st == 200 and set(st_header(data)) - {"__metadata__"} == keys, shard
    for gone in ("pytorch_model.bin.index.json", "pytorch_model-00001-of-00002.bin"):
        st, h, _ = http("GET", f"{url}/acme/sharded/resolve/main/{gone}")
        assert st == 404 and h["X-Error-Code"] == "EntryNotFound", gone
    # Converting changes what is served, so the store's commit id differs from the plain gateway's.
    _, _, plain = http("GET", f"{site['plain'].url}/api/models/acme/sharded")
    assert json.loads(plain)["sha"] != json.loads(http("GET", f"{url}/api/models/acme/sharded")[2])["sha"]


def test_serve_convert_bin_keeps_a_shipped_safetensors(site):
    st, _, body = http("GET", f"{site['conv'].url}/api/models/acme/both")
    assert sorted(x["rfilename"] for x in json.loads(body)["siblings"]) == ["config.json", "model.safetensors"]
    _, _, data = http("GET", f"{site['conv'].url}/acme/both/resolve/main/model.safetensors")
    assert "other" not in st_header(data) and "embeddings.word_embeddings.weight" in st_header(data)


def test_serve_format_param_converts_one_file_and_keys_the_cache(site):
    url = f"{site['plain'].url}/acme/single/resolve/main/pytorch_model.bin"
    st, _, pt = http("GET", url)
    st2, _, data = http("GET", url + "?format=safetensors")
    assert st == st2 == 200 and pt[:2] == b"PK"
    _, h_pt, _ = http("HEAD", url)
    _, head, _ = http("HEAD", url + "?format=safetensors")
    assert h_pt["ETag"] != head["ETag"] and int(head["Content-Length"]) == len(data)
    assert head["ETag"] == '"' + hashlib.sha256(data).hexdigest() + '"'
    got = safetensors_torch.load(data)
    want = torch.load(site["store"] / "acme" / "single" / "pytorch_model.bin", weights_only=True)
    assert set(got) == set(want) and all(torch.equal(got[k], want[k]) and got[k].dtype == want[k].dtype for k in want)
    # Both entries stay cached side by side: a repeat of either is the same bytes, built once.
    objects = site["root"] / "cache-plain" / "objects"
    before = sorted(p.name for p in objects.iterdir())
    assert http("GET", url)[2] == pt and http("GET", url + "?format=safetensors")[2] == data
    assert sorted(p.name for p in objects.iterdir()) == before
    st, h, _ = http("GET", url + "?format=npz")
    assert st == 400 and h["X-Error-Code"], h


@pytest.mark.parametrize("which", ["conv", "plain"])
def test_serve_refused_conversion_is_403_with_reason(site, which, tmp_path):
    url = site[which].url
    path = "model.safetensors" if which == "conv" else "pytorch_model.bin?format=safetensors"
    st, h, body = http("GET", f"{url}/acme/odd/resolve/main/{path}")
    assert st == 403 and h["X-Error-Code"] == "convert.dropped", (st, h)
    assert "blob" in h["X-Error-Message"] and "safetensors" in h["X-Error-Message"]
    assert json.loads(body)["code"] == "convert.dropped"
    if which == "conv":
        res = run_client("""
            import json
            from huggingface_hub import hf_hub_download
            try:
                hf_hub_download("acme/odd", "model.safetensors")
                print("@@" + json.dumps(None))
            except Exception as e:  # the error and the causes chained behind it, as a traceback shows them
                chain, x = [], e
                while x is not None:
                    chain.append(str(x))
                    x = x.__cause__
                print("@@" + json.dumps(" | ".join(chain)))
        """, url, tmp_path / "hf")
        assert res and "refused by modelcdr" in res, res
    else:  # unconverted, the same file is served (a torch file holds bytes)
        st, h, _ = http("GET", f"{url}/acme/odd/resolve/main/pytorch_model.bin")
        assert st == 200, h
