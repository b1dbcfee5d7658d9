"""Helpers for the `modelcdr serve` tests (test_serve*.py): start real gateways on free loopback
ports, make tiny Hugging Face repositories, and run real Hub clients in subprocesses (huggingface_hub
reads HF_ENDPOINT when it is imported, so every client gets a fresh interpreter and its own HF_HOME)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from pathlib import Path

from conftest import bin_path


class Gateway:
    """A running `modelcdr serve`; `url` is http://127.0.0.1:PORT."""

    def __init__(self, *args, env=None, cwd=None):
        cmd = [str(bin_path()), "serve", "--listen", "127.0.0.1:0", *[str(a) for a in args]]
        self.log = []
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=cwd)
        line = self.proc.stdout.readline().decode()
        if "listening on " not in line:
            err = self.proc.stderr.read().decode()
            raise RuntimeError(f"gateway did not start: {line!r} {err[-2000:]}")
        self.url = line.split("listening on ", 1)[1].split()[0]
        self.port = int(self.url.rsplit(":", 1)[1])

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.stderr.read().decode("utf-8", "replace")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()



class Fire:
    """Pickles as a call of os.system (never called by the tests: the bytes are written, never
    loaded; a rebuilt file that still called it would touch `marker`)."""

    def __init__(self, marker="/dev/null"):
        self.marker = marker

    def __reduce__(self):
        import os
        return (os.system, (f"touch {self.marker}",))


def http(method, url, headers=None, timeout=60):
    """(status, headers, body) of one request; HTTP errors are returned, not raised."""
    req = urllib.request.Request(url, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def fetch(url, timeout=60):
    """GET `url`: (status, headers, body, complete). `complete` is False for a broken download (the
    connection closed before the body's end: a chunked answer without its last chunk, or fewer bytes
    than Content-Length), which urllib would raise as IncompleteRead."""
    import http.client
    req = urllib.request.Request(url, method="GET")
    try:
        r = urllib.request.urlopen(req, timeout=timeout)
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read(), True
    with r:
        try:
            return r.status, dict(r.headers), r.read(), True
        except (http.client.IncompleteRead, ConnectionError) as e:
            return r.status, dict(r.headers), getattr(e, "partial", b""), False


def client_env(endpoint, home):
    env = dict(os.environ)
    env.pop("HF_HUB_OFFLINE", None)
    env.pop("TRANSFORMERS_OFFLINE", None)
    env.update(HF_ENDPOINT=endpoint, HF_HOME=str(home), HF_HUB_DISABLE_XET="1", HF_HUB_DISABLE_TELEMETRY="1",
               DISABLE_SAFETENSORS_CONVERSION="1", HF_HUB_DISABLE_PROGRESS_BARS="1")
    return env


def run_client(code, endpoint, home, timeout=300):
    """Runs `code` (which prints one JSON line prefixed @@) with the Hub pointed at `endpoint`."""
    p = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, timeout=timeout,
                       env=client_env(endpoint, home))
    out = p.stdout.decode("utf-8", "replace")
    if "@@" not in out:
        raise AssertionError(f"client failed rc={p.returncode}\n{out[-3000:]}\n{p.stderr.decode('utf-8', 'replace')[-5000:]}")
    return json.loads(out.split("@@", 1)[1])


def make_tiny_bert(repo_dir: Path, bin_weights=False, seed=0):
    """A tiny BERT saved with transformers (model.safetensors, or pytorch_model.bin); returns its state dict."""
    import torch
    import transformers

    torch.manual_seed(seed)
    cfg = transformers.BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                  intermediate_size=32, max_position_embeddings=32)
    model = transformers.BertModel(cfg)
    repo_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(repo_dir)
    if bin_weights:
        (repo_dir / "model.safetensors").unlink()
        torch.save(model.state_dict(), repo_dir / "pytorch_model.bin")
    return {k: v.detach().clone() for k, v in model.state_dict().items()}
