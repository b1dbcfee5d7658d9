"""`modelcdr serve` against slow clients on real sockets (docs/SERVE.md, "Limits and hostile
clients"): a client that drips its request headers a byte at a time, each byte well inside
--read-timeout, is dropped at --header-timeout and frees its thread; a client that sends its
headers slowly but in time is answered; a client that reads a long answer slowly is not cut off."""
from __future__ import annotations

import socket
import threading
import time

import pytest

from conftest import require_bin
from serve_util import Gateway, http

DEADLINE = 3  # --header-timeout; --read-timeout is 2 and the drip sends a byte every 0.5 s


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    require_bin()
    root = tmp_path_factory.mktemp("slow")
    repo = root / "store" / "acme" / "tiny"
    repo.mkdir(parents=True)
    (repo / "config.json").write_text('{"ok": true}')
    big = b'{"pad": "' + b"x" * (6 << 20) + b'"}'  # an inert file of 6 MiB
    (repo / "big.json").write_bytes(big)
    g = Gateway("--store", root / "store", "--cache", root / "cache", "--read-timeout", "2",
                "--header-timeout", str(DEADLINE), "--threads", "4")
    yield g, big
    g.stop()


def drip(port, out, i, request=b"GET /api/models/acme/tiny HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 200):
    """Sends `request` a byte every 0.5 s; records how long until the server ended the connection."""
    s = socket.create_connection(("127.0.0.1", port))
    t0 = time.monotonic()
    reply = b""
    try:
        for b in request:
            s.sendall(bytes([b]))
            time.sleep(0.5)
            s.setblocking(False)
            try:
                chunk = s.recv(4096)
                if not chunk:
                    break
                reply += chunk
            except BlockingIOError:
                pass
            finally:
                s.setblocking(True)
        else:
            out[i] = (None, reply)  # never dropped
            return
    except (BrokenPipeError, ConnectionResetError):
        pass
    out[i] = (time.monotonic() - t0, reply)
    s.close()


def test_serve_dripping_clients_dropped_at_header_deadline(site):
    g, _ = site
    out = {}
    threads = [threading.Thread(target=drip, args=(g.port, out, i)) for i in range(4)]  # as many as --threads
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(out) == 4, out
    for took, reply in out.values():
        # Each byte came well inside --read-timeout, so only the header deadline ended it.
        assert took is not None and DEADLINE - 0.5 <= took < DEADLINE + 6, out
        assert reply == b"" or reply.startswith(b"HTTP/1.1 4"), reply
    st, _, body = http("GET", f"{g.url}/api/models/acme/tiny", timeout=10)  # the threads are free again
    assert st == 200 and b"config.json" in body
    assert "request headers not complete" in "".join(_drain_log(g))


def _drain_log(g):
    """The gateway's stderr so far, read without blocking (it keeps running)."""
    import fcntl
    import os
    fd = g.proc.stderr.fileno()
    fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_NONBLOCK)
    chunks = []
    while True:
        try:
            c = os.read(fd, 65536)
        except BlockingIOError:
            break
        if not c:
            break
        chunks.append(c.decode("utf-8", "replace"))
    return chunks


def test_serve_slow_but_timely_headers_answered(site):
    g, _ = site
    req = b"GET /api/models/acme/tiny HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    with socket.create_connection(("127.0.0.1", g.port), timeout=10) as s:
        step = (DEADLINE - 1.5) / len(req)  # the whole request in 1.5 s
        for i in range(0, len(req), 4):
            s.sendall(req[i:i + 4])
            time.sleep(step * 4)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    assert data.startswith(b"HTTP/1.1 200") and b"config.json" in data


def test_serve_slow_reader_of_a_long_answer_not_cut(site):
    g, big = site
    assert http("HEAD", f"{g.url}/acme/tiny/resolve/main/big.json")[0] == 200  # built: a plain (not chunked) answer
    with socket.create_connection(("127.0.0.1", g.port), timeout=30) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 10)
        s.sendall(b"GET /acme/tiny/resolve/main/big.json HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        t0 = time.monotonic()
        while chunk := s.recv(256 << 10):
            data += chunk
            time.sleep(0.15)  # under 2 MiB/s: the answer takes longer than the header deadline
    head, body = data.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 200") and time.monotonic() - t0 > DEADLINE
    assert body == big
