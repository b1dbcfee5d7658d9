#!/usr/bin/python3
"""Writes small seed archives for fuzz/zip_reader_fuzz.cpp into fuzz/seeds/zip_reader/.

All inputs are our own data: zipfile archives (stored, deflated, data descriptors, zip64
extras, comment) and a torch.save of a tiny tensor dict."""
import io
import os
import sys
import zipfile

out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "seeds", "zip_reader")
os.makedirs(out, exist_ok=True)


class Unseekable(io.RawIOBase):
    def __init__(self, f):
        self.f = f

    def writable(self):
        return True

    def write(self, b):
        return self.f.write(b)


def path(name):
    return os.path.join(out, name)


with zipfile.ZipFile(path("stored.zip"), "w") as z:
    z.writestr("archive/data.pkl", b"\x80\x02}q\x00.")
    z.writestr("archive/data/0", bytes(range(24)))
    z.writestr("archive/version", b"3\n")
    z.writestr("empty", b"")

with zipfile.ZipFile(path("deflated.zip"), "w", compression=zipfile.ZIP_DEFLATED) as z:
    z.writestr("x.npy", b"\x93NUMPY\x01\x00v\x00" + b"a" * 200)
    z.writestr("y.npy", bytes(range(256)) * 4)
    z.comment = b"seed comment"

with open(path("descriptor.zip"), "wb") as raw:
    with zipfile.ZipFile(Unseekable(raw), "w") as z:
        with z.open("s1", "w") as w:
            w.write(b"streamed")
        with z.open("s2", "w") as w:
            w.write(b"more streamed data" * 4)

with zipfile.ZipFile(path("zip64.zip"), "w", compression=zipfile.ZIP_DEFLATED) as z:
    with z.open("forced", "w", force_zip64=True) as w:
        w.write(b"zip64 " * 30)

try:
    import torch

    torch.save({"a": torch.arange(6.0), "b": torch.ones(2, 2, dtype=torch.int16)}, path("torch.pt"))
except ImportError:
    print("torch not available; skipped torch.pt", file=sys.stderr)
