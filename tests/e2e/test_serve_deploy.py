"""The documented deployment (docs/SERVE.md): nginx from Debian in front of two `modelcdr serve`
instances sharing one cache, started on loopback from examples/serve/nginx.conf itself."""
from __future__ import annotations

import hashlib
import re
import shutil
import socket
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import REPO, require_bin
from serve_util import Gateway, http, make_tiny_bert, run_client

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_nginx_in_front_of_two_instances(tmp_path):
    require_bin()
    nginx = shutil.which("nginx") or ("/usr/sbin/nginx" if shutil.os.path.exists("/usr/sbin/nginx") else None)
    if not nginx:
        pytest.skip("nginx is not installed (Debian package nginx-light; scripts/install-deps.sh installs it, CI has it)")
    store, cache = tmp_path / "store", tmp_path / "cache"
    make_tiny_bert(store / "acme" / "tiny-bert", bin_weights=True)
    a = Gateway("--store", store, "--cache", cache)
    b = Gateway("--store", store, "--cache", cache)
    port = free_port()
    conf = (REPO / "examples" / "serve" / "nginx.conf").read_text()
    conf = conf.replace("127.0.0.1:8081", f"127.0.0.1:{a.port}").replace("127.0.0.1:8082", f"127.0.0.1:{b.port}")
    conf = conf.replace("listen 127.0.0.1:8080", f"listen 127.0.0.1:{port}")
    assert str(a.port) in conf and str(b.port) in conf and str(port) in conf
    prefix = tmp_path / "nginx"
    prefix.mkdir()
    (prefix / "nginx.conf").write_text(conf)
    ng = subprocess.Popen([nginx, "-p", str(prefix), "-c", str(prefix / "nginx.conf"), "-e", str(prefix / "error.log"),
                           "-g", f"daemon off; pid {prefix}/nginx.pid; error_log {prefix}/error.log;"],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert ng.poll() is None, ng.stderr.read().decode() + (prefix / "error.log").read_text()
                time.sleep(0.1)
        # Concurrent first requests through the balancer, to either instance: one rebuild.
        f = f"{url}/acme/tiny-bert/resolve/main/pytorch_model.bin"
        with ThreadPoolExecutor(8) as ex:
            results = list(ex.map(lambda _: http("GET", f), range(8)))
        assert all(r[0] == 200 for r in results) and len({r[2] for r in results}) == 1
        # (a request that got the build streamed while it was written has no ETag yet: HEAD has it)
        assert http("HEAD", f)[1]["ETag"] == '"' + hashlib.sha256(results[0][2]).hexdigest() + '"'
        st, h, part = http("GET", f, {"Range": "bytes=0-9"})
        assert st == 206 and part == results[0][2][:10]
        res = run_client(f"""
            import json, torch, transformers
            a = transformers.AutoModel.from_pretrained({str(store)!r} + "/acme/tiny-bert").state_dict()
            b = transformers.AutoModel.from_pretrained("acme/tiny-bert").state_dict()
            print("@@" + json.dumps([k for k in a if not torch.equal(a[k], b[k])] + ([] if a.keys() == b.keys() else ["keys"])))
        """, url, tmp_path / "hf")
        assert res == []
    finally:
        ng.terminate()
        ng.wait(timeout=10)
        log_a, log_b = a.stop(), b.stop()
    assert (log_a + log_b).count("built acme/tiny-bert/pytorch_model.bin") == 1, log_a + log_b
    # nginx spread the requests over both instances.
    served = [len(re.findall(r"GET /acme/tiny-bert/resolve/main/\S+ 20[06]", log)) for log in (log_a, log_b)]
    assert min(served) >= 1 and sum(served) >= 9, served
