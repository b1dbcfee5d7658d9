"""Issue 15: disarm shares the whole blocks of tensor payloads with the input on a
copy-on-write file system (XFS with reflink), and writes exactly the same bytes as anywhere else.

The tests make small XFS and ext4 images with the Debian tools (xfsprogs, e2fsprogs), mount them
on loop devices and check the output's extents with FIEMAP. They skip, saying why, where the
machine does not allow loop mounts (not root, an unprivileged container, tools missing).
Inputs are benign checkpoints made here; outputs are loaded with torch.load(weights_only=True).
"""
from __future__ import annotations

import fcntl
import os
import shutil
import struct
import subprocess
import zipfile
from pathlib import Path

import pytest

from conftest import disarm, explain, require_bin
import vocab

torch = pytest.importorskip("torch")

MiB = 1 << 20


# ---- loop-mounted file systems ---------------------------------------------------------------

def _mount_image(base: Path, fstype: str, mkfs: list) -> Path:
    if os.geteuid() != 0:
        pytest.skip("loop mounts need root")
    if shutil.which(mkfs[0]) is None or shutil.which("mount") is None:
        pytest.skip(f"{mkfs[0]} not installed (scripts/install-deps.sh installs it)")
    img, mnt = base / f"{fstype}.img", base / f"{fstype}-mnt"
    mnt.mkdir()
    with open(img, "wb") as f:
        f.truncate(320 * MiB)  # xfs wants at least 300 MiB
    p = subprocess.run(mkfs + [str(img)], capture_output=True, text=True)
    if p.returncode != 0:
        pytest.skip(f"{mkfs[0]} failed: {p.stderr.strip()[:300]}")
    p = subprocess.run(["mount", "-o", "loop", str(img), str(mnt)], capture_output=True, text=True)
    if p.returncode != 0:
        pytest.skip(f"this machine does not allow a loop mount of {fstype}: {p.stderr.strip()[:300]}")
    return mnt


def _unmount(mnt: Path):
    subprocess.run(["umount", str(mnt)], capture_output=True)


@pytest.fixture(scope="module")
def xfs(tmp_path_factory):
    mnt = _mount_image(tmp_path_factory.mktemp("xfs"), "xfs", ["mkfs.xfs", "-q", "-f", "-m", "reflink=1"])
    yield mnt
    _unmount(mnt)


@pytest.fixture(scope="module")
def ext4(tmp_path_factory):
    mnt = _mount_image(tmp_path_factory.mktemp("ext4"), "ext4", ["mkfs.ext4", "-q", "-F"])
    yield mnt
    _unmount(mnt)


# ---- FIEMAP -----------------------------------------------------------------------------------

FS_IOC_FIEMAP = 0xC020660B
FIEMAP_FLAG_SYNC = 0x1
FIEMAP_EXTENT_SHARED = 0x2000
_HEAD = struct.Struct("=QQIIII")
_EXTENT = struct.Struct("=QQQQQIIII")


def extents(path: Path):
    """[(logical, physical, length, flags)] of a file, via FS_IOC_FIEMAP (synced first)."""
    out, start = [], 0
    with open(path, "rb") as f:
        while True:
            count = 256
            buf = bytearray(_HEAD.pack(start, (1 << 64) - 1 - start, FIEMAP_FLAG_SYNC, 0, count, 0))
            buf += bytes(_EXTENT.size * count)
            fcntl.ioctl(f.fileno(), FS_IOC_FIEMAP, buf)
            mapped = _HEAD.unpack_from(buf)[3]
            for i in range(mapped):
                lo, ph, ln, _, _, fl, _, _, _ = _EXTENT.unpack_from(buf, _HEAD.size + i * _EXTENT.size)
                out.append((lo, ph, ln, fl))
            if mapped < count:
                return out
            start = out[-1][0] + out[-1][2]


def shared_ranges(path: Path):
    return [(lo, ph, ln) for lo, ph, ln, fl in extents(path) if fl & FIEMAP_EXTENT_SHARED]


def physical_of(path: Path, offset: int, length: int):
    """Physical byte ranges holding [offset, offset+length) of a file."""
    got = []
    for lo, ph, ln, _ in extents(path):
        a, b = max(lo, offset), min(lo + ln, offset + length)
        if a < b:
            got.append((ph + a - lo, b - a))
    return got


# ---- checkpoints ------------------------------------------------------------------------------

def make_checkpoint(path: Path):
    """~13 MiB: two records over the 4 MiB kernel-copy threshold, small ones that are streamed."""
    g = torch.Generator().manual_seed(15)
    sd = {
        "embed.weight": torch.randn(2048, 1024, generator=g),  # 8 MiB
        "proj.weight": torch.randn(1201, 1003, generator=g),  # ~4.6 MiB, size not a block multiple
        "proj.bias": torch.randn(1201, generator=g),
        "norm.weight": torch.ones(1024),
        "step": torch.tensor(7),
    }
    torch.save(sd, path)
    return sd


def record_spans(path: Path):
    """{name: (data offset, size)} of the stored records of a zip."""
    spans = {}
    with zipfile.ZipFile(path) as z, open(path, "rb") as f:
        for info in z.infolist():
            f.seek(info.header_offset)
            head = f.read(30)
            name_len, extra_len = struct.unpack_from("<HH", head, 26)
            spans[info.filename] = (info.header_offset + 30 + name_len + extra_len, info.file_size)
    return spans


def big_payload_bytes(path: Path):
    return sum(size for name, (_, size) in record_spans(path).items() if "/data/" in name and size >= 4 * MiB)


def load_equal(inp: Path, out: Path):
    exp = torch.load(inp, weights_only=True)
    got = torch.load(out, weights_only=True)
    assert sorted(exp) == sorted(got)
    for k in exp:
        assert torch.equal(exp[k], got[k]), k


def run_disarm(inp: Path, out: Path, *extra):
    rc, so, se, rep = disarm(inp, out, *extra, report=str(out) + ".json")
    assert rc == 0, explain(rc, so, se)
    return rep["files"][0]


# ---- tests ------------------------------------------------------------------------------------

def test_disarm_on_xfs_shares_payload_extents(xfs):
    require_bin()
    d = xfs / "share"
    d.mkdir()
    inp, out = d / "in.pt", d / "out.pt"
    make_checkpoint(inp)
    f = run_disarm(inp, out)
    assert vocab.check_output(out) == []
    load_equal(inp, out)

    payload = big_payload_bytes(inp)
    # Whole blocks of every large record are shared; only head/tail blocks are copied.
    assert f.get("shared_bytes", 0) >= payload - 2 * 2 * 4096, f
    assert f.get("shared_bytes", 0) <= payload
    shared = shared_ranges(out)
    assert sum(ln for _, _, ln in shared) >= f.get("shared_bytes", 0)
    # The shared blocks of each output record are the input's own blocks of that record.
    in_spans, out_spans = record_spans(inp), record_spans(out)
    records = 0
    for name, (in_off, size) in in_spans.items():
        if "/data/" not in name or size < 4 * MiB:
            continue
        key = "archive/data/" + name.rsplit("/", 1)[1]
        o_off, o_size = out_spans[key]
        assert o_size == size and o_off % 4096 == in_off % 4096, (name, in_off, o_off)
        head = (4096 - in_off % 4096) % 4096
        whole = (size - head) // 4096 * 4096
        assert physical_of(out, o_off + head, whole) == physical_of(inp, in_off + head, whole), name
        records += 1
    assert records == 2


def test_output_bytes_identical_with_and_without_sharing(xfs, ext4, tmp_path):
    require_bin()
    d = xfs / "same"
    d.mkdir()
    inp = d / "in.pt"
    make_checkpoint(inp)
    shared = d / "shared.pt"
    f_shared = run_disarm(inp, shared)
    assert f_shared.get("shared_bytes", 0) > 0

    copied = d / "copied.pt"  # --no-reflink on the same file system
    f_copied = run_disarm(inp, copied, "--no-reflink")
    assert f_copied.get("shared_bytes", 0) == 0
    assert shared_ranges(copied) == []

    e = ext4 / "same"
    e.mkdir()
    shutil.copyfile(inp, e / "in.pt")
    on_ext4 = e / "out.pt"  # a file system without reflink
    assert run_disarm(e / "in.pt", on_ext4).get("shared_bytes", 0) == 0

    across = tmp_path / "across.pt"  # input on XFS, output elsewhere: EXDEV, silent fallback
    assert run_disarm(inp, across).get("shared_bytes", 0) == 0

    ref = shared.read_bytes()
    for other in (copied, on_ext4, across):
        assert other.read_bytes() == ref, other


def test_corrupt_shared_record_rejected_and_nothing_left(xfs):
    require_bin()
    d = xfs / "crc"
    d.mkdir()
    inp, out = d / "in.pt", d / "out.pt"
    make_checkpoint(inp)
    spans = record_spans(inp)
    name, (off, size) = max(((n, s) for n, s in spans.items() if "/data/" in n), key=lambda x: x[1][1])
    with open(inp, "r+b") as f:  # one bit inside the block-aligned middle: a byte that is shared
        f.seek(off + size // 2)
        b = f.read(1)
        f.seek(off + size // 2)
        f.write(bytes([b[0] ^ 1]))
    rc, so, se, _ = disarm(inp, out)
    assert rc not in (0, 1), explain(rc, so, se)
    assert "zip.bad-crc" in se, explain(rc, so, se)
    assert not out.exists()
    assert sorted(p.name for p in d.iterdir()) == ["in.pt"]  # no temporary file either


def test_input_changed_later_leaves_output_unchanged(xfs):
    require_bin()
    d = xfs / "cow"
    d.mkdir()
    inp, out = d / "in.pt", d / "out.pt"
    make_checkpoint(inp)
    assert run_disarm(inp, out).get("shared_bytes", 0) > 0
    before = out.read_bytes()
    off, size = max((s for n, s in record_spans(inp).items() if "/data/" in n), key=lambda s: s[1])
    with open(inp, "r+b") as f:  # overwrite a shared stretch of the input in place
        f.seek(off + 4096 * 4)
        f.write(b"\xff" * (4 * MiB))
        f.flush()
        os.fsync(f.fileno())
    fd = os.open(out, os.O_RDONLY)  # drop cached pages so the read below comes from the blocks
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    os.close(fd)
    assert out.read_bytes() == before  # copy on write: the output kept the old blocks
