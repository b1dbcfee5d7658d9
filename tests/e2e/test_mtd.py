"""End-to-end tests of Moving Target Defense: keygen / protect / restore / verify (docs/MTD.md).

    MODELCDR_BIN=build/modelcdr /usr/bin/python3 -m pytest tests/e2e/test_mtd.py -q

Models are made at test time from torchvision with weights=None (no downloads).
"""
from __future__ import annotations

import json
import os
import stat
import zipfile
from pathlib import Path

import pytest

from conftest import explain, import_torchvision, run_cli

pytestmark = pytest.mark.torchvision
torch = pytest.importorskip("torch")
torchvision = import_torchvision(module_level=True)


# ---- helpers -----------------------------------------------------------------------------------

def ok(rc, so, se, want=0):
    assert rc == want, explain(rc, so, se)


SIGNER_OPTIONS = ("--verify-signer", "--trust", "--allow-unsigned")


def cli(*args, want=None):
    # restore/verify require a pinned signer (test_mtd_security.py checks that); these tests
    # are about the transforms and integrity, so a map without a signer option is opened
    # with the explicit opt-in.
    if args and args[0] in ("restore", "verify") and not any(str(a) in SIGNER_OPTIONS for a in args):
        args = (*args, "--allow-unsigned")
    rc, so, se = run_cli(*args, timeout=600)
    if want is not None:
        ok(rc, so, se, want)
    return rc, so, se


def load_wo(path):
    return torch.load(path, weights_only=True)


def make_model(name):
    torch.manual_seed(0)
    m = getattr(torchvision.models, name)(weights=None).eval()
    # Random-init BatchNorm statistics are all 0/1: give them realistic values so that every
    # tensor carries information (and the classifier's predictions vary with the input).
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.1, 0.1)
                mod.running_var.uniform_(0.5, 1.5)
                mod.weight.uniform_(0.5, 1.5)
                mod.bias.uniform_(-0.1, 0.1)
    return m


@pytest.fixture(scope="module")
def models(tmp_path_factory, cdr_bin):
    d = tmp_path_factory.mktemp("mtd-models")
    out = {}
    for name in ("resnet18", "mobilenet_v3_small"):
        p = d / f"{name}.pt"
        torch.save(make_model(name).state_dict(), p)
        out[name] = p
    # a training checkpoint: model + optimizer state + counters
    m = make_model("resnet18")
    opt = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)
    m.train()
    m(torch.randn(2, 3, 64, 64)).sum().backward()
    opt.step()
    p = d / "checkpoint.pt"
    torch.save({"model": m.state_dict(), "optimizer": opt.state_dict(), "epoch": 3, "note": "ckpt"}, p)
    out["checkpoint"] = p
    return out


@pytest.fixture(scope="module")
def keys(tmp_path_factory, cdr_bin):
    d = tmp_path_factory.mktemp("mtd-keys")
    k = {}
    for who in ("publisher", "alice", "bob", "mallory"):
        cli("keygen", "-o", d / who, want=0)
        k[who] = (d / f"{who}.key", d / f"{who}.pub")
    cli("keygen", "--symmetric", "-o", d / "sym.key", want=0)
    cli("keygen", "--symmetric", "-o", d / "other-sym.key", want=0)
    k["sym"] = d / "sym.key"
    k["other-sym"] = d / "other-sym.key"
    (d / "pass.txt").write_text("correct horse battery staple\n")
    k["pass"] = d / "pass.txt"
    return k


def protect(src, out, mp, *extra):
    return cli("protect", src, "-o", out, "--map", mp, *extra, want=0)


def records(path):
    """archive/data/<key> payloads by key."""
    with zipfile.ZipFile(path) as z:
        out = {}
        for n in z.namelist():
            parts = n.split("/")
            if len(parts) == 3 and parts[1] == "data":
                out[int(parts[2])] = z.read(n)
        return out


def rewrite(src, dst, edit):
    """Re-pack a zip (valid CRCs), passing every member through edit(name, data) -> data."""
    with zipfile.ZipFile(src) as zi, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zo:
        for info in zi.infolist():
            zo.writestr(info.filename, edit(info.filename, zi.read(info.filename)))


def record_name(z, key):
    prefix = z.namelist()[0].split("/")[0]
    return f"{prefix}/data/{key}"


# ---- keygen ------------------------------------------------------------------------------------

def test_keygen_files(keys):
    sec, pub = keys["publisher"]
    assert stat.S_IMODE(os.stat(sec).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(keys["sym"]).st_mode) == 0o600
    s, p = sec.read_text().splitlines(), pub.read_text().splitlines()
    assert s[0] == p[0] == "modelcdr-key-v1"
    assert "kind: secret" in s and "kind: public" in p
    assert any(line.startswith("x25519-secret: ") for line in s)
    assert any(line.startswith("ed25519-secret: ") for line in s)
    assert not any("secret:" in line for line in p)
    assert "kind: symmetric" in keys["sym"].read_text()
    rc, so, se = cli("keygen", "-o", sec.with_suffix(""))
    assert rc == 2, explain(rc, so, se)  # refuses to overwrite


def _edited_key(tmp_path, src, name, edit):
    dst = tmp_path / name
    dst.write_text(edit(Path(src).read_text().splitlines()))
    os.chmod(dst, 0o600)
    return dst


@pytest.mark.parametrize("case", ["duplicate-key", "duplicate-kind", "public-with-key", "public-with-secret",
                                  "symmetric-with-pair"])
def test_key_file_fields_match_kind(tmp_path, keys, case):
    # Found by fuzz/key_file_fuzz.cpp: the parser let a second field replace the first and took
    # fields of another kind (a shareable .pub carrying a symmetric key). Each is now key.format.
    sec, pub = keys["publisher"]
    sym = Path(keys["sym"]).read_text().splitlines()
    secret_line = next(line for line in Path(sec).read_text().splitlines() if line.startswith("x25519-secret:"))
    edits = {
        "duplicate-key": (keys["sym"], lambda ls: "\n".join(ls + [ls[-1].replace("key:", "key:")]) + "\n"),
        "duplicate-kind": (keys["sym"], lambda ls: "\n".join(ls[:2] + ["kind: public"] + ls[2:]) + "\n"),
        "public-with-key": (pub, lambda ls: "\n".join(ls + [sym[-1]]) + "\n"),
        "public-with-secret": (pub, lambda ls: "\n".join(ls + [secret_line]) + "\n"),
        "symmetric-with-pair": (keys["sym"], lambda ls: "\n".join(ls + [Path(pub).read_text().splitlines()[2]]) + "\n"),
    }
    src, edit = edits[case]
    bad = _edited_key(tmp_path, src, "bad.key", edit)
    model = tmp_path / "in.pt"
    torch.save({"w": torch.ones(8)}, model)
    option = "--recipient" if case.startswith("public") else "--key-file"
    rc, so, se = cli("protect", model, "-o", tmp_path / "out.pt", "--map", tmp_path / "m.map", option, bad)
    assert rc == 2, explain(rc, so, se)
    assert "appears twice" in se or "does not hold" in se, se
    assert not (tmp_path / "out.pt").exists() and not (tmp_path / "m.map").exists()
    # the files keygen writes still load
    rc, so, se = cli("protect", model, "-o", tmp_path / "ok.pt", "--map", tmp_path / "ok.map", "--key-file", keys["sym"])
    assert rc == 0, explain(rc, so, se)


# ---- round trips -------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3_small", "checkpoint"])
def test_roundtrip_bit_identical(tmp_path, models, keys, name):
    src = models[name]
    disarmed = tmp_path / "disarmed.pt"
    cli("disarm", src, "-o", disarmed, want=0)
    prot, mp, rest = tmp_path / "p.pt", tmp_path / "p.map", tmp_path / "r.pt"
    protect(src, prot, mp, "--key-file", keys["sym"])
    # the protected file is a valid weights_only checkpoint with the same keys, shapes and dtypes ...
    orig = load_wo(disarmed) if name != "checkpoint" else torch.load(disarmed, weights_only=False)
    got = load_wo(prot) if name != "checkpoint" else torch.load(prot, weights_only=False)
    if name == "checkpoint":
        assert got["epoch"] == 3 and got["note"] == "ckpt"
        orig, got = orig["model"], got["model"]
    else:
        load_wo(prot)
    assert list(orig) == list(got)
    changed = 0
    for k in orig:
        assert orig[k].shape == got[k].shape and orig[k].dtype == got[k].dtype, k
    # ... whose every non-constant float tensor differs (a permutation of all-zeros is all-zeros)
    varying = [k for k in orig if orig[k].is_floating_point() and orig[k].unique().numel() > 1]
    changed = [k for k in varying if not torch.equal(orig[k], got[k])]
    assert changed == varying
    assert prot.read_bytes() != disarmed.read_bytes()
    # verify recognises it as protected; restore gives back the disarmed original bit for bit
    rc, so, se = cli("verify", prot, "--map", mp, "--key-file", keys["sym"], want=0)
    assert "protected" in so
    cli("restore", prot, "--map", mp, "--key-file", keys["sym"], "-o", rest, want=0)
    assert rest.read_bytes() == disarmed.read_bytes()
    rc, so, se = cli("verify", rest, "--map", mp, "--key-file", keys["sym"], want=0)
    assert "restored" in so


def test_fresh_randomness_each_run(tmp_path, models, keys):
    src = models["resnet18"]
    protect(src, tmp_path / "a.pt", tmp_path / "a.map", "--key-file", keys["sym"])
    protect(src, tmp_path / "b.pt", tmp_path / "b.map", "--key-file", keys["sym"])
    assert (tmp_path / "a.pt").read_bytes() != (tmp_path / "b.pt").read_bytes()
    assert (tmp_path / "a.map").read_bytes() != (tmp_path / "b.map").read_bytes()
    ra, rb = records(tmp_path / "a.pt"), records(tmp_path / "b.pt")
    big = [k for k in ra if len(ra[k]) > 4096]
    assert all(ra[k] != rb[k] for k in big)
    # the map reveals nothing in clear: no tensor names, no hashes
    blob = (tmp_path / "a.map").read_bytes()
    assert blob.startswith(b"MCDRMAP\0") and b"conv1" not in blob and b"layer" not in blob


def test_swaps_are_recorded_and_undone(tmp_path, models, keys):
    src = models["resnet18"]
    prot, mp = tmp_path / "p.pt", tmp_path / "p.map"
    rc, so, se = protect(src, prot, mp, "--key-file", keys["sym"], "--report", tmp_path / "r.json")
    rep = json.loads((tmp_path / "r.json").read_text())
    assert rep["swapped"] > 0 and rep["permuted"] > 0
    # sorted values of a swapped tensor no longer match its own original (they belong to another)
    orig, got = load_wo(src), load_wo(prot)
    moved = [k for k in orig if orig[k].is_floating_point() and orig[k].numel() > 64
             and not torch.equal(orig[k].flatten().sort().values, got[k].flatten().sort().values)]
    assert moved, "no tensor changed places"


def calibrated_resnet18():
    """A random-init resnet18 whose predictions on random inputs vary (a fresh one answers almost
    every input with the same class, which would make an agreement check meaningless): BatchNorm
    statistics are calibrated on random data, and the classifier bias centres the logits."""
    torch.manual_seed(0)
    m = torchvision.models.resnet18(weights=None)
    for mod in m.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.reset_running_stats()
            mod.momentum = None  # cumulative average
    m.train()
    with torch.no_grad():
        for _ in range(4):
            m(torch.randn(64, 3, 64, 64))
        m.eval()
        logits = m(torch.randn(256, 3, 64, 64))
        m.fc.bias -= logits.mean(0)
        m.fc.weight /= logits.std(0).mean()
    return m


def test_top1_agreement_is_chance(tmp_path, models, keys):
    src = tmp_path / "calibrated.pt"
    torch.save(calibrated_resnet18().state_dict(), src)
    prot, mp = tmp_path / "p.pt", tmp_path / "p.map"
    protect(src, prot, mp, "--key-file", keys["sym"])
    a = torchvision.models.resnet18(weights=None).eval()
    b = torchvision.models.resnet18(weights=None).eval()
    a.load_state_dict(load_wo(src))
    b.load_state_dict(load_wo(prot))
    torch.manual_seed(1)
    x = torch.randn(256, 3, 64, 64)
    with torch.no_grad():
        pa, pb = a(x).argmax(1), b(x).argmax(1)
    assert len(set(pa.tolist())) > 20, "original predictions do not vary: the check would be meaningless"
    agreement = (pa == pb).float().mean().item()
    # chance is 1/1000; allow a wide margin for 256 samples
    assert agreement <= 0.03, agreement


def test_recipients_and_signature(tmp_path, models, keys):
    src = models["mobilenet_v3_small"]
    prot, mp = tmp_path / "p.pt", tmp_path / "p.map"
    protect(src, prot, mp, "--recipient", keys["alice"][1], "--recipient", keys["bob"][1],
            "--sign", keys["publisher"][0])
    disarmed = tmp_path / "d.pt"
    cli("disarm", src, "-o", disarmed, want=0)
    for who in ("alice", "bob"):
        out = tmp_path / f"{who}.pt"
        rc, so, se = cli("restore", prot, "--map", mp, "--identity", keys[who][0],
                         "--verify-signer", keys["publisher"][1], "-o", out, want=0)
        assert "(verified)" in se
        assert out.read_bytes() == disarmed.read_bytes()
    # mallory is not a recipient
    out = tmp_path / "m.pt"
    rc, so, se = cli("restore", prot, "--map", mp, "--identity", keys["mallory"][0], "-o", out, want=3)
    assert not out.exists()


def test_passphrase(tmp_path, models, keys):
    src = models["mobilenet_v3_small"]
    prot, mp, out = tmp_path / "p.pt", tmp_path / "p.map", tmp_path / "r.pt"
    protect(src, prot, mp, "--passphrase-file", keys["pass"])
    cli("restore", prot, "--map", mp, "--passphrase-file", keys["pass"], "-o", out, want=0)
    wrong = tmp_path / "wrong.txt"
    wrong.write_text("incorrect\n")
    cli("restore", prot, "--map", mp, "--passphrase-file", wrong, "-o", tmp_path / "x.pt", want=3)
    assert not (tmp_path / "x.pt").exists()


# ---- detection ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def protected(tmp_path_factory, models, keys):
    d = tmp_path_factory.mktemp("mtd-protected")
    prot, mp = d / "p.pt", d / "p.map"
    protect(models["resnet18"], prot, mp, "--key-file", keys["sym"], "--sign", keys["publisher"][0])
    names = list(load_wo(prot))  # record key i <-> i-th tensor (one storage each in a state dict)
    return prot, mp, names


def expect_detected(tmp_path, keys, bad, mp, names=(), key="sym", extra=()):
    out, rep = tmp_path / "out.pt", tmp_path / "rep.json"
    rc, so, se = cli("restore", bad, "--map", mp, "--key-file", keys[key], "-o", out, "--report", rep, *extra)
    assert rc == 3, explain(rc, so, se)
    assert not out.exists()
    assert not any(p.name.startswith(".out.pt") for p in tmp_path.iterdir())  # no temp left behind
    report = json.loads(rep.read_text())
    assert report["status"] == "mismatch" and report["output"] is None
    for n in names:
        assert n in report["changed_tensors"], report
        assert n in se
    # verify alone says the same
    rc2, so2, se2 = cli("verify", bad, "--map", mp, "--key-file", keys[key], *extra)
    assert rc2 == 3, explain(rc2, so2, se2)
    return report, se


@pytest.mark.parametrize("which", [0, 1, 50, -2, -1])
def test_detects_one_bit_flip(tmp_path, keys, protected, which):
    prot, mp, names = protected
    key = which % len(names)
    bad = tmp_path / "bad.pt"

    def edit(name, data):
        if name.endswith(f"/data/{key}"):
            b = bytearray(data)
            b[len(b) // 2] ^= 0x01
            return bytes(b)
        return data
    rewrite(prot, bad, edit)
    expect_detected(tmp_path, keys, bad, mp, [names[key]])


def test_detects_raw_bit_flip_breaking_crc(tmp_path, keys, protected):
    prot, mp, names = protected
    b = bytearray(prot.read_bytes())
    b[len(b) // 2] ^= 0x10
    bad = tmp_path / "bad.pt"
    bad.write_bytes(bytes(b))
    expect_detected(tmp_path, keys, bad, mp)


def test_detects_lsb_payload(tmp_path, keys, protected):
    import numpy as np
    prot, mp, names = protected
    target = names.index("layer3.0.conv1.weight")
    msg = np.frombuffer(b"exfiltrate me " * 512, dtype=np.uint8)
    bad = tmp_path / "bad.pt"

    def edit(name, data):
        if name.endswith(f"/data/{target}"):
            w = np.frombuffer(data, dtype=np.uint32).copy()
            bits = np.unpackbits(msg)[: w.size]
            w[: bits.size] = (w[: bits.size] & ~np.uint32(1)) | bits.astype(np.uint32)
            return w.tobytes()
        return data
    rewrite(prot, bad, edit)
    expect_detected(tmp_path, keys, bad, mp, ["layer3.0.conv1.weight"])


def test_detects_two_tensors_swapped(tmp_path, keys, protected):
    prot, mp, names = protected
    a, b = names.index("layer1.0.conv1.weight"), names.index("layer1.1.conv2.weight")
    recs = records(prot)
    bad = tmp_path / "bad.pt"

    def edit(name, data):
        if name.endswith(f"/data/{a}"):
            return recs[b]
        if name.endswith(f"/data/{b}"):
            return recs[a]
        return data
    rewrite(prot, bad, edit)
    expect_detected(tmp_path, keys, bad, mp, [names[a], names[b]])


def test_detects_changed_non_tensor_data(tmp_path, keys, protected):
    prot, mp, names = protected
    bad = tmp_path / "bad.pt"

    def edit(name, data):
        if name.endswith("/data.pkl"):
            assert b"fc.weight" in data
            return data.replace(b"fc.weight", b"fc.weigh7")
        return data
    rewrite(prot, bad, edit)
    report, se = expect_detected(tmp_path, keys, bad, mp)
    assert any(m["what"] == "non-tensor" for m in report["mismatches"])


def test_detects_truncated_file(tmp_path, keys, protected):
    prot, mp, names = protected
    bad = tmp_path / "bad.pt"
    bad.write_bytes(prot.read_bytes()[: prot.stat().st_size // 2])
    report, se = expect_detected(tmp_path, keys, bad, mp)
    assert any(m["what"] == "file" for m in report["mismatches"])


def test_detects_wrong_key(tmp_path, keys, protected):
    prot, mp, names = protected
    report, se = expect_detected(tmp_path, keys, prot, mp, key="other-sym")
    assert any(m["what"] == "map" and "wrong key" in m["detail"] for m in report["mismatches"])


@pytest.mark.parametrize("where", [0.1, 0.5, 0.99])
def test_detects_modified_map(tmp_path, keys, protected, where):
    prot, mp, names = protected
    b = bytearray(mp.read_bytes())
    b[int(len(b) * where)] ^= 0x04
    bad_map = tmp_path / "bad.map"
    bad_map.write_bytes(bytes(b))
    expect_detected(tmp_path, keys, prot, bad_map, extra=("--verify-signer", keys["publisher"][1]))
    expect_detected(tmp_path, keys, prot, bad_map)


def test_detects_map_signed_by_someone_else(tmp_path, models, keys):
    prot, mp = tmp_path / "p.pt", tmp_path / "p.map"
    protect(models["resnet18"], prot, mp, "--key-file", keys["sym"], "--sign", keys["mallory"][0])
    report, se = expect_detected(tmp_path, keys, prot, mp, extra=("--verify-signer", keys["publisher"][1]))
    assert any("signature" in m["detail"] for m in report["mismatches"])
    # an unsigned map is refused too when a signer is required (protect never writes over p.pt/p.map)
    prot, mp = tmp_path / "p2.pt", tmp_path / "p2.map"
    protect(models["resnet18"], prot, mp, "--key-file", keys["sym"])
    expect_detected(tmp_path, keys, prot, mp, extra=("--verify-signer", keys["publisher"][1]))


def test_verify_detects_tampering_of_restored_file(tmp_path, keys, protected):
    prot, mp, names = protected
    rest = tmp_path / "r.pt"
    cli("restore", prot, "--map", mp, "--key-file", keys["sym"], "-o", rest, want=0)
    bad = tmp_path / "bad.pt"
    rewrite(rest, bad, lambda n, d: (d[:-4] + bytes(4)) if n.endswith("/data/3") else d)
    rc, so, se = cli("verify", bad, "--map", mp, "--key-file", keys["sym"], "--expect", "restored",
                     "--report", tmp_path / "v.json", want=3)
    assert names[3] in json.loads((tmp_path / "v.json").read_text())["changed_tensors"]


def test_usage_errors_exit_2(tmp_path, models, keys):
    rc, so, se = cli("protect", models["resnet18"], "-o", tmp_path / "p.pt", "--map", tmp_path / "p.map")
    assert rc == 2 and not (tmp_path / "p.pt").exists()
    rc, so, se = cli("restore", tmp_path / "missing.pt", "--map", tmp_path / "missing.map",
                     "--key-file", keys["sym"], "-o", tmp_path / "r.pt")
    assert rc == 2


@pytest.mark.parametrize("what", ["float", "int"])
def test_protect_refuses_an_input_record_that_breaks_its_crc(tmp_path, keys, what):
    # The reader leaves each record's CRC-32 to the record stage, which reads the record once
    # (pread, block by block in the permutation's order for a float record): one flipped byte
    # of a large record, with the zip directory untouched, must still fail the protect.
    torch.manual_seed(0)
    sd = {"w": torch.rand(3 * 4096 * 16 + 123), "i": torch.arange(40000, dtype=torch.int64)}
    src = tmp_path / "in.pt"
    torch.save(sd, src)
    name = "w" if what == "float" else "i"
    key = list(sd).index(name)
    with zipfile.ZipFile(src) as z:
        info = next(i for i in z.infolist() if i.filename.endswith(f"/data/{key}"))
    raw = bytearray(src.read_bytes())
    name_len = int.from_bytes(raw[info.header_offset + 26:info.header_offset + 28], "little")
    extra_len = int.from_bytes(raw[info.header_offset + 28:info.header_offset + 30], "little")
    start = info.header_offset + 30 + name_len + extra_len
    raw[start + info.file_size - 5] ^= 0x40  # in the float record's tail, past its full blocks
    bad = tmp_path / "bad.pt"
    bad.write_bytes(bytes(raw))
    out, mp = tmp_path / "out.pt", tmp_path / "out.map"
    rc, so, se = cli("protect", bad, "-o", out, "--map", mp, "--key-file", keys["sym"])
    assert rc != 0, explain(rc, so, se)
    assert "CRC" in so + se, explain(rc, so, se)
    assert not out.exists() and not mp.exists()
    # the intact input protects and restores to its own tensors
    cli("protect", src, "-o", out, "--map", mp, "--key-file", keys["sym"], want=0)
    back = tmp_path / "back.pt"
    cli("restore", out, "--map", mp, "--key-file", keys["sym"], "-o", back, want=0)
    got = load_wo(back)
    assert torch.equal(got["w"], sd["w"]) and torch.equal(got["i"], sd["i"])
