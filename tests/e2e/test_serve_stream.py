"""`modelcdr serve` streams a file's first rebuild to the client that asked for it while it is
written (docs/SERVE.md, "First requests"): a chunked answer whose end comes only once the bytes are
a complete rebuild, a broken download when the build fails, and the usual 403 for a refusal."""
from __future__ import annotations

import hashlib
import http.client as httpclient
import os
import pickle

import pytest

from conftest import require_bin
from serve_util import Fire, Gateway, fetch, http

torch = pytest.importorskip("torch")



@pytest.fixture(scope="module")
def store(tmp_path_factory):
    require_bin()
    root = tmp_path_factory.mktemp("stream")
    repo = root / "store" / "acme" / "m"
    repo.mkdir(parents=True)
    torch.manual_seed(0)
    torch.save({f"t{i}": torch.randn(1 << 18) for i in range(8)}, repo / "pytorch_model.bin")  # 8 MiB
    (repo / "model.pkl").write_bytes(pickle.dumps(Fire(root / "FIRED"), protocol=2))
    (repo / "big.json").write_bytes(b'{"pad": "' + b"x" * (24 << 20) + b'"}')  # inert, slow to classify
    return root


def raw_get(port, path):
    c = httpclient.HTTPConnection("127.0.0.1", port, timeout=60)
    c.request("GET", path)
    r = c.getresponse()
    return r.status, dict(r.getheaders()), r.read()


def test_serve_first_get_streams_the_rebuild(store, tmp_path):
    cache = tmp_path / "cache"
    with Gateway("--store", store / "store", "--cache", cache) as g:
        path = "/acme/m/resolve/main/pytorch_model.bin"
        st, h, first = raw_get(g.port, path)
        assert st == 200 and h.get("Transfer-Encoding") == "chunked" and h.get("X-Modelcdr-Streamed") == "1", h
        assert "Content-Length" not in h and "ETag" not in h
        st, h2, again = raw_get(g.port, path)  # from the cache entry: size and ETag known
        assert st == 200 and "X-Modelcdr-Streamed" not in h2 and int(h2["Content-Length"]) == len(again)
        assert first == again and h2["ETag"] == '"' + hashlib.sha256(first).hexdigest() + '"'
        want = torch.load(store / "store" / "acme" / "m" / "pytorch_model.bin", weights_only=True)
        (tmp_path / "got.pt").write_bytes(first)
        got = torch.load(tmp_path / "got.pt", weights_only=True)
        assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
    assert list((cache / "tmp").iterdir()) == [] and len(list((cache / "objects").iterdir())) == 1



def test_serve_first_get_of_an_inert_file_is_complete(store, tmp_path):
    # An inert file is not rebuilt and not streamed: its first GET is the whole file with its
    # size (streamed, its last chunk once never came when the build outlasted the first poll).
    with Gateway("--store", store / "store", "--cache", tmp_path / "cache") as g:
        st, h, body = raw_get(g.port, "/acme/m/resolve/main/big.json")
        assert st == 200 and body == (store / "store" / "acme" / "m" / "big.json").read_bytes(), h
        assert "X-Modelcdr-Streamed" not in h and int(h["Content-Length"]) == len(body)

def test_serve_first_get_of_refused_file_is_403_not_streamed(store, tmp_path):
    with Gateway("--store", store / "store", "--cache", tmp_path / "cache") as g:
        st, h, body = raw_get(g.port, "/acme/m/resolve/main/model.pkl")
        assert st == 403 and h["X-Error-Code"] and "refused by modelcdr" in h["X-Error-Message"], h
    assert not (store / "FIRED").exists()


def test_serve_streamed_build_that_fails_is_a_broken_download(store, tmp_path):
    cache = tmp_path / "cache"
    env = dict(os.environ, MODELCDR_SERVE_FAIL_WRITES="1")  # the cache cannot store the rebuild
    with Gateway("--store", store / "store", "--cache", cache, env=env) as g:
        url = f"{g.url}/acme/m/resolve/main/pytorch_model.bin"
        st, h, body, complete = fetch(url)
        assert st == 200 and h.get("X-Modelcdr-Streamed") == "1" and not complete, (st, h, len(body))
    assert list((cache / "objects").iterdir()) == [] and list((cache / "tmp").iterdir()) == []
    with Gateway("--store", store / "store", "--cache", cache) as g:  # and the next request succeeds
        st, h, body, complete = fetch(f"{g.url}/acme/m/resolve/main/pytorch_model.bin")
        assert st == 200 and complete and body[:2] == b"PK"
