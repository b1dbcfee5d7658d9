#!/usr/bin/env python3
"""modelcdr.load against torch.load(weights_only=True), torch.load(mmap=True) and
safetensors.torch.load_file, on one generated state dict (default 1 GiB, float32).

Each loader runs in a fresh interpreter (so peak RSS is its own), with a warm page cache,
BENCH_REPEAT times, the loaders taking turns. Every tensor is touched (a sum over a page
per 64 KiB) so lazy loaders pay for their reads. Reported: median wall time of load+touch,
peak RSS (VmHWM) above the interpreter's baseline after `import torch, modelcdr`, and the ratios
the targets are stated in (bench/README.md), in wall time and in CPU seconds (user+sys of the
load, which a busy machine inflates less):
  modelcdr.load            <= 1.0 x torch.load(weights_only=True)
  modelcdr.load(mmap=True) <= 1.2 x safetensors load_file
  peak RSS above baseline  <= tensor bytes + 64 MiB
Usage: .venv/bin/python bench/bench_python_load.py   (BENCH_SIZE_MB, BENCH_TENSORS, BENCH_REPEAT,
BENCH_DIR, BENCH_STRICT=1: exit 1 when a target is missed)
"""
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import json, resource, sys, time
import torch, modelcdr
def hwm():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime
base = hwm()
kind, pt, st = sys.argv[1], sys.argv[2], sys.argv[3]
c0 = cpu()
t0 = time.perf_counter()
if kind == "modelcdr":
    sd = modelcdr.load(pt)
elif kind == "modelcdr-mmap":
    sd = modelcdr.load(pt, mmap=True)
elif kind == "torch":
    sd = torch.load(pt, weights_only=True)
elif kind == "torch-mmap":
    sd = torch.load(pt, weights_only=True, mmap=True)
elif kind == "safetensors":
    from safetensors.torch import load_file
    sd = load_file(st)
s = 0.0
for t in sd.values():
    s += float(t.view(-1)[::16384].sum())
dt = time.perf_counter() - t0
print(json.dumps({"time": dt, "cpu": cpu() - c0, "rss": hwm() - base, "check": s}))
"""

KINDS = ["modelcdr", "torch", "modelcdr-mmap", "torch-mmap", "safetensors"]


def main():
    size_mb = int(os.environ.get("BENCH_SIZE_MB", "1024"))
    n = int(os.environ.get("BENCH_TENSORS", "16"))
    repeat = int(os.environ.get("BENCH_REPEAT", "3"))
    import torch
    from safetensors.torch import save_file

    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR")) as d:
        pt, st = Path(d) / "sd.pt", Path(d) / "sd.safetensors"
        per = size_mb * (1 << 20) // 4 // n
        sd = {f"layer{i}.weight": torch.randn(per) for i in range(n)}
        torch.save(sd, pt)
        save_file(sd, st)
        tensor_bytes = sum(t.numel() * 4 for t in sd.values())
        del sd
        runs = {k: [] for k in KINDS}
        for _ in range(repeat):
            for k in KINDS:
                for f in (pt, st):  # warm page cache
                    with open(f, "rb") as fh:
                        while fh.read(1 << 24):
                            pass
                out = subprocess.run([sys.executable, "-c", CHILD, k, str(pt), str(st)], capture_output=True,
                                     text=True, check=True)
                runs[k].append(json.loads(out.stdout.strip().splitlines()[-1]))
    med = {k: (statistics.median(r["time"] for r in v), statistics.median(r["rss"] for r in v),
               statistics.median(r["cpu"] for r in v)) for k, v in runs.items()}
    checks = {k: v[0]["check"] for k, v in runs.items()}
    assert len(set(round(c, 3) for c in checks.values())) == 1, f"loaders disagree: {checks}"
    print(f"state dict: {tensor_bytes / 2**20:.0f} MiB in {n} float32 tensors; median of {repeat}")
    for k, (t, rss, c) in med.items():
        print(f"  {k:14s} {t:7.3f} s  cpu {c:7.3f} s   peak RSS +{rss / 2**20:7.1f} MiB")
    r1 = med["modelcdr"][0] / med["torch"][0]
    r2 = med["modelcdr-mmap"][0] / med["safetensors"][0]
    r3 = med["modelcdr-mmap"][0] / med["torch-mmap"][0]
    rss_budget = tensor_bytes + (64 << 20)
    print(f"ratio modelcdr.load / torch.load(weights_only=True) = {r1:.2f}   (target <= 1.0)")
    print(f"ratio modelcdr.load(mmap) / safetensors load_file   = {r2:.2f}   (target <= 1.2)")
    print(f"ratio modelcdr.load(mmap) / torch.load(mmap=True)   = {r3:.2f}")
    # On a loaded machine wall time measures the neighbours too: the same ratios in CPU seconds.
    c1 = med["modelcdr"][2] / med["torch"][2]
    c2 = med["modelcdr-mmap"][2] / med["safetensors"][2]
    print(f"cpu ratio modelcdr.load / torch.load = {c1:.2f}   modelcdr.load(mmap) / safetensors = {c2:.2f}")
    worst = max(med["modelcdr"][1], med["modelcdr-mmap"][1])
    print(f"modelcdr peak RSS above baseline {worst / 2**20:.1f} MiB, budget {rss_budget / 2**20:.0f} MiB")
    ok = r1 <= 1.0 and r2 <= 1.2 and worst <= rss_budget
    print("targets:", "met" if ok else "MISSED")
    if os.environ.get("BENCH_STRICT") == "1" and not ok:
        sys.exit(1)


if __name__ == "__main__":
    main()
