#!/usr/bin/env python3
"""modelcdr scan side by side with picklescan, modelscan, fickling and modelaudit on the corpus.

Each tool runs once per file (its verdict: flagged / clean / error, from its exit code) and once on
the whole corpus folder (wall time). Verdicts are scored against manifest.json labels: TP =
malicious flagged, FP = benign flagged. Usage (bench/compare_scanners.sh sets the venv up):
    compare_scanners.py --venv DIR --modelcdr BIN --corpus DIR [--jobs 2] [--limit N] [--json OUT]
Nothing here loads a corpus file: every tool is a static scanner run as a subprocess.
"""
import argparse
import concurrent.futures as cf
import json
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path


def tools(venv, modelcdr):
    b = Path(venv) / "bin"
    # name -> (per-file argv, folder argv or None, flagged(rc, out))
    return {
        "modelcdr": ([modelcdr, "scan"], [modelcdr, "scan"], lambda rc, out: rc == 1 or (rc == 2 and "critical" in out)),
        "picklescan": ([b / "picklescan", "-p"], [b / "picklescan", "-p"], lambda rc, out: rc == 1),
        "modelscan": ([b / "modelscan", "-p"], [b / "modelscan", "-p"], lambda rc, out: rc == 1),
        "fickling": ([b / "fickling", "--check-safety"], None, lambda rc, out: rc == 1),
        # modelaudit takes ~20 s a file (start-up): its verdicts come from one JSON run over the
        # whole folder, its per-file time from single-file runs on a sample (--modelaudit-sample).
        "modelaudit": ([b / "modelaudit", "scan"], [b / "modelaudit", "scan", "-f", "json"], lambda rc, out: rc == 1),
    }


def modelaudit_verdicts(out, corpus, recs):
    """flagged: a critical or warning issue located in the file; error: listed as unscanned."""
    # `out` is stdout then stderr (log lines, a traceback): decode the one JSON document that
    # stdout holds and ignore what follows it (json.loads of the rest failed: every verdict lost).
    try:
        doc, _ = json.JSONDecoder().raw_decode(out, out.index("{"))
    except ValueError:
        return {}
    flagged = set()
    for issue in doc.get("issues", []):
        if issue.get("severity") in ("critical", "warning"):
            loc = str(issue.get("location") or "").split(" (pos")[0]
            flagged.add(loc)
    verdicts = {}
    for r in recs:
        full = str((corpus / r["path"]).resolve())
        verdicts[r["path"]] = "flagged" if any(loc == full or loc.startswith(full + ":") for loc in flagged) else "clean"
    return verdicts


ERROR_RC = {"modelcdr": {2}, "picklescan": {2}, "modelscan": {2, 3}, "fickling": set(), "modelaudit": {2}}


# modelaudit posts telemetry (and waits on its DNS failures when offline): off for every tool.
ENV = dict(os.environ, PROMPTFOO_DISABLE_TELEMETRY="1", NO_ANALYTICS="1")
# fickling --check-safety writes safety_results.json into its working directory: not the repo's.
SCRATCH = tempfile.mkdtemp(prefix="compare_scanners.")


def run(argv, timeout=120):
    t = time.monotonic()
    try:
        p = subprocess.run([str(a) for a in argv], capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL,
                           env=ENV, cwd=SCRATCH)
        rc, out = p.returncode, (p.stdout + p.stderr).decode("utf-8", "replace")
    except subprocess.TimeoutExpired:
        rc, out = -9, "timeout"
    return rc, out, time.monotonic() - t


def verdict(name, flagged, rc, out):
    if flagged(rc, out):
        return "flagged"
    if rc == 0:
        return "clean"
    if rc in ERROR_RC[name] or rc < 0 or rc > 1:
        return "error"
    return "clean"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--venv", required=True)
    ap.add_argument("--modelcdr", required=True)
    ap.add_argument("--corpus", required=True)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--limit", type=int, default=0)
    ap.add_argument("--json")
    ap.add_argument("--only", help="comma-separated tool names")
    ap.add_argument("--modelaudit-sample", type=int, default=6)
    ap.add_argument("--repeat", type=int, default=7, help="whole-folder runs per tool (median)")
    a = ap.parse_args()
    # absolute: the tools run in a scratch directory
    corpus = Path(a.corpus).resolve()
    a.venv, a.modelcdr = str(Path(a.venv).resolve()), str(Path(a.modelcdr).resolve())
    recs = json.loads((corpus / "manifest.json").read_text())
    recs = [r for r in recs if (corpus / r["path"]).is_file()]
    if a.limit:
        recs = recs[:a.limit]
    results = {}
    for name, (per_file, folder, flagged) in tools(a.venv, a.modelcdr).items():
        if a.only and name not in a.only.split(","):
            continue
        sample = recs[::max(1, len(recs) // a.modelaudit_sample)][:a.modelaudit_sample] if name == "modelaudit" else recs
        with cf.ThreadPoolExecutor(a.jobs) as ex:
            runs = dict(zip((r["path"] for r in sample), ex.map(lambda r: run(per_file + [corpus / r["path"]]), sample)))
        whole, folder_out = None, ""
        if folder is not None and not a.limit:
            # median of --repeat runs (modelaudit, ~minutes a run, once): the speed ratio below
            times = []
            for _ in range(1 if name == "modelaudit" else max(1, a.repeat)):
                rc, folder_out, t = run(folder + [corpus.resolve()], timeout=3600)
                times.append(t)
            whole = statistics.median(times)
        folder_verdicts = modelaudit_verdicts(folder_out, corpus, recs) if name == "modelaudit" else {}
        per = []
        for r in recs:
            rc, out, secs = runs.get(r["path"], (None, "", None))
            v = folder_verdicts.get(r["path"]) if name == "modelaudit" else verdict(name, flagged, rc, out)
            per.append({"path": r["path"], "label": r["label"], "verdict": v, "rc": rc, "seconds": secs})
        results[name] = {"files": per, "folder_seconds": whole}
    rows = []
    mal = sum(r["label"] == "malicious" for r in recs)
    ben = len(recs) - mal
    for name, res in results.items():
        f = res["files"]
        tp = sum(x["label"] == "malicious" and x["verdict"] == "flagged" for x in f)
        fp = sum(x["label"] == "benign" and x["verdict"] == "flagged" for x in f)
        err_m = sum(x["label"] == "malicious" and x["verdict"] == "error" for x in f)
        err_b = sum(x["label"] == "benign" and x["verdict"] == "error" for x in f)
        per_file = sorted(x["seconds"] for x in f if x["seconds"] is not None)
        rows.append((name, f"{tp}/{mal}", f"{fp}/{ben}", f"{err_m}", f"{err_b}",
                     "n/a" if res["folder_seconds"] is None else f"{res['folder_seconds']:.2f}",
                     f"{per_file[len(per_file) // 2] * 1000:.0f}",
                     f"{sum(per_file):.1f}" if len(per_file) == len(f) else f"~{per_file[len(per_file) // 2] * len(f):.0f} (est.)"))
    # Malicious files another tool flags that modelcdr does not.
    cdr = {x["path"]: x["verdict"] for x in results.get("modelcdr", {"files": []})["files"]}
    missed = sorted({x["path"] for n, res in results.items() if n != "modelcdr" for x in res["files"]
                     if x["label"] == "malicious" and x["verdict"] == "flagged" and cdr.get(x["path"]) != "flagged"})
    hdr = ("tool", "TP (malicious flagged)", "FP (benign flagged)", "errors on malicious", "errors on benign",
           "whole folder s", "median per file ms", "sum per file s")
    print("| " + " | ".join(hdr) + " |")
    print("|" + "---|" * len(hdr))
    for row in rows:
        print("| " + " | ".join(row) + " |")
    # Issue 11 target: modelcdr's whole-folder scan >= 20x faster than the fastest other tool.
    others = {n: r["folder_seconds"] for n, r in results.items() if n != "modelcdr" and r["folder_seconds"]}
    mine = results.get("modelcdr", {}).get("folder_seconds")
    if mine and others:
        fastest = min(others, key=others.get)
        print(f"\nwhole folder, median of {a.repeat}: modelcdr {mine:.3f} s, fastest other {fastest} "
              f"{others[fastest]:.3f} s: modelcdr is {others[fastest] / mine:.1f}x faster (target >= 20x)")
    print(f"\nmalicious files some other tool flags and modelcdr does not: {len(missed)}")
    for p in missed:
        print("  " + p)
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
