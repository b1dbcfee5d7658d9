"""Sparse tensors that break torch's invariants are rejected (cdr.sparse-invalid, verdict dangerous).

torch 2.x's weights_only loader rebuilds sparse tensors with check_invariants=False and validates
them only when the caller enables torch.sparse.check_sparse_tensor_invariants; to_dense() on a COO
index past the size, or on CSR indices that run past a row, then writes out of bounds. So modelcdr
checks what torch's _validate_sparse_coo_tensor_args / _validate_sparse_compressed_tensor_args
check, in every mode that writes (disarm to torch 2 / torch 1.13 / safetensors, --randomize-lsb,
protect) and in scan.

The broken files are made with the installed torch: torch.save of an object that reduces to
torch._utils._rebuild_sparse_tensor(layout, data) with real (dense) index and value tensors, exactly
the stream torch writes for a sparse tensor, with the parts chosen to break one invariant each (the
torch constructors refuse most of them even with check_invariants=False). A control case with valid
parts goes through the same generator and must disarm and load bit-identical. No broken input is
ever loaded by torch; only modelcdr reads them.
"""
from __future__ import annotations

import json

import pytest

from conftest import disarm, explain, require_bin, run_cli

torch = pytest.importorskip("torch")

RULE = "cdr.sparse-invalid"


class Forged:
    """Pickles as torch's own sparse record: _rebuild_sparse_tensor(_get_layout(name), data)."""

    def __init__(self, layout, data):
        self.layout, self.data = layout, data

    def __reduce_ex__(self, proto):
        return (torch._utils._rebuild_sparse_tensor, (self.layout, self.data))


def t(values, dtype=torch.int64):
    return torch.tensor(values, dtype=dtype)


def f(values):
    return torch.tensor(values, dtype=torch.float32)


I32 = torch.int32
COO, CSR, CSC, BSR, BSC = (torch.sparse_coo, torch.sparse_csr, torch.sparse_csc, torch.sparse_bsr, torch.sparse_bsc)

# name -> (layout, data, words the message must contain)
BROKEN = {
    # COO: data = (indices [sparse_dim, nnz] int64, values [nnz, *dense], size[, is_coalesced])
    "coo_index_past_size": (COO, (t([[0, 9]]), f([1, 2]), (4,)), "found index 9"),
    "coo_negative_index": (COO, (t([[0, -1]]), f([1, 2]), (4,)), "negative index"),
    "coo_second_dim_out_of_range": (COO, (t([[0, 1], [0, 3]]), f([1, 2]), (2, 3)), "for dim 1"),
    "coo_int32_indices": (COO, (t([[0, 1]], I32), f([1, 2]), (4,)), "int64"),
    "coo_float_indices": (COO, (f([[0, 1]]), f([1, 2]), (4,)), "int64"),
    "coo_indices_not_2d": (COO, (t([0, 1]), f([1, 2]), (4,)), "sparse_dim x nnz"),
    "coo_nnz_mismatch": (COO, (t([[0, 1]]), f([1, 2, 3]), (4,)), "same nnz"),
    "coo_ndim_mismatch": (COO, (t([[0, 1]]), f([1, 2]), (4, 4)), "number of dimensions"),
    "coo_dense_size_mismatch": (COO, (t([[0, 1]]), torch.zeros(2, 3), (4, 5)), "values has incorrect size"),
    "coo_false_coalesced": (COO, (t([[2, 0]]), f([1, 2]), (4,), True), "is_coalesced"),
    "coo_duplicate_marked_coalesced": (COO, (t([[1, 1]]), f([1, 2]), (4,), True), "is_coalesced"),
    # CSR: (crow_indices [nrows + 1], col_indices [nnz], values [nnz], size)
    "csr_crow_not_from_zero": (CSR, (t([1, 2, 3]), t([0, 1, 2]), f([1, 2, 3]), (2, 3)), "[..., 0] == 0"),
    "csr_crow_decreasing": (CSR, (t([0, 2, 1, 3]), t([0, 1, 2]), f([1, 2, 3]), (3, 3)), "crow_indices[..., 1:]"),
    "csr_crow_row_longer_than_ncols": (CSR, (t([0, 4, 4]), t([0, 1, 2, 2]), f([1, 2, 3, 4]), (2, 3)), "<= ncols"),
    "csr_crow_last_not_nnz": (CSR, (t([0, 1, 2]), t([0, 1, 2]), f([1, 2, 3]), (2, 3)), "== nnz"),
    "csr_crow_past_nnz": (CSR, (t([0, 2, 3]), t([0, 1]), f([1, 2]), (2, 3)), "== nnz"),
    "csr_crow_wrong_length": (CSR, (t([0, 1, 2, 2]), t([0, 1]), f([1, 2]), (2, 3)), "shape[-1]"),
    "csr_col_past_ncols": (CSR, (t([0, 1, 2]), t([0, 7]), f([1, 2]), (2, 3)), "col_indices < ncols"),
    "csr_col_negative": (CSR, (t([0, 1, 2]), t([0, -2]), f([1, 2]), (2, 3)), "col_indices < ncols"),
    "csr_col_unsorted": (CSR, (t([0, 2, 2]), t([2, 0]), f([1, 2]), (2, 3)), "sorted and distinct"),
    "csr_col_duplicate": (CSR, (t([0, 2, 2]), t([1, 1]), f([1, 2]), (2, 3)), "sorted and distinct"),
    "csr_float_indices": (CSR, (f([0, 1, 2]), f([0, 1]), f([1, 2]), (2, 3)), "Int or Long"),
    "csr_mixed_index_dtypes": (CSR, (t([0, 1, 2], I32), t([0, 1]), f([1, 2]), (2, 3)), "same dtype"),
    "csr_values_count": (CSR, (t([0, 1, 2]), t([0, 1]), f([1, 2, 3]), (2, 3)), "nnz"),
    "csr_index_ndim_mismatch": (CSR, (t([0, 1, 2]), t([[0, 1]]), f([1, 2]), (2, 3)), "dimensionalities"),
    "csr_int32_col_past_ncols": (CSR, (t([0, 1, 2], I32), t([0, 3], I32), f([1, 2]), (2, 3)), "col_indices < ncols"),
    "csr_batch_mismatch": (CSR, (t([[0, 1, 2]]), t([[0, 1]]), f([[1, 2]]), (2, 2, 3)), "batch dimensions"),
    "csr_batched_second_bad": (CSR, (t([[0, 1, 2], [0, 1, 2]]), t([[0, 1], [0, 5]]), f([[1, 2], [3, 4]]), (2, 2, 3)),
                               "col_indices < ncols"),
    # CSC: (ccol_indices [ncols + 1], row_indices [nnz], values, size)
    "csc_row_past_nrows": (CSC, (t([0, 1, 2, 2]), t([0, 4]), f([1, 2]), (2, 3)), "row_indices < nrows"),
    "csc_row_unsorted": (CSC, (t([0, 2, 2, 2]), t([1, 0]), f([1, 2]), (2, 3)), "sorted and distinct"),
    "csc_ccol_last_not_nnz": (CSC, (t([0, 1, 1, 1]), t([0, 1]), f([1, 2]), (2, 3)), "== nnz"),
    "csc_ccol_wrong_length": (CSC, (t([0, 1, 2]), t([0, 1]), f([1, 2]), (2, 3)), "shape[-1]"),
    # BSR: values [nnz, bs0, bs1]; crow over block rows, col over block columns
    "bsr_col_block_past_ncols": (BSR, (t([0, 1, 2]), t([0, 2]), torch.zeros(2, 2, 2), (4, 4)), "col_indices < ncols"),
    "bsr_size_not_divisible": (BSR, (t([0, 1, 2]), t([0, 1]), torch.zeros(2, 2, 2), (4, 5)), "divisible"),
    "bsr_crow_not_from_zero": (BSR, (t([1, 1, 2]), t([0, 1]), torch.zeros(2, 2, 2), (4, 4)), "[..., 0] == 0"),
    "bsr_zero_blocksize": (BSR, (t([0, 0, 0]), t([], dtype=torch.int64), torch.zeros(0, 0, 2), (4, 4)), "blocksize"),
    # BSC: ccol over block columns, row over block rows
    "bsc_row_block_past_nrows": (BSC, (t([0, 1, 2]), t([0, 3]), torch.zeros(2, 2, 2), (4, 4)), "row_indices < nrows"),
    "bsc_ccol_last_not_nnz": (BSC, (t([0, 1, 1]), t([0, 1]), torch.zeros(2, 2, 2), (4, 4)), "== nnz"),
}

VALID = {
    "coo": (COO, (t([[0, 3, 1]]), f([1, 2, 3]), (4,), False)),
    "coo_coalesced_2d": (COO, (t([[0, 1, 1], [2, 0, 2]]), f([1, 2, 3]), (2, 3), True)),
    "coo_uncoalesced_duplicates": (COO, (t([[1, 1]]), f([1, 2]), (4,), False)),
    "csr": (CSR, (t([0, 2, 3]), t([0, 2, 1]), f([1, 2, 3]), (2, 3))),
    "csr_i32": (CSR, (t([0, 2, 3], I32), t([0, 2, 1], I32), f([1, 2, 3]), (2, 3))),
    "csr_empty_rows": (CSR, (t([0, 0, 0]), t([]), f([]), (2, 3))),
    "csc": (CSC, (t([0, 1, 1, 3]), t([1, 0, 1]), f([1, 2, 3]), (2, 3))),
    "bsr": (BSR, (t([0, 1, 2]), t([1, 0]), torch.arange(8.0).reshape(2, 2, 2), (4, 4))),
    "bsc": (BSC, (t([0, 2, 2]), t([0, 1]), torch.arange(8.0).reshape(2, 2, 2), (4, 4))),
}


def save(tmp_path, name, layout, data):
    p = tmp_path / f"{name}.pt"
    torch.save({"w": torch.ones(3), "sp": Forged(layout, data)}, p)
    return p


def rejected_for_sparse(tmp_path, inp, *extra, out_name="out.pt"):
    out, rep = tmp_path / f"{inp.stem}-{out_name}", tmp_path / f"{inp.stem}-report.json"
    rc, so, se, report = disarm(inp, out, *extra, report=rep)
    assert rc == 2, explain(rc, so, se)
    assert not out.exists(), "a rejected file left an output"
    assert report and report["files"][0]["status"] == "rejected", report
    err = report["files"][0]["error"]
    assert err["rule"] == RULE, err
    assert RULE in se, se  # the user sees the rule
    return err["message"]


@pytest.mark.torch2
@pytest.mark.parametrize("name", sorted(BROKEN))
def test_broken_sparse_is_rejected_by_disarm(tmp_path, name):
    require_bin()
    layout, data, words = BROKEN[name]
    msg = rejected_for_sparse(tmp_path, save(tmp_path, name, layout, data))
    assert "'sp'" in msg and words in msg, msg  # names the tensor and the broken invariant


@pytest.mark.torch2
@pytest.mark.parametrize("name", sorted(BROKEN))
def test_broken_sparse_is_dangerous_in_scan(tmp_path, name):
    require_bin()
    layout, data, _ = BROKEN[name]
    rc, so, se = run_cli("scan", "--json", save(tmp_path, name, layout, data))
    assert so, explain(rc, so, se)
    e = json.loads(so)["files"][0]
    assert e["verdict"] == "dangerous" and rc == 1, e
    assert any(x["rule"] == RULE and "'sp'" in x["message"] for x in e["findings"]), e


@pytest.mark.torch2
@pytest.mark.parametrize("name", sorted(VALID))
def test_valid_sparse_through_the_same_generator_is_kept(tmp_path, name):
    """The control: the generator itself makes loadable files, and valid parts pass."""
    require_bin()
    layout, data = VALID[name]
    inp, out = save(tmp_path, name, layout, data), tmp_path / "out.pt"
    rc, so, se, _ = disarm(inp, out)
    assert rc == 0 and out.is_file(), explain(rc, so, se)
    with torch.sparse.check_sparse_tensor_invariants():
        exp, got = torch.load(inp, weights_only=True), torch.load(out, weights_only=True)
    a, b = exp["sp"], got["sp"]
    assert a.layout == b.layout == layout and a.shape == b.shape
    assert torch.equal(a.to_dense(), b.to_dense())
    if layout == COO:
        parts = ("_indices", "_values")
        assert a.is_coalesced() == b.is_coalesced()
    else:
        row = layout in (CSR, BSR)
        parts = ("crow_indices" if row else "ccol_indices", "col_indices" if row else "row_indices", "values")
    for part in parts:
        x, y = getattr(a, part)(), getattr(b, part)()
        assert x.dtype == y.dtype and torch.equal(x, y), part


@pytest.mark.torch2
def test_torch_made_out_of_range_coo_and_csr_are_rejected(tmp_path):
    """The same defects made the way a user could: torch's constructors with check_invariants=False."""
    require_bin()
    bad = {
        "coo": torch.sparse_coo_tensor(t([[0, 9]]), f([1, 2]), (4,), check_invariants=False),
        "csr": torch.sparse_csr_tensor(t([0, 1, 2]), t([0, 9]), f([1, 2]), (2, 3), check_invariants=False),
        "csc": torch.sparse_csc_tensor(t([0, 1, 2, 2]), t([0, 9]), f([1, 2]), (2, 3), check_invariants=False),
    }
    for name, sp in bad.items():
        inp = tmp_path / f"{name}.pt"
        torch.save({"sp": sp}, inp)
        msg = rejected_for_sparse(tmp_path, inp)
        assert "'sp'" in msg, msg


@pytest.mark.torch2
@pytest.mark.parametrize("mode", ["compat113", "safetensors", "randomize_lsb"])
def test_every_writing_mode_rejects(tmp_path, mode):
    """torch 1.13 output (CSR is written there), safetensors (which drops sparse) and a transform."""
    require_bin()
    layout, data, _ = BROKEN["csr_col_past_ncols"]
    inp = save(tmp_path, "bad", layout, data)
    extra, out_name = {"compat113": (("--compat", "torch1.13"), "out.pt"),
                       "safetensors": (("--to", "safetensors"), "out.safetensors"),
                       "randomize_lsb": (("--randomize-lsb",), "out.pt")}[mode]
    rejected_for_sparse(tmp_path, inp, *extra, out_name=out_name)
    layout, data, _ = BROKEN["coo_index_past_size"]
    rejected_for_sparse(tmp_path, save(tmp_path, "bad_coo", layout, data), *extra, out_name=out_name)


@pytest.mark.torch2
def test_protect_rejects(tmp_path):
    require_bin()
    key = tmp_path / "sym.key"
    rc, so, se = run_cli("keygen", "--symmetric", "-o", key)
    assert rc == 0, explain(rc, so, se)
    layout, data, _ = BROKEN["coo_index_past_size"]
    inp, out, mp = save(tmp_path, "bad", layout, data), tmp_path / "out.pt", tmp_path / "m.map"
    rc, so, se = run_cli("protect", inp, "-o", out, "--map", mp, "--key-file", key)
    assert rc == 2, explain(rc, so, se)
    assert RULE in so + se, explain(rc, so, se)
    assert not out.exists() and not mp.exists()


@pytest.mark.torch2
def test_serve_refuses_broken_sparse_and_serves_valid(tmp_path):
    """The gateway uses the engine: a broken sparse checkpoint is refused (403, the rule as its
    code), a valid one is served rebuilt."""
    require_bin()
    from serve_util import Gateway, http

    repo = tmp_path / "store" / "acme" / "sparse"
    repo.mkdir(parents=True)
    layout, data, _ = BROKEN["csr_col_unsorted"]
    torch.save({"sp": Forged(layout, data)}, repo / "pytorch_model.bin")
    layout, data = VALID["bsr"]
    torch.save({"sp": Forged(layout, data)}, repo / "ok.bin")
    with Gateway("--store", tmp_path / "store", "--cache", tmp_path / "cache") as g:
        st, h, body = http("GET", f"{g.url}/acme/sparse/resolve/main/pytorch_model.bin")
        assert st == 403 and h.get("X-Error-Code") == RULE, (st, h, body[:500])
        st, h, body = http("GET", f"{g.url}/acme/sparse/resolve/main/ok.bin")
        assert st == 200, (st, h, body[:500])
    got_path = tmp_path / "got.bin"
    got_path.write_bytes(body)
    with torch.sparse.check_sparse_tensor_invariants():
        got = torch.load(got_path, weights_only=True)
    assert got["sp"].layout == torch.sparse_bsr
    assert torch.equal(got["sp"].values(), data[2])


@pytest.mark.torch113
def test_torch113_made_broken_coo_and_csr_are_rejected_under_compat(tmp_path):
    """Debian's torch 1.13 writes the broken tensors itself (its unchecked constructors); disarm
    --compat torch1.13 rejects them, and a valid CSR next to them still round-trips (test_fidelity_sparse)."""
    require_bin()
    bad = {
        "coo": torch._sparse_coo_tensor_unsafe(t([[0, 9]]), f([1, 2]), (4,)),
        "csr": torch._sparse_csr_tensor_unsafe(t([0, 1, 2]), t([0, 9]), f([1, 2]), (2, 3)),
    }
    for name, sp in bad.items():
        inp = tmp_path / f"{name}.pt"
        torch.save({"sp": sp}, inp)
        msg = rejected_for_sparse(tmp_path, inp, "--compat", "torch1.13")
        assert "'sp'" in msg and "9" in msg, msg
