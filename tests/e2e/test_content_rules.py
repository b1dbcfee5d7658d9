"""Content that must not pass (issue 16 items 14-18), each input made here by a generator.

- duplicate dict keys: the last value wins, as in CPython's unpickler (every writer);
- a bad CRC on any member of a torch zip rejects the file in disarm and is high in scan;
- str/bytes values that hold a pickle (after no-op prefixes, before trailing bytes, base64/hex);
- terminal escapes from the input never reach text output;
- report truth: dropped safetensors metadata counts as removed, architecture names are vetted.

Inputs are written as bytes and never unpickled; outputs are read with
torch.load(weights_only=True) or the static loader in vocab.py.
"""
from __future__ import annotations

import base64
import collections
import io
import json
import os
import pickle
import struct
import zipfile
from pathlib import Path

import pytest

from conftest import disarm, explain, require_bin, run_cli
import vocab

torch = pytest.importorskip("torch")

# a classic protocol-0 "os.system" pickle; written as bytes, never loaded
EVIL = b"cos\nsystem\n(S'echo pwned'\ntR."


@pytest.fixture(autouse=True)
def _needs_bin():
    require_bin()


def rewrite_zip(src, dst, edit=lambda name, data: data, extra=()):
    """Re-pack a zip (valid CRCs, stored), passing members through edit(name, data); extra = [(name, data)]."""
    with zipfile.ZipFile(src) as zi, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zo:
        for info in zi.infolist():
            zo.writestr(info.filename, edit(info.filename, zi.read(info.filename)))
        for name, data in extra:
            zo.writestr(name, data)


def rename_pickled_key(src, dst, old, new):
    """Re-pack a torch zip with the one BINUNICODE string `old` in data.pkl renamed to `new` (same length)."""
    assert len(old) == len(new)

    def edit(name, data):
        if name.endswith("/data.pkl"):
            key = b"X" + struct.pack("<I", len(old)) + old.encode()
            assert data.count(key) == 1
            return data.replace(key, b"X" + struct.pack("<I", len(new)) + new.encode())
        return data

    rewrite_zip(src, dst, edit)


def corrupt_member(path, name, at=b""):
    """Flip one data byte of a stored member (the last byte of `at` in it, else its first byte) so
    its CRC no longer matches; the directory is untouched."""
    with zipfile.ZipFile(path) as z:
        info = z.getinfo(name)
        content = z.read(name)
    b = bytearray(Path(path).read_bytes())
    off = info.header_offset
    name_len, extra_len = struct.unpack("<HH", b[off + 26:off + 30])
    data = off + 30 + name_len + extra_len
    assert info.file_size > 0 and info.compress_type == zipfile.ZIP_STORED
    pos = content.index(at) + len(at) - 1 if at else 0
    b[data + pos] ^= 0x01
    Path(path).write_bytes(bytes(b))


def only_inputs_left(tmp_path, *inputs):
    """A rejected run leaves neither output nor temporary file."""
    left = sorted(p.name for p in Path(tmp_path).iterdir())
    assert left == sorted(Path(i).name for i in inputs), left


def load_output(path):
    return torch.load(str(path), weights_only=True)


def read_safetensors(path):
    b = Path(path).read_bytes()
    n = struct.unpack("<Q", b[:8])[0]
    hdr = json.loads(b[8:8 + n])
    meta = hdr.pop("__metadata__", None)
    data = b[8 + n:]
    return meta, {k: data[v["data_offsets"][0]:v["data_offsets"][1]] for k, v in hdr.items()}


def write_safetensors(path, tensors, metadata=None):
    hdr = {}
    if metadata is not None:
        hdr["__metadata__"] = metadata
    data = b""
    for k, raw in tensors.items():
        hdr[k] = {"dtype": "F32", "shape": [len(raw) // 4], "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    h = json.dumps(hdr).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    Path(path).write_bytes(struct.pack("<Q", len(h)) + h + data)


# ------------------------------------------------------------------------------- 14 duplicate keys
def dup_key_checkpoint(tmp_path):
    """{'w': zeros(2), 'w': ones(2)}: a state dict whose second key is renamed to the first."""
    src = tmp_path / "src.pt"
    torch.save(collections.OrderedDict([("w", torch.zeros(2)), ("x", torch.ones(2))]), src)
    dup = tmp_path / "dup.pt"

    rename_pickled_key(src, dup, "x", "w")
    src.unlink()
    return dup


def test_duplicate_key_last_value_wins_pt(tmp_path):
    dup = dup_key_checkpoint(tmp_path)
    out = tmp_path / "out.pt"
    rc, so, se, rep = disarm(dup, out, report=tmp_path / "r.json")
    assert rc == 1, explain(rc, so, se)
    sd = load_output(out)
    assert list(sd) == ["w"] and torch.equal(sd["w"], torch.ones(2)), sd
    assert any(f["rule"] == "cdr.duplicate-key" for f in rep["files"][0]["removed"]), rep


def test_duplicate_key_last_value_wins_safetensors(tmp_path):
    dup = dup_key_checkpoint(tmp_path)
    out = tmp_path / "out.safetensors"
    rc, so, se, _ = disarm(dup, out, "--to", "safetensors")
    assert rc == 1, explain(rc, so, se)
    _, tensors = read_safetensors(out)
    assert list(tensors) == ["w"], tensors
    assert tensors["w"] == struct.pack("<2f", 1.0, 1.0)


def raw_dict_pickle(pairs):
    """Protocol-2 pickle of a dict built with SETITEMS from (key_bytes, value_bytes) opcode pairs."""
    body = b"".join(k + v for k, v in pairs)
    return b"\x80\x02}(" + body + b"u."


def uni(s):
    e = s.encode()
    return b"X" + struct.pack("<I", len(e)) + e


def test_equal_keys_of_different_types_merge(tmp_path):
    # {1: 'a', True: 'b', 1.0: 'c', 'k': 'd'}: Python keeps one key 1 (the first) with value 'c'
    data = raw_dict_pickle([(b"K\x01", uni("a")), (b"\x88", uni("b")), (b"G" + struct.pack(">d", 1.0), uni("c")),
                            (uni("k"), uni("d"))])
    src = tmp_path / "in.pkl"
    src.write_bytes(data)
    out = tmp_path / "out.pt"
    rc, so, se, _ = disarm(src, out)
    assert rc == 1, explain(rc, so, se)
    got = load_output(out)
    assert list(got.items()) == [(1, "c"), ("k", "d")], got
    assert type(list(got)[0]) is int


def test_nan_key_is_rejected(tmp_path):
    data = raw_dict_pickle([(b"G" + struct.pack(">d", float("nan")), uni("a")), (uni("k"), uni("d"))])
    src = tmp_path / "in.pkl"
    src.write_bytes(data)
    out = tmp_path / "out.pt"
    rc, so, se, _ = disarm(src, out)
    assert rc == 2 and "cdr.ambiguous-key" in se, explain(rc, so, se)
    only_inputs_left(tmp_path, src)


def test_duplicate_parameter_in_whole_model(tmp_path):
    # a whole nn.Module whose _parameters holds 'weight' twice: torch.load keeps the last
    m = torch.nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        m.weight.zero_()
    m.register_parameter("weighu", torch.nn.Parameter(torch.ones(2, 2)))
    src = tmp_path / "src.pt"
    torch.save(m, src)
    dup = tmp_path / "dup.pt"

    rename_pickled_key(src, dup, "weighu", "weight")
    out = tmp_path / "out.pt"
    rc, so, se, _ = disarm(dup, out)
    assert rc == 1, explain(rc, so, se)
    sd = load_output(out)
    assert list(sd) == ["weight"] and torch.equal(sd["weight"], torch.ones(2, 2)), sd
    arch = json.loads(Path(str(out) + ".architecture.json").read_text())
    assert arch["modules"][0]["parameters"] == ["weight"], arch


# ------------------------------------------------------------------------------- 15 CRCs
def torch2_style_checkpoint(tmp_path):
    """A torch checkpoint with the bookkeeping records torch 2.x writes, plus an unused record."""
    src = tmp_path / "src.pt"
    torch.save({"w": torch.arange(4.0)}, src)
    out = tmp_path / "in.pt"
    with zipfile.ZipFile(src) as z:
        names = z.namelist()
    prefix = names[0].split("/")[0]
    wanted = [(f"{prefix}/.format_version", b"1"), (f"{prefix}/.storage_alignment", b"64"),
              (f"{prefix}/.data/serialization_id", b"1234567890123456789012345678901234567890"),
              (f"{prefix}/data/99", b"\0" * 16), (f"{prefix}/extra.txt", b"hello")]
    # torch 2.x already writes the bookkeeping records; add only what this torch left out
    rewrite_zip(src, out, extra=[(n, d) for n, d in wanted if n not in names])
    src.unlink()
    return out, prefix


@pytest.mark.parametrize("member", [".format_version", ".storage_alignment", ".data/serialization_id", "data/99",
                                    "extra.txt", "version", "data.pkl"])
def test_bad_crc_on_any_member_rejects(tmp_path, member):
    inp, prefix = torch2_style_checkpoint(tmp_path)
    # control: the untouched file is accepted
    rc, so, se, _ = disarm(inp, tmp_path / "ok.pt")
    assert rc in (0, 1), explain(rc, so, se)
    (tmp_path / "ok.pt").unlink()
    # in data.pkl, a key changes ('w' -> 'v'): the pickle still parses, only the CRC tells
    corrupt_member(inp, f"{prefix}/{member}", at=b"X\x01\x00\x00\x00w" if member == "data.pkl" else b"")
    rc, so, se = run_cli("scan", "--json", inp)
    doc = json.loads(so)
    bad = [f for f in doc["files"][0]["findings"] if f["rule"] == "zip.bad-crc"]
    assert rc == 1 and bad and bad[0]["severity"] == "high", so
    out = tmp_path / "out.pt"
    rc, so, se, _ = disarm(inp, out)
    assert rc == 2 and "zip.bad-crc" in se, explain(rc, so, se)
    only_inputs_left(tmp_path, inp)


# ------------------------------------------------------------------------------- 16 nested pickles
PROTO4 = pickle.dumps({"a": 1}, protocol=4)  # a data-only pickle made here, never loaded
NESTED = {
    "raw": EVIL,
    "noop-prefix": b"N0" + EVIL,
    "newline-after-stop": EVIL + b"\n",
    "protocol4-trailing": PROTO4 + b"\r\n",
    "base64-noop-prefix": base64.b64encode(b"N0" + EVIL),
    "base64-newline": base64.b64encode(EVIL + b"\n"),
    "base64-wrapped-lines": base64.encodebytes(b"N0" + EVIL),
    "urlsafe-unpadded": base64.urlsafe_b64encode(b"(" + EVIL[:-1] + b"0N.").rstrip(b"="),
    "hex-noop-prefix": (b"N0" + EVIL).hex().encode(),
    "base64-of-hex": base64.b64encode((EVIL + b"\n").hex().encode()),
}
PLAIN = ["conv1.weight", "hello world", "abcd", "deadbeef", base64.b64encode(b"just some text").decode(),
         "c", "N", "0.5", "layer.0.bias", "QUFBQQ=="]


# bytes that are one pickle stream (raw, not encoded) are disarmed and rebuilt (issue 12):
# what a plain-data unpickler reads from the rebuilt bytes
REBUILT = {"raw": None, "noop-prefix": None, "newline-after-stop": None, "protocol4-trailing": {"a": 1}}


@pytest.mark.parametrize("kind", sorted(NESTED))
@pytest.mark.parametrize("as_bytes", [False, True])
def test_nested_pickle_value_dropped(tmp_path, kind, as_bytes):
    if as_bytes and kind in REBUILT:
        pytest.skip("rebuilt, not dropped: test_nested_pickle_bytes_rebuilt")
    payload = NESTED[kind]
    value = payload if as_bytes else payload.decode("latin1")
    src = tmp_path / "in.pt"
    torch.save({"w": torch.ones(2), "note": value}, src)
    rc, so, se = run_cli("scan", "--json", src)
    rules = {f["rule"] for f in json.loads(so)["files"][0]["findings"]}
    assert "pickle.nested-pickle" in rules, so
    out = tmp_path / "out.pt"
    rc, so, se, _ = disarm(src, out)
    assert rc == 1, explain(rc, so, se)
    got = load_output(out)
    assert got["note"] is None and torch.equal(got["w"], torch.ones(2)), got


@pytest.mark.parametrize("kind", sorted(REBUILT))
def test_nested_pickle_bytes_rebuilt(tmp_path, kind):
    """The inner pickle is rebuilt by our writer: no input byte of it survives, its call is gone."""
    import pickletools

    src = tmp_path / "in.pt"
    torch.save({"w": torch.ones(2), "note": NESTED[kind]}, src)
    out = tmp_path / "out.pt"
    rc, so, se, rep = disarm(src, out, report=tmp_path / "r.json")
    assert rc == 1, explain(rc, so, se)
    rules = [f["rule"] for f in rep["files"][0]["findings"]]
    assert "cdr.nested-pickle-rebuilt" in rules, rules
    got = load_output(out)
    inner = got["note"]
    assert isinstance(inner, bytes) and inner != NESTED[kind]
    assert b"system" not in inner and b"echo" not in inner
    names = [op.name for op, _a, _p in pickletools.genops(inner)]
    assert "GLOBAL" not in names and "STACK_GLOBAL" not in names and "REDUCE" not in names, names
    assert vocab.static_load(inner) == REBUILT[kind]
    assert torch.equal(got["w"], torch.ones(2))


def test_nested_pickle_inside_nested_pickle_is_bounded(tmp_path):
    """Pickles nested beyond the recursion bound are dropped, never passed through."""
    import pickle

    value = {"x": 1}
    for _ in range(6):
        value = pickle.dumps(value, protocol=4)
    src = tmp_path / "in.pt"
    torch.save({"note": value}, src)
    out = tmp_path / "out.pt"
    rc, so, se, _ = disarm(src, out)
    assert rc == 1, explain(rc, so, se)
    inner, levels = load_output(out)["note"], 0
    while isinstance(inner, bytes):
        inner, levels = vocab.static_load(inner), levels + 1
    assert inner is None and 1 <= levels <= 4, (levels, inner)


def test_plain_strings_kept(tmp_path):
    src = tmp_path / "in.pt"
    torch.save({"w": torch.ones(2), "notes": PLAIN, "raw": [s.encode() for s in PLAIN]}, src)
    out = tmp_path / "out.pt"
    rc, so, se, _ = disarm(src, out)
    assert rc == 0, explain(rc, so, se)
    got = vocab.static_torch_load(out)  # bytes: torch 1.13's weights_only loader lacks them
    assert got["notes"] == PLAIN and got["raw"] == [s.encode() for s in PLAIN]


def test_storage_keys_are_not_nested_pickles(tmp_path):
    # torch.save names storages "0", "1", ...; keys "8002".."8005" read as hex are a protocol
    # header (80 02) and were taken for nested pickles, so every state dict of 8003+ tensors
    # lost tensors on disarm. Storage keys are record names, never written out.
    n = 8010
    sd = collections.OrderedDict((f"t{i}", torch.full((2,), float(i))) for i in range(n))
    src = tmp_path / "in.pt"
    torch.save(sd, src)
    rc, so, se = run_cli("scan", "--json", src)
    assert rc == 0, explain(rc, so, se)
    assert json.loads(so)["files"][0]["findings"] == [], so[:2000]
    out = tmp_path / "out.pt"
    rc, so, se, _ = disarm(src, out)
    assert rc == 0, explain(rc, so, se)
    got = torch.load(out, weights_only=True)
    assert list(got) == list(sd)
    assert all(torch.equal(got[k], sd[k]) for k in ("t8002", "t8003", "t8004", "t8005", "t8009"))


@pytest.mark.parametrize("kind", sorted(NESTED))
def test_nested_pickle_in_safetensors_metadata(tmp_path, kind):
    src = tmp_path / "in.safetensors"
    write_safetensors(src, {"w": struct.pack("<2f", 1, 2)}, metadata={"format": "pt", "x": NESTED[kind].decode("latin1")})
    out = tmp_path / "out.safetensors"
    rc, so, se, rep = disarm(src, out, "--to", "safetensors", report=tmp_path / "r.json")
    assert rc == 1, explain(rc, so, se)
    assert any(f["rule"] == "safetensors.metadata-pickle" for f in rep["files"][0]["removed"]), rep
    meta, _ = read_safetensors(out)
    assert meta == {"format": "pt"}, meta


# ------------------------------------------------------------------------------- 17 terminal escapes
FAKE = "\x1b]0;owned\x07\x1b[2K\rmodel.pt: torch-zip, 1 tensors (16 bytes), clean\nall files clean\x9b31m"


def assert_no_escapes(text):
    for bad in ("\x1b", "\x07", "\r", "\x9b", "\u202e"):
        assert bad not in text, repr(text[:2000])
    assert "\nall files clean" not in text and not text.startswith("all files clean"), repr(text[:2000])


def test_zip_entry_name_escaped(tmp_path):
    src = tmp_path / "src.pt"
    torch.save({"w": torch.ones(2)}, src)
    inp = tmp_path / "in.pt"
    with zipfile.ZipFile(src) as z:
        prefix = z.namelist()[0].split("/")[0]
    rewrite_zip(src, inp, extra=[(f"{prefix}/{FAKE}", b"x")])
    for args in (["scan", inp], ["disarm", inp, "-o", tmp_path / "out.pt"]):
        rc, so, se = run_cli(*args)
        assert rc == 1, explain(rc, so, se)
        assert_no_escapes(so + se)
        assert "\\x1b]0;owned" in so + se  # shown, escaped
    rc, so, se = run_cli("scan", "--json", inp)
    assert any(FAKE in f["message"] for f in json.loads(so)["files"][0]["findings"])  # JSON keeps the exact text


def test_file_name_escaped(tmp_path):
    inp = tmp_path / "a\x1b[2Jb\u202e.pt"
    inp.write_bytes(EVIL)
    # scan finds the payload (1); disarm rejects the file, whose only object is the payload (2)
    for args, want in ((["scan", inp], 1), (["disarm", inp, "-o", tmp_path / "out\x1b[1m.pt"], 2)):
        rc, so, se = run_cli(*args)
        assert rc == want, explain(rc, so, se)
        assert_no_escapes(so + se)
        assert "a\\x1b[2Jb\\u202e.pt" in so + se


def test_class_name_escaped(tmp_path):
    # an object of class '__main__.Bad<ESC>...' (GLOBAL takes its name to the newline)
    data = b"\x80\x02}X\x01\x00\x00\x00oc__main__\nBad" + FAKE.replace("\n", " ").encode() + b"\n)\x81s."
    inp = tmp_path / "in.pkl"
    inp.write_bytes(data)
    for args in (["scan", inp], ["disarm", inp, "-o", tmp_path / "out.pt"]):
        rc, so, se = run_cli(*args)
        assert rc == 1, explain(rc, so, se)
        assert_no_escapes(so + se)
        assert "Bad\\x1b]0;owned" in so + se


def test_invalid_utf8_keeps_json_valid(tmp_path):
    # a zip entry name of raw bytes that are not UTF-8 (and no UTF-8 flag), ESC and a C1 CSI
    src = tmp_path / "src.pt"
    torch.save({"w": torch.ones(2)}, src)
    inp = tmp_path / "in.pt"
    with zipfile.ZipFile(src) as z:
        prefix = z.namelist()[0].split("/")[0]
    rewrite_zip(src, inp, extra=[(f"{prefix}/QQQQQQQ", b"x")])
    b = Path(inp).read_bytes()
    assert b.count(b"QQQQQQQ") == 2  # local header and central directory
    Path(inp).write_bytes(b.replace(b"QQQQQQQ", b"\xff\xfe\x1b[31m"))
    rc, so, se = run_cli("scan", "--json", inp)
    assert rc == 1, explain(rc, so, se)
    doc = json.loads(so)
    assert any("\ufffd" in f["entry"] for f in doc["files"][0]["findings"]), doc
    rc, so, se = run_cli("scan", "--sarif", inp)
    json.loads(so)
    rc, so, se = run_cli("scan", inp)
    assert_no_escapes(so)
    assert "\\xff\\xfe\\x1b[31m" in so, so


# ------------------------------------------------------------------------------- 18 report truth
def test_safetensors_metadata_dropped_counts(tmp_path):
    src = tmp_path / "in.safetensors"
    write_safetensors(src, {"w": struct.pack("<2f", 1, 2)}, metadata={"format": "pt", "note": "hello"})
    out = tmp_path / "out.pt"
    rc, so, se, rep = disarm(src, out, report=tmp_path / "r.json")
    assert rc == 1, explain(rc, so, se)
    f = rep["files"][0]
    assert f["status"] == "removed"
    assert any(x["rule"] == "convert.metadata-dropped" for x in f["removed"]), f
    assert "nothing removed" not in se


class Inner(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(2, 2)


class Outer(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.zzzzzzzzzzzzzzzz = Inner()


def test_architecture_names_vetted(tmp_path):
    src = tmp_path / "src.pt"
    torch.save(Outer(), src)
    inp = tmp_path / "in.pt"
    evil_child = b"__import__('os')"
    assert len(evil_child) == 16

    def edit(name, data):
        if name.endswith("/data.pkl"):
            assert b"zzzzzzzzzzzzzzzz" in data
            data = data.replace(b"zzzzzzzzzzzzzzzz", evil_child)
            mod = Inner.__module__.encode()
            assert b"c" + mod + b"\nInner\n" in data
            data = data.replace(b"c" + mod + b"\nInner\n", b"cos\nsystem\n")
        return data

    rewrite_zip(src, inp, edit)
    out = tmp_path / "out.pt"
    rc, so, se, rep = disarm(inp, out, report=tmp_path / "r.json")
    assert rc == 1, explain(rc, so, se)
    arch_text = Path(str(out) + ".architecture.json").read_text()
    assert "__import__" not in arch_text and "os.system" not in arch_text, arch_text
    arch = json.loads(arch_text)
    by_class = {m["class"] for m in arch["modules"]}
    assert "<rejected>" in by_class, arch
    assert any(m["path"] == "<rejected>" for m in arch["modules"]), arch
    assert any(m["path"] == "" for m in arch["modules"]), arch
    names = [f for f in rep["files"][0]["removed"] if f["rule"] == "cdr.architecture-name"]
    assert len(names) >= 2, rep
    # the weights are still there, under the (data) key names torch.load would give
    sd = load_output(out)
    assert set(sd) == {"__import__('os').lin.weight", "__import__('os').lin.bias"}, list(sd)


def test_torchscript_architecture_names_vetted(tmp_path):
    src = tmp_path / "src.pt"
    torch.jit.save(torch.jit.script(Outer()), str(src))
    inp = tmp_path / "in.pt"

    def edit(name, data):
        if name.endswith("/data.pkl"):
            assert b"zzzzzzzzzzzzzzzz" in data
            data = data.replace(b"zzzzzzzzzzzzzzzz", b"__import__('os')")
        return data

    rewrite_zip(src, inp, edit)
    out = tmp_path / "out.pt"
    rc, so, se, rep = disarm(inp, out, report=tmp_path / "r.json")
    assert rc == 1, explain(rc, so, se)
    arch_text = Path(str(out) + ".architecture.json").read_text()
    assert "__import__" not in arch_text, arch_text
    assert any(m["path"] == "<rejected>" for m in json.loads(arch_text)["modules"]), arch_text
    assert any(f["rule"] == "cdr.architecture-name" for f in rep["files"][0]["removed"]), rep
