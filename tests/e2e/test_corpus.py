"""Corpus tests (shared/corpus, see its README: never unpickle these files).

* malicious files: ``disarm`` must reject (exit 2, no output, no temp files) or write an output that
  passes the static emit-profile check *and* loads under a tripwire (full torch.load in a subprocess, in a
  fresh cwd, with process/network/file-write/import hooks armed) without tripping anything.
  ``scan`` must never say 0 for them.
* benign files: for pickle / torch-zip / torch-legacy / torch-tar files that a safe reference loader can
  read (torch.load(weights_only=True) in a subprocess for torch formats; the data-only evaluator in
  vocab.py for plain pickles), our output must hold equal content: the default output read by torch
  2.x's weights_only loader (benign/torch2x is left to test_torch2x_corpus.py), the --compat torch1.13
  output read by torch 1.13's (marked torch113: the Debian pass).
* every corpus file: modelcdr must not crash (exit 0/1/2 only) and whatever it writes passes the checker.

All per-file work is done once per session (in parallel) by fixtures; each parametrized test only asserts.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from conftest import (HERE, binary_works, bin_path, corpus_dir, explain, manifest_records, run_cli,
                      torch_major, torch_python)
import vocab

RECORDS = manifest_records()
MALICIOUS = [r for r in RECORDS if r.get("label") == "malicious"]
BENIGN = [r for r in RECORDS if r.get("label") == "benign"]
TORCHISH = ("pickle", "torch-zip", "torch-legacy", "torch-tar")
BENIGN_TORCHISH = [r for r in BENIGN if r.get("format") in TORCHISH]
# benign/torch2x (written by torch 2.x) is compared in default mode by test_torch2x_corpus.py
BENIGN_TORCHISH_PRE2 = [r for r in BENIGN_TORCHISH if not r["path"].startswith("benign/torch2x/")]

NO_CORPUS = [pytest.param(None, marks=pytest.mark.skip(reason=f"corpus not found at {corpus_dir()}"))]
JOBS = max(2, min(8, (os.cpu_count() or 2) * 2))

# Known, honestly-recorded divergences: path -> reason (strict xfail: an unexpected pass is reported).
XFAIL_BENIGN = {
    "benign/modelaudit/simple_nested.pkl":
        "policy: a bytes value holding a serialized pickle is flagged (pickle.nested-pickle) and rebuilt by "
        "our writer (cdr.nested-pickle-rebuilt, issue 12): the value is kept, but disarm exits 1 (scan: safe, exit 0)",
}
XFAIL_MALICIOUS: dict = {}


def params(records, xfails=None):
    if not records:
        return NO_CORPUS
    xfails = xfails or {}
    return [pytest.param(r, id=r["path"],
                         marks=[pytest.mark.xfail(reason=xfails[r["path"]], strict=True)] if r["path"] in xfails else [])
            for r in records]


def _require():
    if not binary_works():
        pytest.skip(f"modelcdr binary not found at {bin_path()}")
    if not RECORDS:
        pytest.skip("corpus not found")


def _slug(rec):
    return rec["path"].replace("/", "__")


def _disarm_one(rec, base: Path, extra=(), tag="d"):
    src = corpus_dir() / rec["path"]
    d = base / tag / _slug(rec)
    d.mkdir(parents=True, exist_ok=True)
    out = d / "out.pt"
    rep = base / tag / (_slug(rec) + ".report.json")
    try:
        rc, so, se = run_cli("disarm", src, "-o", out, "--report", rep, *extra, timeout=120)
    except subprocess.TimeoutExpired:
        rc, so, se = "timeout", "", ""
    res = {"rc": rc, "stdout": so, "stderr": se, "out": str(out), "exists": out.is_file(),
           "dir": sorted(p.name for p in d.iterdir()), "violations": None}
    try:
        res["report"] = json.loads(rep.read_text()) if rep.is_file() else None
    except Exception as e:
        res["report"] = {"_unparseable": str(e)}
    if out.is_file():
        mode = "torch1.13" if "torch1.13" in extra else "torch2"
        res["violations"] = vocab.check_output(out, mode)
    return rec["path"], res


def _scan_one(rec):
    src = corpus_dir() / rec["path"]
    try:
        rc, so, se = run_cli("scan", "--json", src, timeout=120)
    except subprocess.TimeoutExpired:
        rc, so, se = "timeout", "", ""
    return rec["path"], {"rc": rc, "stdout": so, "stderr": se}


def _parallel(fn, items):
    with ThreadPoolExecutor(JOBS) as ex:
        return dict(ex.map(fn, items))


# --------------------------------------------------------------------------------------------------
# tripwire loader (runs in a subprocess, on OUR outputs only, after the static check passed)
# --------------------------------------------------------------------------------------------------
TRIPWIRE = textwrap.dedent(r'''
import builtins, collections, io, json, os, socket, subprocess, sys, tempfile
sys.path.insert(0, sys.argv[1])
import torch
import vocab

files = json.loads(sys.stdin.read())
base = sys.argv[2]
ALLOWED = {f"{m}.{n}" for m, n in vocab.allowed_globals("torch2")}

# ---- warm-up with our own benign object so lazy imports happen before the hooks are armed ----
def _warm():
    od = collections.OrderedDict(a=torch.ones(2), b=torch.nn.Parameter(torch.zeros(3)))
    od._metadata = collections.OrderedDict([("", {"version": 1})])
    obj = {"od": od, "q": torch.quantize_per_tensor(torch.randn(3), 0.1, 2, torch.quint8),
           "qc": torch.quantize_per_channel(torch.randn(2, 3), torch.tensor([0.1, 0.2], dtype=torch.float64),
                                            torch.tensor([0, 1]), 0, torch.qint8),
           "sp": torch.randn(3, 3).to_sparse(), "bf": torch.ones(2, dtype=torch.bfloat16),
           "c": torch.ones(2, dtype=torch.complex64), "b": torch.ones(2, dtype=torch.bool),
           "s": {1, 2}, "by": b"ab", "cx": 1 + 2j, "f": 0.5, "size": torch.Size([1, 2]),
           "i8": torch.ones(1, dtype=torch.int8), "u8": torch.ones(1, dtype=torch.uint8)}
    for legacy in (False, True):
        buf = io.BytesIO()
        torch.save(obj, buf, _use_new_zipfile_serialization=not legacy)
        buf.seek(0)
        torch.load(buf, weights_only=False)
        buf.seek(0)
        try:
            torch.load(buf, weights_only=True)
        except Exception:
            pass
_warm()

state = {"armed": False, "events": []}

def record(what):
    state["events"].append(what)

WATCH = ("os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork", "os.forkpty", "os.kill",
         "subprocess.Popen", "socket.connect", "socket.bind", "socket.__new__", "socket.getaddrinfo",
         "socket.sendto", "exec", "compile", "ctypes.", "os.remove", "os.rename", "os.rmdir", "os.mkdir",
         "os.symlink", "os.link", "os.chmod", "os.chown", "os.truncate", "os.chdir", "os.putenv", "os.unsetenv",
         "shutil.", "urllib.", "http.", "webbrowser.", "pty.", "code.", "marshal.loads", "builtins.input",
         "os.listdir", "os.scandir", "glob.glob", "sys.settrace", "sys.setprofile", "cpython.run_")
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND

def audit(event, args):
    if not state["armed"]:
        return
    if event.startswith(WATCH):
        record(f"audit {event} {str(args)[:200]}")
        raise RuntimeError("tripwire: " + event)
    if event == "open":
        path, mode, flags = (list(args) + [None, None, None])[:3]
        if (isinstance(mode, str) and any(c in mode for c in "wax+")) or (isinstance(flags, int) and flags & WRITE_FLAGS):
            record(f"audit open-for-write {path!r} {mode!r} {flags!r}")
            raise RuntimeError("tripwire: open for write")
    elif event == "import":
        name = args[0]
        if name not in sys.modules:
            record(f"audit import of new module {name!r}")
    elif event == "pickle.find_class":
        mod, name = args[0], args[1]
        if f"{mod}.{name}" not in ALLOWED:
            record(f"find_class {mod}.{name}")
            raise RuntimeError("tripwire: find_class " + f"{mod}.{name}")

sys.addaudithook(audit)

def trap(name, orig):
    def f(*a, **k):
        if state["armed"]:
            record(f"call {name} {str(a)[:200]}")
            raise RuntimeError("tripwire: " + name)
        return orig(*a, **k)
    return f

for n in ("system", "popen", "execl", "execle", "execlp", "execlpe", "execv", "execve", "execvp", "execvpe",
          "spawnl", "spawnle", "spawnlp", "spawnlpe", "spawnv", "spawnve", "spawnvp", "spawnvpe", "fork",
          "posix_spawn", "posix_spawnp", "remove", "unlink", "rename", "replace", "rmdir", "mkdir", "makedirs",
          "chmod", "kill", "putenv"):
    if hasattr(os, n):
        setattr(os, n, trap("os." + n, getattr(os, n)))
subprocess.Popen = trap("subprocess.Popen", subprocess.Popen)
for n in ("run", "call", "check_call", "check_output", "getoutput", "getstatusoutput"):
    setattr(subprocess, n, trap("subprocess." + n, getattr(subprocess, n)))
socket.socket = trap("socket.socket", socket.socket)
socket.create_connection = trap("socket.create_connection", socket.create_connection)
for n in ("exec", "eval", "compile", "breakpoint", "input"):
    setattr(builtins, n, trap("builtins." + n, getattr(builtins, n)))
_open = builtins.open
def guarded_open(file, mode="r", *a, **k):
    if state["armed"] and any(c in mode for c in "wax+"):
        record(f"call builtins.open {file!r} {mode!r}")
        raise RuntimeError("tripwire: open for write")
    return _open(file, mode, *a, **k)
builtins.open = guarded_open
io.open = guarded_open

def snapshot(d):
    out = []
    for root, dirs, fs in os.walk(d):
        for x in dirs + fs:
            p = os.path.join(root, x)
            st = os.lstat(p)
            out.append((os.path.relpath(p, d), st.st_size, st.st_mtime_ns))
    return sorted(out)

results = {}
orig_cwd = os.getcwd()
for i, path in enumerate(files):
    work = os.path.join(base, f"cwd{i}")
    os.makedirs(work)
    os.chdir(work)
    before, before_base = snapshot(work), sorted(os.listdir(base))
    state["events"] = []
    err = None
    kind = None
    try:
        state["armed"] = True
        try:
            obj = torch.load(path, weights_only=False)
        finally:
            state["armed"] = False
        kind = type(obj).__name__
    except BaseException as e:  # noqa: B036 - SystemExit etc. must be caught too
        state["armed"] = False
        err = f"{type(e).__name__}: {str(e)[:300]}"
    os.chdir(orig_cwd)
    after, after_base = snapshot(work), sorted(os.listdir(base))
    results[path] = {"events": state["events"], "error": err, "type": kind,
                     "cwd_changed": before != after, "base_changed": before_base != after_base}
sys.stdout.write("\n@@RESULT@@" + json.dumps(results))
''')


def run_tripwire(paths, base: Path):
    if not paths:
        return {}
    base.mkdir(parents=True, exist_ok=True)
    script = base / "tripwire.py"
    script.write_text(TRIPWIRE)
    wd = base / "wd"
    wd.mkdir()
    p = subprocess.run([torch_python(), "-I", str(script), str(HERE), str(wd)], input=json.dumps(paths).encode(),
                       capture_output=True, timeout=600, cwd=str(base))
    outp = p.stdout.decode("utf-8", "replace")
    if "@@RESULT@@" not in outp:
        raise RuntimeError(f"tripwire runner failed rc={p.returncode}\n{outp[-3000:]}\n"
                           f"{p.stderr.decode('utf-8', 'replace')[-3000:]}")
    return json.loads(outp.split("@@RESULT@@", 1)[1])


# --------------------------------------------------------------------------------------------------
# benign reference comparison (subprocess; benign corpus files only)
# --------------------------------------------------------------------------------------------------
BENIGN_CMP = textwrap.dedent(r'''
import json, sys, traceback, warnings
sys.path.insert(0, sys.argv[1])
warnings.simplefilter("ignore")
import torch
import vocab

jobs = json.loads(sys.stdin.read())
res = {}
for j in jobs:
    r = {"ref": None, "default": None, "compat": None}
    try:
        if j["format"] == "pickle":
            ref = vocab.static_load(open(j["src"], "rb").read())
            r["how"] = "vocab.static_load"
        else:
            try:
                ref = torch.load(j["src"], weights_only=True, map_location="cpu")
                r["how"] = "torch.load(weights_only=True)"
            except Exception as e1:
                # 1.13's weights_only loader lacks BINFLOAT, FRAME, qtensors: fall back to the data-only
                # evaluator with the same allowlisted torch reconstructors (torch-zip only)
                if j["format"] != "torch-zip":
                    raise
                try:
                    ref = vocab.static_torch_load(j["src"])
                except Exception as e2:
                    raise RuntimeError(f"{type(e1).__name__}: {str(e1)[-150:]} / static: {type(e2).__name__}: {e2}")
                r["how"] = "vocab.static_torch_load"
        r["ref"] = "ok"
    except Exception as e:
        r["ref"] = f"{type(e).__name__}: {str(e)[-300:]}"
        res[j["path"]] = r
        continue
    for mode, out in (("default", j["out_default"]), ("compat", j["out_compat"])):
        if not out:
            r[mode] = ["no output"]
            continue
        try:
            # default (torch2 profile) outputs need torch 2.x's loader (BINFLOAT, qtensors, new dtypes);
            # under torch 1.x the data-only evaluator stands in for it
            if mode == "compat" or int(torch.__version__.split(".")[0]) >= 2:
                got = torch.load(out, weights_only=True)
            else:
                got = vocab.static_torch_load(out)
            r[mode] = vocab.compare(ref, got, compat=(mode == "compat"))[:20]
        except Exception as e:
            r[mode] = [f"loading our output failed: {type(e).__name__}: {str(e)[:300]}"]
    res[j["path"]] = r
sys.stdout.write("\n@@RESULT@@" + json.dumps(res))
''')


# --------------------------------------------------------------------------------------------------
# session fixtures
# --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def malicious_results(tmp_path_factory):
    _require()
    base = tmp_path_factory.mktemp("malicious")
    dis = _parallel(lambda r: _disarm_one(r, base), MALICIOUS)
    scans = _parallel(_scan_one, MALICIOUS)
    loadable = [res["out"] for res in dis.values()
                if res["rc"] in (0, 1) and res["exists"] and res["violations"] == []]
    trip = run_tripwire(loadable, base / "trip")
    return {"disarm": dis, "scan": scans, "trip": trip}


@pytest.fixture(scope="session")
def benign_results(tmp_path_factory):
    _require()
    base = tmp_path_factory.mktemp("benign")
    dis = _parallel(lambda r: _disarm_one(r, base, (), "default"), BENIGN)
    comp = _parallel(lambda r: _disarm_one(r, base, ("--compat", "torch1.13"), "compat"), BENIGN_TORCHISH)
    scans = _parallel(_scan_one, BENIGN_TORCHISH)
    jobs = []
    for r in BENIGN_TORCHISH:
        d, c = dis[r["path"]], comp[r["path"]]
        jobs.append({"path": r["path"], "format": r["format"], "src": str(corpus_dir() / r["path"]),
                     "out_default": d["out"] if d["exists"] and d["violations"] == [] else None,
                     "out_compat": c["out"] if c["exists"] and c["violations"] == [] else None})
    p = subprocess.run([torch_python(), "-c", BENIGN_CMP, str(HERE)], input=json.dumps(jobs).encode(),
                       capture_output=True, timeout=600)
    outp = p.stdout.decode("utf-8", "replace")
    if "@@RESULT@@" not in outp:
        raise RuntimeError(f"benign comparison runner failed rc={p.returncode}\n{outp[-3000:]}\n"
                           f"{p.stderr.decode('utf-8', 'replace')[-3000:]}")
    cmp_ = json.loads(outp.split("@@RESULT@@", 1)[1])
    return {"default": dis, "compat": comp, "scan": scans, "cmp": cmp_}


# --------------------------------------------------------------------------------------------------
# malicious
# --------------------------------------------------------------------------------------------------
def _common_disarm_asserts(res, what):
    rc = res["rc"]
    msg = f"{what}\n" + explain(rc, res["stdout"], res["stderr"])
    assert rc in (0, 1, 2), "modelcdr crashed or timed out\n" + msg
    if rc == 2:
        assert not res["exists"], "exit 2 but the output file exists\n" + msg
        assert res["dir"] == [], f"exit 2 left files in the output dir: {res['dir']}\n" + msg
    else:
        assert res["exists"], f"exit {rc} but no output\n" + msg
        assert res["dir"] == ["out.pt"] or set(res["dir"]) <= {"out.pt", "out.pt.architecture.json"}, \
            f"stray files next to the output: {res['dir']}"
        assert res["violations"] == [], "output violates the emit profile:\n" + "\n".join(res["violations"])
    rep = res.get("report")
    assert rep is not None and "_unparseable" not in rep, f"report missing/unparseable: {rep}\n" + msg
    status = rep["files"][0]["status"]
    assert status == {0: "clean", 1: "removed", 2: "rejected"}[rc], f"report status {status} vs exit {rc}"


@pytest.mark.parametrize("rec", params(MALICIOUS, XFAIL_MALICIOUS))
def test_malicious_disarm(rec, malicious_results):
    res = malicious_results["disarm"][rec["path"]]
    _common_disarm_asserts(res, f"{rec['path']} ({rec['format']}: {rec.get('technique', '')})")
    if res["rc"] in (0, 1):
        t = malicious_results["trip"].get(res["out"])
        assert t is not None, "output was not tripwire-loaded"
        assert t["events"] == [], "tripwire fired while loading our output:\n" + "\n".join(t["events"])
        assert not t["cwd_changed"] and not t["base_changed"], "loading our output changed the filesystem"
        assert t["error"] is None, f"our output does not load with torch.load: {t['error']}"


@pytest.mark.parametrize("rec", params(MALICIOUS))
def test_malicious_scan(rec, malicious_results):
    res = malicious_results["scan"][rec["path"]]
    assert res["rc"] in (1, 2), f"scan of a malicious file said {res['rc']}\n" + \
        explain(res["rc"], res["stdout"], res["stderr"])
    doc = json.loads(res["stdout"])
    assert doc["files"][0]["status"] in ("findings", "error"), doc["files"][0]


# --------------------------------------------------------------------------------------------------
# benign
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("rec", params(BENIGN))
def test_benign_disarm_sane(rec, benign_results):
    """Any benign file: no crash, and whatever is written passes the static checker."""
    res = benign_results["default"][rec["path"]]
    _common_disarm_asserts(res, f"{rec['path']} ({rec['format']})")


def _benign_cmp(rec, benign_results):
    from test_corpus_fidelity import EXCEPTIONS  # README's list of benign files not compared equal

    c = benign_results["cmp"][rec["path"]]
    if c["ref"] != "ok":
        assert rec["path"] in EXCEPTIONS or (torch_major() or 0) < 2, \
            f"no reference loader reads it, and it is not a documented exception: {c['ref']}"
        pytest.skip(f"reference loader cannot read it (not weights_only-loadable under this torch): {c['ref']}")
    return c


@pytest.mark.parametrize("rec", params(BENIGN_TORCHISH_PRE2, XFAIL_BENIGN))
def test_benign_content_equal(rec, benign_results):
    c = _benign_cmp(rec, benign_results)
    d = benign_results["default"][rec["path"]]
    assert d["rc"] == 0, "weights_only-loadable file but disarm did not exit 0\n" + \
        explain(d["rc"], d["stdout"], d["stderr"])
    assert d["violations"] == [], d["violations"]
    assert c["default"] == [], "default-mode output differs:\n" + "\n".join(c["default"])


@pytest.mark.torch113
@pytest.mark.parametrize("rec", params(BENIGN_TORCHISH, XFAIL_BENIGN))
def test_benign_content_equal_compat(rec, benign_results):
    c = _benign_cmp(rec, benign_results)
    cm = benign_results["compat"][rec["path"]]
    # torch 1.13 cannot load quantized tensors or 2.x-only dtypes: --compat torch1.13 drops them
    # (exit 1, rule cdr.compat-dropped); its loader has no torch.device either, so a device becomes
    # its string (cdr.converted, naming torch.device). Nothing else may differ.
    def compat_only(line):
        return "[cdr.compat-dropped]" in line or ("[cdr.converted]" in line and "torch.device" in line)
    removed = [l for l in cm["stderr"].splitlines() if l.startswith("modelcdr: removed")]
    compat_dropped = any(compat_only(l) for l in removed)
    other_removed = [l for l in removed if not compat_only(l)]
    assert cm["rc"] == 0 or (cm["rc"] == 1 and compat_dropped and not other_removed), \
        "--compat torch1.13: exit != 0\n" + explain(cm["rc"], cm["stdout"], cm["stderr"])
    assert cm["violations"] == [], cm["violations"]
    if not compat_dropped:
        assert c["compat"] == [], "compat-mode output differs:\n" + "\n".join(c["compat"])


# No xfail: scan grades a nested pickle by its inner stream (simple_nested.pkl is `safe`, exit 0).
@pytest.mark.parametrize("rec", params(BENIGN_TORCHISH_PRE2))
def test_benign_scan_clean(rec, benign_results):
    c = benign_results["cmp"][rec["path"]]
    if c["ref"] != "ok":
        pytest.skip("reference loader cannot read it")
    s = benign_results["scan"][rec["path"]]
    assert s["rc"] == 0, "scan flags a weights_only-loadable benign file\n" + explain(s["rc"], s["stdout"], s["stderr"])
