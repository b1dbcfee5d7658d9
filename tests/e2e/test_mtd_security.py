"""End-to-end tests of MTD's "secure by default" (issue 17 item 5) and of its diagnoses (item 3).

    MODELCDR_BIN=build/modelcdr /usr/bin/python3 -m pytest tests/e2e/test_mtd_security.py -q

Attacker-made maps that need byte surgery are built in the C++ unit tests (tests/mtd/
mtd_security_test.cpp, with libsodium: Debian's python3-nacl is not installed here). These tests
play the attacks that the command line alone allows, with real torch files made by the test.
"""
from __future__ import annotations

import json
import os
import re
import stat
import threading
import time
import zipfile

import pytest

from conftest import explain, run_cli

torch = pytest.importorskip("torch")


def cli(*args, want=None, env=None):
    rc, so, se = run_cli(*args, timeout=600, env=env)
    if want is not None:
        assert rc == want, explain(rc, so, se)
    return rc, so, se


def report_of(path):
    return json.loads(open(path, "rb").read().decode("utf-8"))


def leftovers(d, name):
    return [p.name for p in d.iterdir() if p.name.startswith(f".{name}")]


@pytest.fixture(scope="module")
def keys(tmp_path_factory, cdr_bin):
    d = tmp_path_factory.mktemp("sec-keys")
    k = {}
    for who in ("publisher", "alice", "mallory"):
        rc, so, se = cli("keygen", "-o", d / who, want=0)
        k[who] = (d / f"{who}.key", d / f"{who}.pub", so)
    cli("keygen", "--symmetric", "-o", d / "sym.key", want=0)
    cli("keygen", "--symmetric", "-o", d / "other.key", want=0)
    k["sym"], k["other"] = d / "sym.key", d / "other.key"
    return k


def state_dict(seed, big_ints=0):
    g = torch.Generator().manual_seed(seed)
    sd = {"conv.weight": torch.randn(32, 16, 3, 3, generator=g), "conv.bias": torch.randn(32, generator=g),
          "fc.weight": torch.randn(10, 512, generator=g), "steps": torch.tensor(7 + seed)}
    if big_ints:
        sd["table"] = torch.arange(big_ints, dtype=torch.int64) * (seed + 3)
    return sd


@pytest.fixture(scope="module")
def models(tmp_path_factory, cdr_bin):
    d = tmp_path_factory.mktemp("sec-models")
    out = {}
    for seed in (0, 1):
        p = d / f"m{seed}.pt"
        torch.save(state_dict(seed), p)
        out[seed] = p
    return out


# ---- who made the map -----------------------------------------------------------------------

def test_keygen_prints_a_128_bit_fingerprint(keys):
    so = keys["publisher"][2]
    assert re.fullmatch(r"[0-9a-f]{32}  \S+publisher\.pub\n", so), so


def test_outsider_map_is_refused_by_default(tmp_path, models, keys):
    """Mallory knows only Alice's public key: she protects a file of her own for Alice."""
    prot, mp, out = tmp_path / "p.pt", tmp_path / "p.map", tmp_path / "r.pt"
    cli("protect", models[1], "-o", prot, "--map", mp, "--recipient", keys["alice"][1], want=0)
    rc, so, se = cli("restore", prot, "--map", mp, "--identity", keys["alice"][0], "-o", out)
    assert rc == 2 and "trusted signer is required" in se, explain(rc, so, se)
    assert not out.exists()
    rc, so, se = cli("verify", prot, "--map", mp, "--identity", keys["alice"][0])
    assert rc == 2, explain(rc, so, se)
    # pinned to the publisher: an unsigned map and a map Mallory signed are both refused
    rc, so, se = cli("restore", prot, "--map", mp, "--identity", keys["alice"][0], "-o", out,
                     "--verify-signer", keys["publisher"][1], "--report", tmp_path / "r.json")
    assert rc == 3 and report_of(tmp_path / "r.json")["code"] == "bad-signature", explain(rc, so, se)
    prot, mp = tmp_path / "p2.pt", tmp_path / "p2.map"
    cli("protect", models[1], "-o", prot, "--map", mp, "--recipient", keys["alice"][1],
        "--sign", keys["mallory"][0], want=0)
    rc, so, se = cli("restore", prot, "--map", mp, "--identity", keys["alice"][0], "-o", out,
                     "--verify-signer", keys["publisher"][1])
    assert rc == 3 and "not a trusted signer" in se, explain(rc, so, se)
    assert not out.exists() and not leftovers(tmp_path, "r.pt")
    # the explicit opt-in accepts it, and says that nobody vouched for it
    rc, so, se = cli("restore", prot, "--map", mp, "--identity", keys["alice"][0], "-o", out,
                     "--allow-unsigned", want=0)
    assert "NOT checked against a trusted signer" in se


def test_trust_file_of_fingerprints(tmp_path, models, keys):
    prot, mp, out = tmp_path / "p.pt", tmp_path / "p.map", tmp_path / "r.pt"
    cli("protect", models[0], "-o", prot, "--map", mp, "--key-file", keys["sym"],
        "--sign", keys["publisher"][0], want=0)
    trust = tmp_path / "trusted.txt"
    trust.write_text("# our publishers\n" + keys["publisher"][2])  # the line keygen printed
    cli("restore", prot, "--map", mp, "--key-file", keys["sym"], "--trust", trust, "-o", out, want=0)
    other = tmp_path / "other.txt"
    other.write_text(keys["mallory"][2])
    rc, so, se = cli("verify", prot, "--map", mp, "--key-file", keys["sym"], "--trust", other)
    assert rc == 3 and "not a trusted signer" in se, explain(rc, so, se)
    bad = tmp_path / "bad.txt"
    bad.write_text("3f2a\n")
    rc, so, se = cli("verify", prot, "--map", mp, "--key-file", keys["sym"], "--trust", bad)
    assert rc == 2 and "fingerprint" in se, explain(rc, so, se)


# ---- checked bytes are written bytes ----------------------------------------------------------

def test_restore_writes_only_what_it_checked(tmp_path, keys):
    """A byte of a non-permuted (int64) record flips back and forth while restore runs: restore
    must either fail or write the original, never a wrong tensor with exit 0."""
    src = tmp_path / "ints.pt"
    torch.save(state_dict(0, big_ints=12 << 20), src)  # a 96 MiB int64 record
    prot, mp = tmp_path / "p.pt", tmp_path / "p.map"
    cli("protect", src, "-o", prot, "--map", mp, "--key-file", keys["sym"], want=0)
    disarmed = tmp_path / "d.pt"
    cli("disarm", src, "-o", disarmed, want=0)
    with zipfile.ZipFile(prot) as z:
        info = next(i for i in z.infolist() if i.file_size == (12 << 20) * 8)
        with open(prot, "rb") as f:
            f.seek(info.header_offset + 26)
            n, m = int.from_bytes(f.read(2), "little"), int.from_bytes(f.read(2), "little")
        at = info.header_offset + 30 + n + m + info.file_size // 2
    original = disarmed.read_bytes()
    wrong_with_exit_0 = 0
    for attempt in range(16):  # old code: about one run in four gave a wrong tensor with exit 0
        stop = threading.Event()

        def flip():
            fd = os.open(prot, os.O_WRONLY)
            try:
                b = os.pread(os.open(prot, os.O_RDONLY), 1, at)[0]
                while not stop.is_set():
                    os.pwrite(fd, bytes([b ^ 0xFF]), at)
                    os.pwrite(fd, bytes([b]), at)
                os.pwrite(fd, bytes([b]), at)
            finally:
                os.close(fd)
        t = threading.Thread(target=flip)
        out = tmp_path / f"r{attempt}.pt"
        t.start()
        try:
            rc, so, se = cli("restore", prot, "--map", mp, "--key-file", keys["sym"], "-o", out, "--allow-unsigned")
        finally:
            stop.set()
            t.join()
        if rc == 0 and out.read_bytes() != original:
            wrong_with_exit_0 += 1
        if rc != 0:
            assert rc == 3 and not out.exists(), explain(rc, so, se)
        out.unlink(missing_ok=True)
    assert wrong_with_exit_0 == 0


# ---- confidentiality for real ---------------------------------------------------------------

def test_encrypt_round_trip_and_hides_the_values(tmp_path, models, keys):
    src = models[0]
    prot, mp, out, plain = tmp_path / "p.pt", tmp_path / "p.map", tmp_path / "r.pt", tmp_path / "q.pt"
    cli("protect", src, "-o", prot, "--map", mp, "--key-file", keys["sym"], "--encrypt", want=0)
    cli("protect", src, "-o", plain, "--map", tmp_path / "q.map", "--key-file", keys["sym"], want=0)
    orig, enc, perm = (torch.load(p, weights_only=True) for p in (src, prot, plain))
    assert list(enc) == list(orig)
    for k in orig:
        assert enc[k].shape == orig[k].shape and enc[k].dtype == orig[k].dtype
        # without --encrypt the sorted values give the tensor away (the documented leak) ...
        if orig[k].is_floating_point():
            assert torch.equal(perm[k].flatten().sort().values, orig[k].flatten().sort().values)
        # ... with it, neither the values nor the integer counters survive
        assert not torch.equal(enc[k].flatten().sort().values, orig[k].flatten().sort().values), k
    disarmed = tmp_path / "d.pt"
    cli("disarm", src, "-o", disarmed, want=0)
    cli("verify", prot, "--map", mp, "--key-file", keys["sym"], "--allow-unsigned", want=0)
    cli("restore", prot, "--map", mp, "--key-file", keys["sym"], "-o", out, "--allow-unsigned", want=0)
    assert out.read_bytes() == disarmed.read_bytes()


# ---- diagnoses (item 3) ---------------------------------------------------------------------

def run_restore(tmp_path, prot, mp, key, *extra):
    # fresh names per call: outputs and reports never replace an existing file
    n = len(list(tmp_path.glob("rep*.json"))) + len(list(tmp_path.glob("out*.pt")))
    rep, out = tmp_path / f"rep{n}.json", tmp_path / f"out{n}.pt"
    rc, so, se = cli("restore", prot, "--map", mp, "--key-file", key, "-o", out, "--report", rep,
                     "--allow-unsigned", *extra)
    assert not out.exists() or rc == 0
    return rc, se, report_of(rep) if rep.exists() else None


@pytest.fixture(scope="module")
def two_protected(tmp_path_factory, models, keys):
    d = tmp_path_factory.mktemp("sec-two")
    out = {}
    for seed in (0, 1):
        prot, mp = d / f"p{seed}.pt", d / f"p{seed}.map"
        cli("protect", models[seed], "-o", prot, "--map", mp, "--key-file", keys["sym"], want=0)
        out[seed] = (prot, mp)
    return out


def test_diagnosis_map_of_another_file(tmp_path, two_protected, keys):
    (p0, m0), (p1, m1) = two_protected[0], two_protected[1]
    rc, se, rep = run_restore(tmp_path, p1, m0, keys["sym"])
    assert rc == 3 and rep["code"] == "wrong-file", se
    assert "this map does not belong to this file" in se
    assert len(rep["mismatches"]) == 1 and rep["changed_tensors"] == []
    assert "tensor bytes changed" not in se


def test_diagnosis_arguments_swapped(tmp_path, two_protected, keys):
    p0, m0 = two_protected[0]
    rc, se, rep = run_restore(tmp_path, m0, p0, keys["sym"])  # map as model, model as map
    assert rc == 2 and rep["code"] == "input-is-map" and "is a map, not a model" in se, se
    assert rep["status"] == "error" and rep["error"]["rule"] == "mtd.input-is-map", rep  # the rule's id
    rc, se, rep = run_restore(tmp_path, p0, p0, keys["sym"])  # a model as the map
    assert rc == 2 and rep["code"] == "map-is-model" and "is a model, not a map" in se, se
    assert rep["error"]["rule"] == "map.not-a-map", rep


def test_diagnosis_wrong_key(tmp_path, two_protected, keys):
    p0, m0 = two_protected[0]
    rc, se, rep = run_restore(tmp_path, p0, m0, keys["other"])
    assert rc == 3 and rep["code"] == "wrong-key" and "wrong key" in se, se


def test_diagnosis_tampered_names_the_tensors(tmp_path, two_protected, keys):
    p0, m0 = two_protected[0]
    bad = tmp_path / "bad.pt"
    with zipfile.ZipFile(p0) as zi, zipfile.ZipFile(bad, "w", zipfile.ZIP_STORED) as zo:
        names = list(torch.load(p0, weights_only=True))
        key = names.index("fc.weight")
        for info in zi.infolist():
            data = zi.read(info.filename)
            if info.filename.endswith(f"/data/{key}"):
                data = data[:100] + bytes([data[100] ^ 1]) + data[101:]
            zo.writestr(info.filename, data)
    rc, se, rep = run_restore(tmp_path, bad, m0, keys["sym"])
    assert rc == 3 and rep["code"] == "tampered", se
    assert "tampered: 1 tensor changed: fc.weight" in se
    assert rep["changed_tensors"] == ["fc.weight"]


# ---- smaller items --------------------------------------------------------------------------

def test_restored_plaintext_is_private(tmp_path, two_protected, keys):
    p0, m0 = two_protected[0]
    old = os.umask(0o022)
    try:
        cli("restore", p0, "--map", m0, "--key-file", keys["sym"], "-o", tmp_path / "r.pt", "--allow-unsigned", want=0)
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "r.pt").st_mode) == 0o600


def test_exposed_secret_key_file_is_named(tmp_path, two_protected, keys):
    p0, m0 = two_protected[0]
    loose = tmp_path / "loose.key"
    loose.write_bytes(keys["sym"].read_bytes())
    os.chmod(loose, 0o644)
    rc, so, se = cli("verify", p0, "--map", m0, "--key-file", loose, "--allow-unsigned", want=0)
    assert "readable by group or others" in se and "chmod 600" in se
    rc, so, se = cli("verify", p0, "--map", m0, "--key-file", keys["sym"], "--allow-unsigned", want=0)
    assert "readable by group or others" not in se


def test_names_from_the_map_are_escaped(tmp_path, keys):
    evil = "x\x1b]0;owned\x07\x1b[2J.weight"
    src = tmp_path / "evil.pt"
    torch.save({evil: torch.randn(64, 64)}, src)
    prot, mp = tmp_path / "p.pt", tmp_path / "p.map"
    cli("protect", src, "-o", prot, "--map", mp, "--key-file", keys["sym"], want=0)
    bad = tmp_path / "bad.pt"
    with zipfile.ZipFile(prot) as zi, zipfile.ZipFile(bad, "w", zipfile.ZIP_STORED) as zo:
        for info in zi.infolist():
            data = zi.read(info.filename)
            if "/data/" in info.filename:
                data = bytes([data[0] ^ 1]) + data[1:]
            zo.writestr(info.filename, data)
    rc, so, se = cli("verify", bad, "--map", mp, "--key-file", keys["sym"], "--allow-unsigned")
    assert rc == 3, explain(rc, so, se)
    assert "\x1b" not in se and "\x07" not in se
    assert "x\\x1b]0;owned\\x07" in se


def test_non_utf8_path_with_report(tmp_path, two_protected, keys):
    p0, m0 = two_protected[0]
    odd = tmp_path / os.fsdecode(b"model-\xff.pt")
    odd.write_bytes(p0.read_bytes())
    rep = tmp_path / "rep.json"
    rc, so, se = cli("verify", odd, "--map", m0, "--key-file", keys["sym"], "--allow-unsigned", "--report", rep)
    assert rc == 0, explain(rc, so, se)
    doc = report_of(rep)
    assert doc["status"] == "ok" and doc["input"].endswith("model-\ufffd.pt")
    out = tmp_path / os.fsdecode(b"out-\xfe.pt")
    rc, so, se = cli("restore", odd, "--map", m0, "--key-file", keys["sym"], "--allow-unsigned", "-o", out,
                     "--report", rep)
    assert rc == 0 and out.exists(), explain(rc, so, se)
    assert not [p for p in tmp_path.iterdir() if ".modelcdr-" in p.name]


def test_rezipped_or_extra_member_is_detected(tmp_path, two_protected, keys):
    """Review: "a re-zipped or extra-member file passes verify". Every record and data.pkl stay
    the same; only the zip layout changes."""
    p0, m0 = two_protected[0]
    rezipped = tmp_path / "rezipped.pt"
    with zipfile.ZipFile(p0) as zi, zipfile.ZipFile(rezipped, "w", zipfile.ZIP_STORED) as zo:
        for info in zi.infolist():
            zo.writestr(info.filename, zi.read(info.filename))
    extra = tmp_path / "extra.pt"
    extra.write_bytes(p0.read_bytes())
    with zipfile.ZipFile(extra, "a", zipfile.ZIP_STORED) as z:
        z.writestr("archive/extra/payload.bin", b"smuggled " * 100)
    for bad in (rezipped, extra):
        rep = tmp_path / "rep.json"
        rc, so, se = cli("verify", bad, "--map", m0, "--key-file", keys["sym"], "--allow-unsigned", "--report", rep)
        assert rc == 3, explain(rc, so, se)
        doc = report_of(rep)
        assert [m["what"] for m in doc["mismatches"]] == ["layout"] and doc["code"] == "tampered", doc
        assert "zip layout differs" in se
        rc, so, se = cli("restore", bad, "--map", m0, "--key-file", keys["sym"], "--allow-unsigned", "-o", tmp_path / "r.pt")
        assert rc == 3 and not (tmp_path / "r.pt").exists(), explain(rc, so, se)
    cli("verify", p0, "--map", m0, "--key-file", keys["sym"], "--allow-unsigned", want=0)


def test_key_fingerprint_command(keys):
    rc, so, se = cli("key", "fingerprint", keys["publisher"][1], want=0)
    assert so.split()[0] == keys["publisher"][2].split()[0]
    rc, so, se = cli("key", "fingerprint", keys["publisher"][0], want=0)  # the secret file names the same key
    assert so.split()[0] == keys["publisher"][2].split()[0]
    rc, so, se = cli("key", "fingerprint", keys["sym"])
    assert rc == 2, explain(rc, so, se)
