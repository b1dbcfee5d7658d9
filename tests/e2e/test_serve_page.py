"""The gateway's web page at `/`, loaded in headless Chromium (Debian's package): what a person sees
(repositories, files, verdicts, what was removed, report links, cache state), with every string
from a file escaped."""
from __future__ import annotations

import shutil
import subprocess
import sys
import types
import html.parser
from pathlib import Path

import pytest

from conftest import require_bin
from serve_util import Fire, Gateway, http

torch = pytest.importorskip("torch")



def chromium():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    pytest.skip("chromium is not installed (Debian package chromium; scripts/install-deps.sh installs it)")


class Text(html.parser.HTMLParser):
    """The visible text of a DOM dump, and the elements in it."""

    def __init__(self):
        super().__init__()
        self.text, self.tags, self.links = [], [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        if tag == "a":
            self.links.append(dict(attrs).get("href"))

    def handle_data(self, data):
        self.text.append(data)


def test_serve_page_in_headless_chromium(tmp_path):
    require_bin()
    repo = tmp_path / "store" / "acme" / "mixed"
    repo.mkdir(parents=True)
    torch.save({"w": torch.ones(3), "hook": Fire()}, repo / "pytorch_model.bin")
    (repo / "run.sh").write_text("#!/bin/sh\n")
    (repo / "notes.txt").write_text("hello")
    # A checkpoint calling a function of a "module" named with markup: the name reaches the page
    # through what was removed, and must show as text.
    mark = "<img src=x onerror=alert(1)>"
    mod = types.ModuleType(mark)

    def f(*a):
        return None
    f.__module__, f.__qualname__ = mark, "f"
    mod.f = f

    class Markup:
        def __reduce__(self):
            return (f, ())
    sys.modules[mark] = mod
    try:
        torch.save({"w": torch.ones(2), "x": Markup()}, repo / "markup.bin")
    finally:
        del sys.modules[mark]
    (tmp_path / "store" / "acme" / "untouched").mkdir()
    (tmp_path / "store" / "acme" / "untouched" / "config.json").write_text("{}")
    with Gateway("--store", tmp_path / "store", "--cache", tmp_path / "cache") as g:
        for name in ("pytorch_model.bin", "run.sh", "notes.txt", "markup.bin"):
            http("GET", f"{g.url}/acme/mixed/resolve/main/{name}")
        p = subprocess.run([chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom", g.url + "/"],
                           capture_output=True, timeout=120, env={"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"})
        dom = p.stdout.decode("utf-8", "replace")
        assert "<h1>modelcdr serve</h1>" in dom, p.stderr.decode()[-2000:]
        t = Text()
        t.feed(dom)
        text = " ".join(" ".join(t.text).split())
        assert "acme/mixed" in text and "acme/untouched" in text
        assert "pytorch_model.bin" in text and "removed" in text and "pickle.call" in text
        assert "refused (copy.not-inert)" in text  # run.sh
        assert "inert" in text and "notes.txt" in text
        assert "not built yet" in text  # acme/untouched/config.json
        assert "Cache: 4 entries" in text
        assert mark in text, text  # shown as text...
        assert "img" not in t.tags and "script" not in t.tags  # ... never as markup
        reports = [l for l in t.links if l and l.startswith("/api/reports/acme/mixed/")]
        assert len(reports) == 4
        st, _, body = http("GET", g.url + reports[0])
        assert st == 200 and b"modelcdr.disarm/1" in body
