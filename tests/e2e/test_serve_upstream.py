"""`modelcdr serve --upstream`: pull-through from an HF-compatible endpoint (the test fixture
fixtures/hf_upstream.py), and the cache under faults: the upstream dies mid-file or sends the wrong
bytes, a client disconnects, the disk fills, two instances race on one file."""
from __future__ import annotations

import hashlib
import json
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from conftest import HERE, require_bin
from serve_util import Gateway, fetch, http, make_tiny_bert, run_client

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("huggingface_hub")


class Upstream:
    def __init__(self, root: Path):
        self.root = root
        self.proc = subprocess.Popen([sys.executable, str(HERE / "fixtures" / "hf_upstream.py"), str(root)],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        line = self.proc.stdout.readline().decode()
        assert "listening on " in line, line + self.proc.stderr.read().decode()
        self.url = line.split("listening on ", 1)[1].strip()

    def faults(self, **f):
        (self.root / "_faults.json").write_text(json.dumps(f))

    def downloads(self):
        return json.loads(http("GET", self.url + "/_stats")[2])["downloads"]

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=10)


@pytest.fixture(scope="module")
def upstream(tmp_path_factory):
    require_bin()
    root = tmp_path_factory.mktemp("upstream")
    make_tiny_bert(root / "hub" / "acme" / "tiny-bert")
    make_tiny_bert(root / "hub" / "acme" / "tiny-bert-bin", bin_weights=True, seed=1)
    big = root / "hub" / "acme" / "big"
    big.mkdir(parents=True)
    from safetensors.torch import save_file
    save_file({"w": torch.randn(1024, 1024)}, big / "model.safetensors")  # 4 MiB
    for i in range(4):
        save_file({"w": torch.full((256, 256), float(i))}, big / f"part{i}.safetensors")
    u = Upstream(root / "hub")
    yield u
    u.stop()


def entries(cache: Path):
    objs = cache / "objects"
    return sorted(p.name for p in objs.iterdir()) if objs.is_dir() else []


def assert_cache_clean(cache: Path):
    """Nothing half-written: no temporary entries or downloads, every entry's data matches its meta."""
    assert list((cache / "tmp").iterdir()) == []
    for key in entries(cache):
        meta = json.loads((cache / "objects" / key / "meta.json").read_text())
        if meta["served"]:
            data = (cache / "objects" / key / "data").read_bytes()
            assert len(data) == meta["size"] and hashlib.sha256(data).hexdigest() == meta["sha256"], key


def test_serve_upstream_pull_through_real_clients(upstream, tmp_path):
    with Gateway("--upstream", upstream.url, "--cache", tmp_path / "cache") as g:
        res = run_client(f"""
            import json, torch, transformers
            from huggingface_hub import snapshot_download
            out = {{}}
            for repo in ("acme/tiny-bert", "acme/tiny-bert-bin"):
                snapshot_download(repo)
                a = transformers.AutoModel.from_pretrained({str(upstream.root)!r} + "/" + repo).state_dict()
                b = transformers.AutoModel.from_pretrained(repo).state_dict()
                out[repo] = [k for k in a if k not in b or not torch.equal(a[k], b[k])] + ([] if len(a) == len(b) else ["len"])
            print("@@" + json.dumps(out))
        """, g.url, tmp_path / "hf")
        assert res == {"acme/tiny-bert": [], "acme/tiny-bert-bin": []}
        # Nothing that lets a client fetch around the gateway: no redirect, xet header, link or LFS pointer.
        st, h, _ = http("HEAD", f"{g.url}/acme/tiny-bert/resolve/main/model.safetensors")
        assert st == 200 and "Location" not in h and "Link" not in h
        assert not any(k.lower().startswith("x-xet") or k.lower().startswith("x-linked") for k in h), h
        for path in ("/api/models/acme/tiny-bert", "/api/models/acme/tiny-bert/tree/main?recursive=true"):
            body = http("GET", g.url + path)[2].decode()
            assert "xet" not in body.lower() and "lfs" not in body and "127.0.0.1" not in body, body
        assert_cache_clean(tmp_path / "cache")


def test_serve_upstream_dies_mid_file_then_next_request_succeeds(upstream, tmp_path):
    cache = tmp_path / "cache"
    with Gateway("--upstream", upstream.url, "--cache", cache) as g:
        url = f"{g.url}/acme/big/resolve/main/model.safetensors"
        upstream.faults(truncate={"acme/big/model.safetensors": 100000})
        st, h, _ = http("GET", url)
        assert st == 502 and h["X-Error-Code"].startswith("upstream."), (st, h)
        assert entries(cache) == [] and list((cache / "tmp").iterdir()) == []
        upstream.faults(corrupt={"acme/big/model.safetensors": True})
        st, h, _ = http("GET", url)
        assert st == 502 and h["X-Error-Code"] == "upstream.corrupt", (h, http("GET", url)[1])
        assert entries(cache) == []
        upstream.faults()
        st, h, data = http("GET", url)  # streamed while built: the ETag comes with the cached file
        assert st == 200 and http("HEAD", url)[1]["ETag"] == '"' + hashlib.sha256(data).hexdigest() + '"'
        from safetensors.torch import load
        from safetensors.torch import load_file
        assert torch.equal(load(data)["w"], load_file(upstream.root / "acme/big/model.safetensors")["w"])
        assert_cache_clean(cache)


def test_serve_client_disconnects_mid_download(upstream, tmp_path):
    cache = tmp_path / "cache"
    with Gateway("--upstream", upstream.url, "--cache", cache) as g:
        path = "/acme/big/resolve/main/model.safetensors"
        # A client that goes away while the file is still being fetched and built...
        upstream.faults(slow={"acme/big/model.safetensors": 1.5})
        s = socket.create_connection(("127.0.0.1", g.port))
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        time.sleep(0.3)
        s.close()
        upstream.faults()
        # ... and one that reads a little of the body and hangs up.
        time.sleep(2)
        s = socket.create_connection(("127.0.0.1", g.port))
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        assert s.recv(4096)
        s.close()
        st, h, data = http("GET", g.url + path)
        assert st == 200 and h["ETag"] == '"' + hashlib.sha256(data).hexdigest() + '"' and len(data) > 4000000
        assert_cache_clean(cache)


def test_serve_disk_full_leaves_no_entry(upstream, tmp_path):
    import os
    cache = tmp_path / "cache"
    env = dict(os.environ, MODELCDR_SERVE_FAIL_WRITES="1")
    with Gateway("--upstream", upstream.url, "--cache", cache, env=env) as g:
        for f in ("model.safetensors", "part0.safetensors"):
            # The download into the cache fails before any rebuild is written: a 503, never streamed.
            st, h, _ = http("GET", f"{g.url}/acme/big/resolve/main/{f}")
            assert st == 503 and h["X-Error-Code"] == "io.write" and "No space left" in h["X-Error-Message"], h
    assert entries(cache) == [] and list((cache / "tmp").iterdir()) == []
    with Gateway("--upstream", upstream.url, "--cache", cache) as g:
        st, _, _ = http("GET", f"{g.url}/acme/big/resolve/main/part0.safetensors")
        assert st == 200
    assert_cache_clean(cache)


def test_serve_two_instances_race_build_once(upstream, tmp_path):
    cache = tmp_path / "cache"
    key = "acme/big/part1.safetensors"
    before = upstream.downloads().get(key, 0)
    upstream.faults(slow={key: 1.0})
    a = Gateway("--upstream", upstream.url, "--cache", cache)
    b = Gateway("--upstream", upstream.url, "--cache", cache)
    try:
        urls = [f"{g.url}/acme/big/resolve/main/part1.safetensors" for g in (a, b)] * 6
        with ThreadPoolExecutor(12) as ex:
            results = list(ex.map(lambda u: http("GET", u), urls))
    finally:
        upstream.faults()
        logs = a.stop() + b.stop()
    assert all(r[0] == 200 for r in results), [r[:2] for r in results]
    # One request per instance may get the build streamed (no ETag yet); the rest wait and get the entry.
    streamed = [r for r in results if r[1].get("X-Modelcdr-Streamed") == "1"]
    assert len(streamed) <= 2 and all("ETag" not in r[1] for r in streamed)
    etags = {r[1]["ETag"] for r in results if r not in streamed}
    assert len({r[2] for r in results}) == 1 and etags == {'"' + hashlib.sha256(results[0][2]).hexdigest() + '"'}
    assert upstream.downloads().get(key, 0) - before == 1
    assert logs.count("built acme/big/part1.safetensors") == 1, logs
    assert_cache_clean(cache)


def test_serve_real_full_disk_leaves_no_entry(upstream, tmp_path):
    """The cache on a 2 MiB tmpfs: a 4 MiB file cannot be stored (503, nothing left behind); a small
    file then succeeds on the same file system."""
    import os
    cache = tmp_path / "cache"
    cache.mkdir()
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(cache)], capture_output=True)
    if p.returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root): " + p.stderr.decode()[-200:])
    try:
        with Gateway("--upstream", upstream.url, "--cache", cache) as g:
            st, h, _, complete = fetch(f"{g.url}/acme/big/resolve/main/model.safetensors")
            assert st == 503 or (st == 200 and not complete), (st, h)  # a 503, or a broken streamed download
            st, h, _ = http("HEAD", f"{g.url}/acme/big/resolve/main/model.safetensors")
            assert st == 503 and h["X-Error-Code"] == "io.write" and "No space left" in h["X-Error-Message"], h
            assert entries(cache) == [] and list((cache / "tmp").iterdir()) == []
            st, h, data = http("GET", f"{g.url}/acme/big/resolve/main/part2.safetensors")
            st2, h, _ = http("HEAD", f"{g.url}/acme/big/resolve/main/part2.safetensors")
            assert st == st2 == 200 and h["ETag"] == '"' + hashlib.sha256(data).hexdigest() + '"'
            assert_cache_clean(cache)
    finally:
        subprocess.run(["umount", str(cache)], check=True)
