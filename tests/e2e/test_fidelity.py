"""Faithful rebuild (issue 12): what torch 2.x's weights_only loader can hold comes back as itself.

Each test builds its input with a generator (torch.save / numpy.save ...), disarms it, loads the
output under torch 2.x with weights_only=True and compares it with the loaded original exactly:
structure, exact types (a torch.Size is not a tuple), keys and their order, dtype/shape/stride/
offset, bit-identical bytes and storage sharing.
"""
from __future__ import annotations

import collections

import pytest

from conftest import disarm, explain, require_bin, torch_major
import vocab

torch = pytest.importorskip("torch")

pytestmark = pytest.mark.skipif(torch_major() < 2, reason="faithful rebuild targets torch 2.x's loader")


# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------
def exact_diffs(exp, got, path="$", storages=None):
    """Differences in exact type and storage sharing (vocab.compare covers values and layout)."""
    storages = {} if storages is None else storages
    if type(got) is not type(exp):
        return [f"{path}: {type(got).__name__} != {type(exp).__name__}"]
    if isinstance(exp, torch.Tensor):
        if exp.layout != torch.strided:
            return []
        key = exp.untyped_storage().data_ptr()
        seen = storages.setdefault(key, got.untyped_storage().data_ptr())
        if seen != got.untyped_storage().data_ptr():
            return [f"{path}: storage shared in the input, separate after disarm"]
        return []
    if isinstance(exp, dict):
        d = []
        for k in exp:
            if k in got:
                d += exact_diffs(exp[k], got[k], f"{path}[{k!r}]", storages)
        return d
    if isinstance(exp, (list, tuple)):
        d = []
        for i, (e, g) in enumerate(zip(exp, got)):
            d += exact_diffs(e, g, f"{path}[{i}]", storages)
        return d
    return []


def assert_faithful(exp, got):
    d = vocab.compare(exp, got) + exact_diffs(exp, got)
    assert d == [], "\n".join(d[:40])


def disarm_ok(tmp_path, inp, *extra, out_name="out.pt"):
    require_bin()
    out = tmp_path / out_name
    rc, so, se, report = disarm(inp, out, *extra, report=tmp_path / "report.json")
    assert rc in (0, 1), explain(rc, so, se)
    assert out.is_file(), explain(rc, so, se)
    return out, rc, report


def findings_text(report):
    return "\n".join(f.get("message", "") for f in report["files"][0].get("findings", []))


def save_and_disarm(tmp_path, obj, *extra):
    inp = tmp_path / "in.pt"
    torch.save(obj, inp)
    out, rc, report = disarm_ok(tmp_path, inp, *extra)
    if "torch1.13" in extra:
        assert vocab.check_output(out, "torch1.13") == []
    else:
        assert vocab.check_output(out, "torch2") == []
    return torch.load(inp, weights_only=True), out, rc, report


# --------------------------------------------------------------------------------------------------
# 1. torch.device and torch.Size
# --------------------------------------------------------------------------------------------------
def device_size_checkpoint():
    shared = torch.arange(12, dtype=torch.float32)
    return collections.OrderedDict(
        cpu=torch.device("cpu"),
        cuda=torch.device("cuda", 1),
        cuda_text=torch.device("cuda:0"),
        meta=torch.device("meta"),
        size=torch.Size([2, 3, 4]),
        empty_size=torch.Size([]),
        sizes=[torch.Size([1]), (5, 6)],
        plain_tuple=(2, 3),
        w=shared,
        view=shared[2:8].view(2, 3),
    )


def test_device_and_size_are_rebuilt_as_themselves(tmp_path):
    exp, out, rc, report = save_and_disarm(tmp_path, device_size_checkpoint())
    got = torch.load(out, weights_only=True)
    assert_faithful(exp, got)
    assert got["cuda"] == torch.device("cuda", 1) and type(got["size"]) is torch.Size
    assert type(got["plain_tuple"]) is tuple
    assert rc == 0, findings_text(report)
    # mmap loading reads the same file
    assert_faithful(exp, torch.load(out, weights_only=True, mmap=True))


def test_device_under_compat_torch113_is_a_string_and_reported(tmp_path):
    _, out, rc, report = save_and_disarm(tmp_path, {"d": torch.device("cuda", 1), "s": torch.Size([2])},
                                         "--compat", "torch1.13")
    got = vocab.static_torch_load(out)
    assert got["d"] == "cuda:1"
    assert type(got["s"]) is torch.Size  # torch 1.13's loader knows torch.Size
    assert rc == 1 and "torch.device" in findings_text(report), findings_text(report)


# --------------------------------------------------------------------------------------------------
# 2. OrderedDict items as 2-element lists (old PyTorch under Python 2)
# --------------------------------------------------------------------------------------------------
def py2_style_pickle_module():
    """A pickle module whose OrderedDicts reduce as Python 2's did: (OrderedDict, ([[k, v], ...],))."""
    import pickle
    import types

    class Py2Pickler(pickle.Pickler):
        def reducer_override(self, obj):
            if type(obj) is collections.OrderedDict:
                return collections.OrderedDict, ([[k, v] for k, v in obj.items()],)
            return NotImplemented

    return types.SimpleNamespace(Pickler=Py2Pickler, dump=pickle.dump, load=pickle.load,
                                 Unpickler=pickle.Unpickler, __name__="py2_style_pickle")


@pytest.mark.parametrize("zipped", [False, True], ids=["legacy", "zip"])
def test_ordered_dict_with_list_items_keeps_its_tensors(tmp_path, zipped):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    sd = net.state_dict()
    obj = collections.OrderedDict(state_dict=sd, epoch=3)
    inp = tmp_path / "in.pt"
    torch.save(obj, inp, pickle_module=py2_style_pickle_module(), pickle_protocol=2,
               _use_new_zipfile_serialization=zipped)
    assert b"OrderedDict" in inp.read_bytes()
    exp = torch.load(inp, weights_only=True)
    assert len(exp["state_dict"]) == len(sd)  # the generator did write list items
    out, rc, report = disarm_ok(tmp_path, inp)
    got = torch.load(out, weights_only=True)
    assert_faithful(exp, got)
    assert "mapping item that is not a pair" not in findings_text(report)


# --------------------------------------------------------------------------------------------------
# 4. safetensors headers: accepted exactly when the reference implementation accepts them
# --------------------------------------------------------------------------------------------------
ST_TENSOR = '"t": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}'
ST_HEADERS = {
    "metadata_null": '{"__metadata__": null, ' + ST_TENSOR + "}",
    "metadata_null_no_tensors": '{"__metadata__": null}',
    "metadata_strings": '{"__metadata__": {"format": "pt"}, ' + ST_TENSOR + "}",
    "leading_whitespace": ' \n{' + ST_TENSOR + "}",
    "metadata_int_value": '{"__metadata__": {"a": 1}, ' + ST_TENSOR + "}",
    "metadata_list": '{"__metadata__": [], ' + ST_TENSOR + "}",
    "nul_after_json": "{" + ST_TENSOR + "}\0",
}


def reference_accepts(path) -> bool:
    safetensors = pytest.importorskip("safetensors")
    try:
        with safetensors.safe_open(str(path), "pt") as f:
            for k in f.keys():
                f.get_tensor(k)
        return True
    except Exception:
        return False


@pytest.mark.parametrize("case", sorted(ST_HEADERS))
def test_safetensors_header_acceptance_matches_the_reference(tmp_path, case):
    import struct

    require_bin()
    header = ST_HEADERS[case].encode()
    data = b"" if "no_tensors" in case else struct.pack("<2f", 1.5, -2.0)
    inp = tmp_path / "in.safetensors"
    inp.write_bytes(struct.pack("<Q", len(header)) + header + data)
    out = tmp_path / "out.safetensors"
    rc, so, se, _ = disarm(inp, out, report=tmp_path / "r.json")
    ref = reference_accepts(inp)
    assert (rc in (0, 1)) == ref, f"reference {'accepts' if ref else 'rejects'}\n" + explain(rc, so, se)
    if ref:
        assert reference_accepts(out)
        from safetensors.torch import load_file

        exp, got = load_file(str(inp)), load_file(str(out))
        assert_faithful(exp, got)


# --------------------------------------------------------------------------------------------------
# 3. an .npy output is an .npy (not a torch checkpoint named .npy)
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("make", [
    lambda np: np.arange(24, dtype="<f4").reshape(2, 3, 4),
    lambda np: np.asfortranarray(np.arange(6, dtype="<i8").reshape(2, 3)),
    lambda np: np.array(7, dtype="<u2"),
    lambda np: np.array([1 + 2j, -3j], dtype="<c16"),
    lambda np: np.array([True, False]),
    lambda np: np.arange(4, dtype=">i4"),
], ids=["f4_3d", "i8_fortran", "u2_0dim", "c16", "bool", "i4_big_endian"])
def test_npy_output_stays_npy(tmp_path, make):
    np = pytest.importorskip("numpy")
    arr = make(np)
    inp = tmp_path / "x.npy"
    np.save(inp, arr, allow_pickle=False)
    out, rc, report = disarm_ok(tmp_path, inp, out_name="y.npy")
    got = np.load(out, allow_pickle=False)
    assert isinstance(got, np.ndarray)
    assert got.dtype == arr.dtype.newbyteorder("<") and got.shape == arr.shape
    assert got.tobytes() == np.ascontiguousarray(arr.astype(arr.dtype.newbyteorder("<"))).tobytes()
