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
import subprocess
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
        "modelaudit": ([b / "modelaudit", "scan"], [b / "modelaudit", "scan"], lambda rc, out: rc == 1),
    }


ERROR_RC = {"modelcdr": {2}, "picklescan": {2}, "modelscan": {2, 3}, "fickling": set(), "modelaudit": {2}}


def run(argv, timeout=120):
    t = time.monotonic()
    try:
        p = subprocess.run([str(a) for a in argv], capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL)
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
    a = ap.parse_args()
    corpus = Path(a.corpus)
    recs = json.loads((corpus / "manifest.json").read_text())
    recs = [r for r in recs if (corpus / r["path"]).is_file()]
    if a.limit:
        recs = recs[:a.limit]
    results = {}
    for name, (per_file, folder, flagged) in tools(a.venv, a.modelcdr).items():
        with cf.ThreadPoolExecutor(a.jobs) as ex:
            runs = list(ex.map(lambda r: run(per_file + [corpus / r["path"]]), recs))
        per = [{"path": r["path"], "label": r["label"], "verdict": verdict(name, flagged, rc, out), "rc": rc,
                "seconds": s} for r, (rc, out, s) in zip(recs, runs)]
        whole = None
        if folder is not None and not a.limit:
            rc, out, whole = run(folder + [corpus], timeout=1800)
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
        per_file = sorted(x["seconds"] for x in f)
        rows.append((name, f"{tp}/{mal}", f"{fp}/{ben}", f"{err_m}", f"{err_b}",
                     "n/a" if res["folder_seconds"] is None else f"{res['folder_seconds']:.2f}",
                     f"{per_file[len(per_file) // 2] * 1000:.0f}", f"{sum(per_file):.1f}"))
    # Malicious files another tool flags that modelcdr does not.
    cdr = {x["path"]: x["verdict"] for x in results["modelcdr"]["files"]}
    missed = sorted({x["path"] for n, res in results.items() if n != "modelcdr" for x in res["files"]
                     if x["label"] == "malicious" and x["verdict"] == "flagged" and cdr[x["path"]] != "flagged"})
    hdr = ("tool", "TP (malicious flagged)", "FP (benign flagged)", "errors on malicious", "errors on benign",
           "whole folder s", "median per file ms", "sum per file s")
    print("| " + " | ".join(hdr) + " |")
    print("|" + "---|" * len(hdr))
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print(f"\nmalicious files some other tool flags and modelcdr does not: {len(missed)}")
    for p in missed:
        print("  " + p)
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
