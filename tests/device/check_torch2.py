"""Device-machine check (torch 2.x): our outputs load with torch 2.x's weights_only loader and
hold the same content as the inputs. Run by hand where a torch 2.x machine is lent:

    python3 tests/device/check_torch2.py device_check/manifest.json

The manifest (made by tests/device/make_pairs.sh on the dev machine) lists pairs
{"original": path, "disarmed": path, "kind": "pt" | "safetensors" | "expect_fail"}; originals are
benign files we generated or the CC0 benign torch2x corpus files, never malicious samples.
Nothing here is part of CI: CI has no torch 2.x.
"""
import json
import math
import sys

import torch


def same(a, b, path="root"):
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)):
            return f"{path}: tensor vs {type(b).__name__}"
        if a.dtype != b.dtype or a.shape != b.shape:
            return f"{path}: {a.dtype}{tuple(a.shape)} vs {b.dtype}{tuple(b.shape)}"
        if a.is_sparse:
            a, b = a.to_dense(), b.to_dense()
        if a.is_quantized:
            a, b = a.int_repr(), b.int_repr()
        if a.layout != torch.strided:
            a, b = a.to_dense(), b.to_dense()
        if a.stride() != b.stride():
            return f"{path}: stride {a.stride()} vs {b.stride()}"
        if a.numel() and not torch.equal(a.contiguous().view(torch.uint8) if a.element_size() == 1 else a, b):
            if not torch.equal(a.cpu().contiguous().flatten().view(torch.uint8), b.cpu().contiguous().flatten().view(torch.uint8)):
                return f"{path}: bytes differ"
        return None
    if isinstance(a, dict):
        if not isinstance(b, dict) or list(a) != list(b):
            return f"{path}: keys {list(a)[:5]} vs {list(b)[:5] if isinstance(b, dict) else type(b)}"
        for k in a:
            r = same(a[k], b[k], f"{path}.{k}")
            if r:
                return r
        return None
    if isinstance(a, (list, tuple)):
        if len(a) != len(b):
            return f"{path}: length {len(a)} vs {len(b)}"
        for i, (x, y) in enumerate(zip(a, b)):
            r = same(x, y, f"{path}[{i}]")
            if r:
                return r
        return None
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return None
    return None if a == b else f"{path}: {a!r} vs {b!r}"


def main(manifest_path):
    pairs = json.load(open(manifest_path))
    failures = 0
    for p in pairs:
        kind = p.get("kind", "pt")
        try:
            if kind == "safetensors":
                from safetensors.torch import load_file
                got = load_file(p["disarmed"])
                want = p.get("original_is_pt") and torch.load(p["original"], weights_only=False, map_location="cpu")
                if isinstance(want, dict):
                    want = {k: v for k, v in want.items() if isinstance(v, torch.Tensor)}
                    missing = set(want) - set(got)
                    err = f"missing {sorted(missing)[:5]}" if missing else None
                    for k in want:
                        if not err and k in got and not torch.equal(want[k].contiguous(), got[k]):
                            err = f"{k}: differs"
                else:
                    err = None
            else:
                got = torch.load(p["disarmed"], weights_only=True, map_location="cpu")
                want = torch.load(p["original"], weights_only=False, map_location="cpu")
                err = same(want, got) if p.get("compare", True) else None
        except Exception as e:  # noqa: BLE001 - report every failure
            err = f"{type(e).__name__}: {e}"
        status = "ok" if not err else "FAIL"
        failures += bool(err)
        print(f"{status:4} {kind:11} {p['disarmed']}" + (f"  -- {err}" if err else ""))
    print(f"{len(pairs) - failures} passed, {failures} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
