#!/usr/bin/env python3
"""The differential test of tests/e2e/test_unpickler_differential.py, run longer.

    bench/differential.py --seconds 600 [--seed-start 1000] [--batch 400] [--bin build/modelcdr]

Generates pickles (tests/e2e/pickle_gen.py), runs them through `modelcdr scan --json` and through
CPython's C unpickler with inert stand-ins in a subprocess (tests/e2e/cpython_ref.py), and prints the
number of streams, how many each side read to STOP, and every disagreement (tests/e2e/differential.py
states the rule). Exit 1 when there is one. Nothing from a stream is executed.
"""
import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "e2e"))
import differential  # noqa: E402
import pickle_gen  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=300)
    ap.add_argument("--seed-start", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=400)
    ap.add_argument("--bin", default=str(REPO / "build" / "modelcdr"))
    a = ap.parse_args()
    deadline = time.monotonic() + a.seconds
    seed, total, bad = a.seed_start, 0, []
    with tempfile.TemporaryDirectory() as tmp:
        while time.monotonic() < deadline:
            streams = list(pickle_gen.streams(seed, a.batch))
            work = Path(tmp) / f"b{seed}"
            work.mkdir()
            found = differential.disagreements(a.bin, streams, work)
            for b in found:
                b["seed"] = seed
            bad += found
            total += len(streams)
            seed += 1
    print(f"{total} streams (seeds {a.seed_start}..{seed - 1}), {len(bad)} disagreements")
    for b in bad[:20]:
        print(json.dumps({k: b[k] for k in ("seed", "stream", "problem")}))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
