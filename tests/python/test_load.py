"""modelcdr.load == torch.load(disarmed, weights_only=True), built without running pickle."""
from __future__ import annotations

import collections
import io
import os
import pickle
import pickletools

import pytest

from conftest import corpus_dir, modelcdr, strict_diff


def rich_checkpoint(torch):
    """Everything torch 2.x's weights_only loader returns: views sharing storages, offsets,
    strides, Parameters, requires_grad, OrderedDict with _metadata, torch.Size/device, and
    the plain values."""
    torch.manual_seed(0)
    base = torch.randn(8, 6)
    sd = collections.OrderedDict()
    sd["w"] = base
    sd["w_t"] = base.t()  # non-contiguous view
    sd["w_row"] = base[3]  # offset view, same storage
    sd["w_slice"] = base[:, 1::2]  # strided view
    sd["tied"] = base  # the same tensor twice
    sd["bf16"] = torch.randn(5).to(torch.bfloat16)
    sd["f16"] = torch.randn(3, 2).half()
    sd["i64"] = torch.arange(10)
    sd["bool"] = torch.tensor([True, False, True])
    sd["c64"] = torch.randn(4, dtype=torch.complex64)
    sd["u16"] = torch.arange(7, dtype=torch.int32).to(torch.uint16)
    sd["f8"] = torch.randn(6).to(torch.float8_e4m3fn)
    sd["empty"] = torch.empty(0, 3)
    sd["scalar"] = torch.tensor(3.5)
    sd._metadata = collections.OrderedDict({"": {"version": 1}, "layer": {"version": 2}})
    param = torch.nn.Parameter(torch.randn(3, 3))
    frozen = torch.nn.Parameter(torch.randn(2), requires_grad=False)
    grad = torch.randn(4, requires_grad=True)
    return {
        "state_dict": sd,
        "param": param,
        "frozen": frozen,
        "grad": grad,
        "epoch": 7,
        "big": 2 ** 80,
        "neg": -(2 ** 70),
        "lr": 1e-3,
        "nan": float("nan"),
        "z": complex(1.5, -2),
        "name": "model \u00e9\u4e2d",
        "blob": b"\x00\xffbytes",
        "flags": {1, 2, 3},
        "shape": torch.Size([2, 3]),
        "device": torch.device("cpu"),
        "nested": [(1, 2.0, None, True), {"k": [base[0]]}],
        "shared_list": None,
    }


@pytest.fixture
def rich_file(tmp_path, torch):
    obj = rich_checkpoint(torch)
    shared = [1, 2]
    obj["shared_list"] = [shared, shared]
    path = tmp_path / "rich.pt"
    torch.save(obj, path)
    return path


def test_load_equals_torch_load_of_disarmed(rich_file, reference):
    exp = reference(rich_file)
    got = modelcdr.load(rich_file)
    assert strict_diff(exp, got) == []
    # views share one storage, as in torch.load's result
    sd = got["state_dict"]
    assert sd["w_t"].untyped_storage().data_ptr() == sd["w"].untyped_storage().data_ptr()
    assert sd["tied"] is sd["w"]
    assert got["shared_list"][0] is got["shared_list"][1]
    assert sd._metadata == {"": {"version": 1}, "layer": {"version": 2}}
    assert isinstance(got["param"], __import__("torch").nn.Parameter)


def test_load_tensors_own_their_memory(rich_file, torch):
    got = modelcdr.load(rich_file)
    w = got["state_dict"]["w"]
    w.add_(1)  # writable, and no mapping behind it: the file is unchanged
    again = modelcdr.load(rich_file)
    assert torch.equal(again["state_dict"]["w"] + 1, w)


def test_load_mmap_views_file_pages(rich_file, reference, torch):
    exp = reference(rich_file, mmap=True)
    got = modelcdr.load(rich_file, mmap=True)
    assert strict_diff(exp, got) == []
    before = rich_file.read_bytes()
    got["state_dict"]["w"].mul_(0)  # copy-on-write: the file never changes
    assert rich_file.read_bytes() == before


def test_mmap_does_not_copy(tmp_path, torch):
    """A 64 MiB tensor loaded with mmap=True costs no resident memory until it is read."""
    import resource

    path = tmp_path / "big.pt"
    torch.save({"w": torch.ones(16 << 20)}, path)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    got = modelcdr.load(path, mmap=True)
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0
    assert got["w"].shape == (16 << 20,)
    assert grown_kib < 32 << 10, f"mmap=True grew the peak RSS by {grown_kib} KiB"
    assert float(got["w"][-1]) == 1.0


def test_load_bytes_and_file_objects(rich_file, reference):
    exp = reference(rich_file)
    data = rich_file.read_bytes()
    assert strict_diff(exp, modelcdr.load(data)) == []
    with open(rich_file, "rb") as f:
        assert strict_diff(exp, modelcdr.load(f)) == []
    assert strict_diff(exp, modelcdr.load(io.BytesIO(data))) == []


def test_load_legacy_and_meta(tmp_path, reference, torch):
    obj = {"a": torch.randn(3, 4), "b": torch.arange(5)}
    path = tmp_path / "legacy.pt"
    torch.save(obj, path, _use_new_zipfile_serialization=False)
    assert strict_diff(reference(path), modelcdr.load(path)) == []
    meta = modelcdr.load(path, map_location="meta")
    assert meta["a"].device.type == "meta" and meta["a"].shape == (3, 4)


def test_quantized_and_sparse(tmp_path, reference, torch):
    q = torch.quantize_per_tensor(torch.randn(4, 4), 0.1, 3, torch.qint8)
    qc = torch.quantize_per_channel(torch.randn(3, 4), torch.tensor([0.1, 0.2, 0.3], dtype=torch.double),
                                    torch.tensor([0, 1, 2]), 0, torch.quint8)
    sp = torch.randn(5, 5).relu().to_sparse()
    path = tmp_path / "qs.pt"
    torch.save({"q": q, "qc": qc, "sp": sp}, path)
    assert strict_diff(reference(path), modelcdr.load(path)) == []



def test_sparse_compressed_layouts(tmp_path, reference, torch):
    dense = torch.randn(4, 6).relu()
    saved = {"csr": dense.to_sparse_csr(), "csc": dense.to_sparse_csc(),
             "bsr": dense.to_sparse_bsr((2, 3)), "bsc": dense.to_sparse_bsc((2, 3))}
    path = tmp_path / "compressed.pt"
    torch.save(saved, path)
    loaded = modelcdr.load(path)
    assert strict_diff(reference(path), loaded) == []
    for name, t in saved.items():
        assert loaded[name].layout == t.layout
        assert torch.equal(loaded[name].to_dense(), dense)


def test_sparse_index_out_of_range_is_refused(tmp_path, torch):
    # An index past the tensor's size: torch.load(weights_only=True) builds it without a check
    # (torch 2.x validates sparse invariants only when the caller enables them); modelcdr.load
    # always checks.
    bad = torch.sparse_coo_tensor(torch.tensor([[0, 9]]), torch.tensor([1.0, 2.0]), (4,), check_invariants=False)
    path = tmp_path / "bad_sparse.pt"
    torch.save({"sp": bad}, path)
    with pytest.raises(modelcdr.ModelcdrError, match="invariant"):
        modelcdr.load(path)

BENIGN_TORCH2X = ["hf_bert_tiny_pytorch_model.bin", "hf_gpt2_tiny_pytorch_model.bin",
                  "hf_llama_tiny_bf16_pytorch_model.bin", "lightning_tiny.ckpt", "torch2_legacy_format.pt",
                  "torch2_misc_values.pt", "torch2_new_dtypes.pt", "torch2_quantized.pt", "torch2_sparse.pt",
                  "torch2_train_ckpt.pt", "torch2_views.pt", "torch2_whole_module.pt", "torchscript_tiny.pt"]


@pytest.mark.parametrize("name", BENIGN_TORCH2X)
def test_torch2x_corpus(name, reference):
    path = corpus_dir() / "benign" / "torch2x" / name
    if not path.exists():
        pytest.skip(f"corpus file {path} missing")
    exp = reference(path)
    assert strict_diff(exp, modelcdr.load(path)) == []
    assert strict_diff(exp, modelcdr.load(path, mmap=True)) == []


def test_safetensors_load_file(tmp_path, torch):
    from safetensors.torch import load_file, save_file

    tensors = {"a": torch.randn(3, 4), "b": torch.arange(6, dtype=torch.int32).reshape(2, 3),
               "c": torch.randn(2).to(torch.bfloat16)}
    path = tmp_path / "m.safetensors"
    save_file(tensors, path)
    exp = load_file(path)
    got = modelcdr.load_file(path)
    assert list(got) == list(exp) or sorted(got) == sorted(exp)
    for k in exp:
        assert got[k].dtype == exp[k].dtype and torch.equal(got[k], exp[k])


def test_numpy_files(tmp_path):
    np = pytest.importorskip("numpy")
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    np.save(tmp_path / "a.npy", np.asfortranarray(a))
    got = modelcdr.load(tmp_path / "a.npy")
    assert isinstance(got, np.ndarray) and got.dtype == a.dtype and (got == a).all()
    np.savez(tmp_path / "z.npz", x=a, y=np.array([1, 2, 3], dtype=np.int64))
    z = modelcdr.load(tmp_path / "z.npz")
    assert sorted(z) == ["x", "y"] and (z["x"] == a).all() and z["y"].dtype == np.int64


def malicious_pickle() -> bytes:
    """A pickle that would run `os.system` when unpickled (built as bytes, never loaded)."""
    return b"\x80\x02cposix\nsystem\nq\x00X\x04\x00\x00\x00true\x85R."


def test_rejected_error_carries_report(tmp_path):
    data = malicious_pickle()
    assert any(op.name == "REDUCE" for op, _a, _p in pickletools.genops(data))
    with pytest.raises(modelcdr.RejectedError) as e:
        modelcdr.load(data)
    rep = e.value.report
    assert isinstance(rep, modelcdr.Report) and rep.status == "rejected" and rep.error is not None
    assert rep.error.rule and "system" in (rep.error.message + " ".join(f.message for f in rep.findings))


def test_weights_only_false_refused(rich_file):
    with pytest.raises(ValueError):
        modelcdr.load(rich_file, weights_only=False)


def test_deep_nesting_within_engine_limit(tmp_path, torch):
    import sys

    limit = sys.getrecursionlimit()
    """500 levels (the engine allows 512, limits.depth): deeper than torch.load's own loader
    recurses by default, so the reference is the object that was saved."""
    deep = []
    for _ in range(500):
        deep = [deep, {"t": (1,)}]
    path = tmp_path / "deep.pt"
    sys.setrecursionlimit(20000)  # torch.save's pickler recurses too
    try:
        torch.save({"deep": deep}, path)
    finally:
        sys.setrecursionlimit(limit)
    got = modelcdr.load(path)["deep"]
    for _ in range(500):
        assert type(got) is list and got[1] == {"t": (1,)}
        got = got[0]
    assert got == []
    assert sys.getrecursionlimit() == limit  # put back after the load


def test_corrupted_record_rejected(tmp_path, torch):
    """The zip CRC of a record is checked on the copy the default loader makes."""
    t = torch.arange(4096, dtype=torch.float32) + 0.123
    path = tmp_path / "m.pt"
    torch.save({"w": t}, path)
    data = bytearray(path.read_bytes())
    at = data.find(t[100:104].numpy().tobytes())
    assert at > 0
    data[at] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(modelcdr.RejectedError) as e:
        modelcdr.load(path)
    assert "zip.bad-crc" in str(e.value) and e.value.report is not None


@pytest.mark.parametrize("part", [0, 1, 3])
def test_large_storage_read_in_parts(tmp_path, torch, part):
    """A storage of 64 MiB is read by up to 4 threads (one part each, CRCs combined): the
    bytes are exact, and a flipped bit in any part fails the record's CRC."""
    t = torch.arange(16 << 20, dtype=torch.float32)
    path = tmp_path / "big.pt"
    torch.save({"w": t}, path)
    assert torch.equal(modelcdr.load(path)["w"], t)
    data = bytearray(path.read_bytes())
    i = (part * (4 << 20)) + 12345  # an element inside part `part` (16 MiB = 4M floats each)
    at = data.find(t[i:i + 4].numpy().tobytes())
    assert at > 0
    data[at] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(modelcdr.RejectedError) as e:
        modelcdr.load(path)
    assert "zip.bad-crc" in str(e.value)
    with pytest.raises(modelcdr.RejectedError):
        modelcdr.load(bytes(data))  # a memory source is checked the same way
