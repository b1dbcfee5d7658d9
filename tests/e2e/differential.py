"""modelcdr's pickle machine against CPython's C unpickler (cpython_ref.py) on the same streams.

The rule checked for each stream:
- every global CPython's unpickler resolves and every call it makes (callee, arguments) is
  reported by `modelcdr scan --json`, whether modelcdr accepts the stream or rejects it (a rejected
  stream still gets the pickle.cpython-view findings: what CPython runs before it fails);
- where both sides read the stream to STOP, they report the same globals and the same calls.
"""
import base64
import json
import re
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

# Names are compared as modelcdr spells them, "module name" (one space), so that names holding
# spaces or control characters (mutated streams) need no splitting.
GLOBAL_RE = re.compile(r"^GLOBAL '(.*)' is not allowed$", re.S)
CALL_RE = re.compile(r"^(?:REDUCE calls|NEWOBJ calls|INST/OBJ instantiates) '(.*?)'(?: with arguments (.*?))?(?: \(GLOBAL at offset \d+\))?(?:; removed by disarm)?$", re.S)


def reference(streams, python=sys.executable, timeout=300):
    """CPython's view of each stream, in a subprocess with a tripwire."""
    payload = json.dumps([base64.b64encode(s).decode() for s in streams])
    p = subprocess.run([python, str(HERE / "cpython_ref.py")], input=payload.encode(), capture_output=True,
                       timeout=timeout)
    if p.returncode != 0:
        raise RuntimeError(f"reference unpickler failed (rc {p.returncode}): {p.stderr.decode()[-2000:]}")
    return json.loads(p.stdout)


def modelcdr_view(binary, paths, timeout=300):
    p = subprocess.run([str(binary), "scan", "--json", *map(str, paths)], capture_output=True, timeout=timeout)
    if p.returncode not in (0, 1, 2):
        raise RuntimeError(f"modelcdr scan crashed (rc {p.returncode}): {p.stderr.decode()[-2000:]}")
    out = []
    for f in json.loads(p.stdout)["files"]:
        globs, calls = set(), set()
        for fd in f["findings"]:
            m = GLOBAL_RE.match(fd["message"])
            if m:
                globs.add(m.group(1))
            c = CALL_RE.match(fd["message"])
            if c:
                globs.add(c.group(1))
                calls.add((c.group(1), c.group(2)))
        # Where an opcode crosses its FRAME's end CPython's readers disagree among themselves (the C
        # unpickler on a file drops a partial line there; pickle.loads does not): modelcdr reports
        # pickle.frame-straddle/-nested and disarm rejects the stream; names there are not compared.
        frames = any(fd["rule"] in ("pickle.frame-straddle", "pickle.frame-nested") for fd in f["findings"])
        out.append({"error": f["status"] == "error", "globals": globs, "calls": calls, "frame_disagreement": frames})
    return out


def disagreements(binary, streams, workdir, python=sys.executable):
    """The streams on which the two views break the rule, with what each side said."""
    workdir = Path(workdir)
    paths = []
    for i, s in enumerate(streams):
        p = workdir / f"s{i:05d}.pkl"
        p.write_bytes(s)
        paths.append(p)
    ref = reference(streams, python)
    cdr = modelcdr_view(binary, paths)
    bad = []
    for s, p, r, c in zip(streams, paths, ref, cdr):
        rg = {f"{m} {n}" for m, n in r["globals"]}
        rc = {(q, a) for q, a in r["calls"]}
        missing_g = rg - c["globals"]
        missing_c = rc - c["calls"]
        problem = None
        if c["frame_disagreement"]:
            pass
        elif missing_g:
            problem = f"globals CPython resolves that modelcdr does not report: {sorted(missing_g)}"
        elif r["ok"] and not c["error"] and rg != c["globals"]:
            problem = f"modelcdr reports globals CPython never resolves: {sorted(c['globals'] - rg)}"
        elif missing_c:
            problem = f"calls CPython makes that modelcdr does not report: {sorted(missing_c)[:5]}"
        if problem:
            bad.append({"file": str(p), "stream": s.hex(), "problem": problem, "cpython": r,
                        "modelcdr": {k: sorted(v) if isinstance(v, set) else v for k, v in c.items()}})
    return bad
