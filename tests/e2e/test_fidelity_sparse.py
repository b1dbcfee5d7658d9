"""Sparse compressed tensors (issue 12 item 1): CSR, CSC, BSR and BSC come back as themselves.

torch 2.x pickles them as _rebuild_sparse_tensor(_get_layout("torch.sparse_csr"), (compressed
indices, plain indices, values, size)); its weights_only loader accepts that. A generator makes each
layout with the installed torch; the output is loaded with weights_only=True (and mmap=True) and
compared with the loaded original: layout, size, both index tensors and the values bit for bit.
Under --compat torch1.13, CSR is written with 1.13's _rebuild_sparse_csr_tensor (checked with
Debian's torch 1.13 in the torch113 pass); CSC/BSR/BSC have no 1.13 form and are dropped, reported.
"""
from __future__ import annotations

import pickletools
import zipfile

import pytest

from conftest import disarm, explain, require_bin, torch_major
import vocab

torch = pytest.importorskip("torch")


def data_pkl_globals(path):
    with zipfile.ZipFile(path) as zf:
        data = zf.read(next(n for n in zf.namelist() if n.endswith("/data.pkl")))
    return {str(arg) for op, arg, _ in pickletools.genops(data) if op.name == "GLOBAL"}


def disarm_ok(tmp_path, obj, *extra):
    require_bin()
    inp, out, rep = tmp_path / "in.pt", tmp_path / "out.pt", tmp_path / "report.json"
    torch.save(obj, inp)
    rc, so, se, report = disarm(inp, out, *extra, report=rep)
    assert rc in (0, 1) and out.is_file(), explain(rc, so, se)
    return inp, out, rc, report


def findings_text(report):
    return "\n".join(f.get("message", "") for f in report["files"][0].get("findings", []))


def assert_same(exp, got):
    d = vocab.compare(exp, got)
    assert d == [], "\n".join(d[:40])


def compressed_checkpoint():
    torch.manual_seed(0)
    dense = torch.randn(6, 8)
    dense[dense.abs() < 0.8] = 0
    return {
        "csr": dense.to_sparse_csr(),
        "csc": dense.to_sparse_csc(),
        "bsr": dense.to_sparse_bsr((2, 2)),
        "bsc": dense.to_sparse_bsc((3, 4)),
        "csr_f64_i32": torch.sparse_csr_tensor(torch.tensor([0, 2, 3], dtype=torch.int32),
                                               torch.tensor([0, 2, 1], dtype=torch.int32),
                                               torch.tensor([1.5, -2.0, 3.25], dtype=torch.float64), (2, 3)),
        "batched_csr": torch.stack([dense, dense * 2]).to_sparse_csr(),
        "hybrid_csr": torch.randn(4, 5, 3).to_sparse_csr(dense_dim=1),
        "dense": dense,
    }


@pytest.mark.skipif(torch_major() < 2, reason="torch 2.x writes CSC/BSR/BSC")
def test_sparse_compressed_layouts_are_rebuilt_as_themselves(tmp_path):
    inp, out, rc, report = disarm_ok(tmp_path, compressed_checkpoint())
    assert vocab.check_output(out, "torch2") == []
    exp = torch.load(inp, weights_only=True)
    for mmap in (False, True):
        got = torch.load(out, weights_only=True, mmap=mmap)
        assert list(got) == list(exp)
        for k in ("csr", "csc", "bsr", "bsc"):
            assert got[k].layout == getattr(torch, "sparse_" + k), k
        assert got["bsr"].values().shape == exp["bsr"].values().shape  # blocks kept
        assert_same(exp, got)
        assert torch.equal(got["bsc"].to_dense(), exp["dense"])
    assert rc == 0, findings_text(report)
    assert "torch._utils _rebuild_sparse_tensor" in data_pkl_globals(out)


@pytest.mark.skipif(torch_major() < 2, reason="torch 2.x writes CSC/BSR/BSC")
def test_sparse_compressed_under_compat_torch113(tmp_path):
    ck = compressed_checkpoint()
    inp, out, rc, report = disarm_ok(tmp_path, {"csr": ck["csr"], "csc": ck["csc"], "bsr": ck["bsr"],
                                               "dense": ck["dense"]}, "--compat", "torch1.13")
    assert vocab.check_output(out, "torch1.13") == []
    names = data_pkl_globals(out)
    assert "torch._utils _rebuild_sparse_csr_tensor" in names  # 1.13's CSR form
    assert "torch._utils _rebuild_sparse_tensor" not in names
    text = findings_text(report)
    assert rc == 1 and "torch.sparse_csc" in text and "torch.sparse_bsr" in text, text
    assert "torch.sparse_csr" not in text, text


@pytest.mark.torch113
def test_torch113_csr_round_trips_through_compat(tmp_path):
    """A CSR tensor saved by torch 1.13 (its _rebuild_sparse_csr_tensor) is read and written back in
    1.13's form; 1.13's own weights_only loader reads the output, bit-identical."""
    dense = torch.tensor([[0.0, 1.5, 0.0], [2.0, 0.0, -3.0]])
    obj = {"csr": dense.to_sparse_csr(), "w": dense}
    inp, out, rc, report = disarm_ok(tmp_path, obj, "--compat", "torch1.13")
    assert vocab.check_output(out, "torch1.13") == []
    exp, got = torch.load(inp), torch.load(out, weights_only=True)
    assert got["csr"].layout == torch.sparse_csr
    for part in ("crow_indices", "col_indices", "values"):
        a, b = getattr(exp["csr"], part)(), getattr(got["csr"], part)()
        assert a.dtype == b.dtype and torch.equal(a, b), part
    assert torch.equal(got["w"], dense) and rc == 0, findings_text(report)
