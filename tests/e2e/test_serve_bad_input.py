"""`modelcdr serve` under hostile requests: path traversal in repo ids, revisions and file names,
oversized headers, stalled (slowloris-style) clients, ranges beyond the end. Each gets a clear 4xx;
nothing outside the store is read, nothing outside the cache is written."""
from __future__ import annotations

import os
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from conftest import require_bin
from serve_util import Gateway, http

SECRET = b"TOP-SECRET-OUTSIDE-THE-STORE"


def raw(port, request: bytes, timeout=10):
    """Sends bytes as they are (no client-side path normalisation); returns the status and the reply."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(request)
        data = b""
        while True:
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                break
            if not chunk:
                break
            data += chunk
            if b"\r\n\r\n" in data and b"Content-Length: 0" in data or len(data) > 1 << 20:
                break
    status = int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/") else None
    return status, data


def tree_state(root: Path, skip: Path):
    out = []
    for dirpath, dirs, files in os.walk(root):
        if Path(dirpath) == skip or skip in Path(dirpath).parents:
            continue
        for f in files:
            st = os.lstat(os.path.join(dirpath, f))
            out.append((os.path.relpath(os.path.join(dirpath, f), root), st.st_size, st.st_mtime_ns))
    return sorted(out)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    require_bin()
    root = tmp_path_factory.mktemp("hostile")
    (root / "secret.txt").write_bytes(SECRET)
    repo = root / "store" / "acme" / "tiny"
    repo.mkdir(parents=True)
    (repo / "config.json").write_text('{"ok": true}')
    (repo / "link.json").symlink_to(root / "secret.txt")  # a link planted in the store
    (root / "store" / "acme" / "linked").symlink_to(root)  # a repository that is a link
    g = Gateway("--store", root / "store", "--cache", root / "cache", "--read-timeout", "2", "--threads", "16")
    yield root, g
    g.stop()


TRAVERSALS = [
    "/acme/tiny/resolve/main/../../../secret.txt",
    "/acme/tiny/resolve/main/%2e%2e/%2e%2e/%2e%2e/secret.txt",
    "/acme/tiny/resolve/main/..%2F..%2F..%2Fsecret.txt",
    "/acme/..%2F..%2F/resolve/main/secret.txt",
    "/..%2F..%2Fstore/acme/resolve/main/config.json",
    "/acme/tiny/resolve/..%2F..%2F/secret.txt",
    "/acme/tiny/resolve/%2e%2e/config.json",
    "/acme/tiny/resolve/main//etc/passwd",
    "/acme/tiny/resolve/main/%2Fetc%2Fpasswd",
    "/acme/tiny/resolve/main/config.json%00.txt",
    "/acme/tiny/resolve/main/link.json",
    "/acme/linked/resolve/main/secret.txt",
    "/api/models/acme/..%2F..",
    "/api/models/acme/tiny/revision/..%2F..%2F",
    "/api/models/acme/tiny/tree/main/..%2F..%2F",
    "/api/models/acme/linked/tree/main?recursive=true",
    "/api/reports/acme/tiny/main/..%2F..%2F..%2Fsecret.txt",
    "/acme/tiny/resolve/main/.modelcdr-cache/objects",
]


@pytest.mark.parametrize("path", TRAVERSALS)
def test_serve_path_traversal_refused(site, path):
    root, g = site
    before = tree_state(root, root / "cache")
    status, reply = raw(g.port, f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    assert status is not None and 400 <= status < 500, reply[:300]
    assert SECRET not in reply
    assert tree_state(root, root / "cache") == before


def test_serve_tree_lists_no_links(site):
    root, g = site
    st, _, body = http("GET", f"{g.url}/api/models/acme/tiny/tree/main?recursive=true")
    assert st == 200 and b"config.json" in body and b"link.json" not in body
    st, _, body = http("GET", f"{g.url}/acme/tiny/resolve/main/config.json")
    assert st == 200 and body == b'{"ok": true}'


def test_serve_oversized_headers_refused(site):
    root, g = site
    status, _ = raw(g.port, b"GET /api/models/acme/tiny HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n")
    assert status is not None and 400 <= status < 500
    status, _ = raw(g.port, b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status is not None and 400 <= status < 500
    st, _, _ = http("GET", f"{g.url}/api/models/acme/tiny")  # and the server still answers
    assert st == 200


def test_serve_stalled_clients_dropped_and_others_served(site):
    root, g = site
    stalled = []
    for _ in range(8):
        s = socket.create_connection(("127.0.0.1", g.port))
        s.sendall(b"GET /api/models/acme/tiny HTTP/1.1\r\nHost: x\r\nX-Slow: ")  # and nothing more
        stalled.append(s)
    t0 = time.monotonic()
    st, _, _ = http("GET", f"{g.url}/api/models/acme/tiny", timeout=10)
    assert st == 200 and time.monotonic() - t0 < 2
    for s in stalled:  # --read-timeout 2: each is closed by the server well before 10 s
        s.settimeout(10)
        t = time.monotonic()
        try:
            data = s.recv(100)
        except ConnectionResetError:
            data = b""
        assert time.monotonic() - t0 < 8 and (data == b"" or data.startswith(b"HTTP/1.1 4")), data
        s.close()


def test_serve_range_beyond_end_is_416(site):
    root, g = site
    url = f"{g.url}/acme/tiny/resolve/main/config.json"
    st, h, _ = http("GET", url, {"Range": "bytes=1000-2000"})
    assert st == 416 and h["Content-Range"] == "bytes */12" and h["X-Error-Code"] == "RangeNotSatisfiable"


def test_serve_binds_loopback_by_default(tmp_path):
    """Without --listen the gateway listens on 127.0.0.1:8080 only (read back from /proc/net/tcp)."""
    require_bin()
    import subprocess
    from conftest import bin_path
    (tmp_path / "store").mkdir()
    p = subprocess.Popen([str(bin_path()), "serve", "--store", str(tmp_path / "store")],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        line = p.stdout.readline().decode()
        if "listening on" not in line:
            pytest.skip("port 8080 is taken on this machine: " + p.stderr.read().decode()[-200:])
        assert "http://127.0.0.1:8080 " in line
        inode = {os.readlink(f"/proc/{p.pid}/fd/{fd}") for fd in os.listdir(f"/proc/{p.pid}/fd")}
        listening = [l.split() for l in Path("/proc/net/tcp").read_text().splitlines()[1:]
                     + Path("/proc/net/tcp6").read_text().splitlines()[1:]]
        ours = [l for l in listening if l[3] == "0A" and f"socket:[{l[9]}]" in inode]
        assert [l[1] for l in ours] == ["0100007F:1F90"], ours
    finally:
        p.terminate()
        p.wait(timeout=10)
