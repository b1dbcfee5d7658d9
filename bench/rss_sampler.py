#!/usr/bin/env python3
"""Run a command and report its peak memory split by kind, sampled from /proc/PID/status every 5 ms.

GNU time's "Maximum resident set size" counts file-backed pages too: a tool that mmaps a 1 GiB input and
reads it once shows ~1 GiB RSS although those pages are shared page cache.  RssAnon (heap, anonymous
mmaps) is what the "peak RSS <= 64 MiB" target is really about; both are printed.
Usage: rss_sampler.py CMD [ARGS...]
"""
import subprocess
import sys
import time


def read_status(pid):
    vals = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                k, _, v = line.partition(":")
                if k in ("VmRSS", "RssAnon", "RssFile", "RssShmem", "VmHWM"):
                    vals[k] = int(v.split()[0]) / 1024.0
    except (FileNotFoundError, ProcessLookupError, ValueError):
        pass
    return vals


def main():
    p = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL)
    peak = {}
    while p.poll() is None:
        for k, v in read_status(p.pid).items():
            peak[k] = max(peak.get(k, 0.0), v)
        time.sleep(0.005)
    print("sampled peaks (MiB): " + ", ".join(f"{k} {v:.1f}" for k, v in sorted(peak.items())))
    sys.exit(p.returncode)


if __name__ == "__main__":
    main()
