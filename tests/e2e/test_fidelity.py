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
    rc, so, se, report = disarm(inp, out, *extra, report=tmp_path / f"{out_name}.report.json")
    assert rc in (0, 1), explain(rc, so, se)
    assert out.is_file(), explain(rc, so, se)
    if out.suffix == ".pt" and "torch1.13" not in extra:  # every torch output also loads with mmap=True
        d = vocab.compare(torch.load(out, weights_only=True), torch.load(out, weights_only=True, mmap=True))
        assert d == [], "mmap=True load differs:\n" + "\n".join(d[:20])
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


# --------------------------------------------------------------------------------------------------
# 5. NumPy fixed-width string arrays ('<U…', '|S…') are plain data
# --------------------------------------------------------------------------------------------------
STRING_ARRAYS = {
    "unicode": lambda np: np.array(["ab", "cde", "", "\u00e9\U0001f600"]),
    "bytes": lambda np: np.array([b"ab", b"c\x00d", b""]),
    "unicode_2d": lambda np: np.array([["x", "yy"], ["zzz", "w"]]),
    "unicode_fortran": lambda np: np.asfortranarray(np.array([["a", "bb", "c"], ["dd", "e", "ff"]])),
    "unicode_big_endian": lambda np: np.array(["hi", "there"], dtype=">U5"),
    "bytes_0dim": lambda np: np.array(b"only", dtype="S6"),
}


def expected_string_array(np, arr):
    """The array an honest round trip gives: the same values, little-endian."""
    return arr.astype(arr.dtype.newbyteorder("<")) if arr.dtype.kind == "U" else arr


@pytest.mark.parametrize("case", sorted(STRING_ARRAYS))
def test_string_npy_stays_a_string_npy(tmp_path, case):
    np = pytest.importorskip("numpy")
    arr = STRING_ARRAYS[case](np)
    inp = tmp_path / "x.npy"
    np.save(inp, arr, allow_pickle=False)
    out, rc, report = disarm_ok(tmp_path, inp, out_name="y.npy")
    got = np.load(out, allow_pickle=False)
    exp = expected_string_array(np, arr)
    assert got.dtype == exp.dtype and got.shape == exp.shape, (got.dtype, got.shape)
    assert got.tolist() == exp.tolist()
    assert rc == 0, findings_text(report)


def test_string_arrays_in_npz_are_kept_next_to_numbers(tmp_path):
    np = pytest.importorskip("numpy")
    arrays = {k: STRING_ARRAYS[k](np) for k in ("unicode", "bytes", "unicode_fortran")}
    arrays["w"] = np.arange(6, dtype="<f4").reshape(2, 3)
    inp = tmp_path / "x.npz"
    np.savez(inp, **arrays)
    out, rc, report = disarm_ok(tmp_path, inp, out_name="y.npz")
    with np.load(out, allow_pickle=False) as got:
        assert sorted(got.files) == sorted(arrays)
        for k, a in arrays.items():
            exp = expected_string_array(np, a)
            assert got[k].dtype == exp.dtype and got[k].shape == exp.shape, k
            assert got[k].tolist() == exp.tolist(), k
    assert rc == 0, findings_text(report)


def test_string_arrays_inside_a_pickle(tmp_path):
    """Inside a checkpoint: kept as arrays by --to pickle/joblib, lists of str/bytes in a .pt (reported)."""
    np = pytest.importorskip("numpy")
    joblib = pytest.importorskip("joblib")
    obj = {"labels": STRING_ARRAYS["unicode"](np), "raw": STRING_ARRAYS["bytes"](np),
           "grid": STRING_ARRAYS["unicode_fortran"](np), "w": np.arange(3.0)}
    inp = tmp_path / "in.joblib"
    joblib.dump(obj, inp)
    out, rc, report = disarm_ok(tmp_path, inp, "--to", "joblib", out_name="out.joblib")
    got = joblib.load(out)  # our output of a benign input generated here
    for k, a in obj.items():
        assert got[k].dtype == a.dtype and got[k].shape == a.shape and got[k].tolist() == a.tolist(), k
    out_pt, rc, report = disarm_ok(tmp_path, inp, out_name="out.pt")
    assert vocab.check_output(out_pt, "torch2") == []
    got = torch.load(out_pt, weights_only=True)
    assert got["labels"] == obj["labels"].tolist() and got["raw"] == obj["raw"].tolist()
    assert got["grid"] == obj["grid"].tolist()
    assert rc == 1 and "string array" in findings_text(report), findings_text(report)


# --------------------------------------------------------------------------------------------------
# 6. every dtype torch 2.x can save, parameters and requires_grad, mmap loading
# --------------------------------------------------------------------------------------------------
SAVABLE_DTYPES = [
    "float64", "float32", "float16", "bfloat16", "complex128", "complex64", "complex32",
    "int64", "int32", "int16", "int8", "uint8", "uint16", "uint32", "uint64", "bool",
    "float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz", "float8_e8m0fnu",
    "float4_e2m1fn_x2", "bits8", "bits16", "bits1x8", "bits2x4", "bits4x2",
]


def tensor_of_dtype(name):
    """A small tensor of torch.<name> with varied bit patterns (made by viewing random bytes)."""
    dt = getattr(torch, name, None)
    if dt is None:
        pytest.skip(f"this torch has no torch.{name}")
    g = torch.Generator().manual_seed(1)
    raw = torch.randint(0, 256, (4 * 3 * dt.itemsize,), dtype=torch.uint8, generator=g)
    if name == "bool":
        return raw.reshape(4, 3 * dt.itemsize) % 2 == 1
    return raw.view(dt).reshape(4, 3)


@pytest.mark.parametrize("name", SAVABLE_DTYPES)
def test_every_savable_dtype_is_rebuilt_bit_identical(tmp_path, name):
    t = tensor_of_dtype(name)
    obj = {"t": t, "view": t[1:, 1:], "t_again": t}
    exp, out, rc, report = save_and_disarm(tmp_path, obj)
    for loaded in (torch.load(out, weights_only=True), torch.load(out, weights_only=True, mmap=True)):
        assert_faithful(exp, loaded)
        assert loaded["t"].dtype == t.dtype
        assert loaded["t"].view(torch.uint8).tolist() == exp["t"].view(torch.uint8).tolist()
    assert rc == 0, findings_text(report)


def quantized_checkpoint():
    torch.manual_seed(0)
    x = torch.randn(4, 6)
    return {
        "per_tensor_qint8": torch.quantize_per_tensor(x, 0.05, 3, torch.qint8),
        "per_tensor_quint8": torch.quantize_per_tensor(x, 0.1, 128, torch.quint8),
        "per_tensor_qint32": torch.quantize_per_tensor(x, 0.001, 0, torch.qint32),
        "per_channel": torch.quantize_per_channel(x, torch.rand(4, dtype=torch.float64) + 0.01,
                                                  torch.arange(4), 0, torch.qint8),
        "per_channel_axis1": torch.quantize_per_channel(x, torch.rand(6, dtype=torch.float64) + 0.01,
                                                        torch.zeros(6, dtype=torch.int64), 1, torch.quint8),
    }


def test_quantized_tensors_keep_their_parameters(tmp_path):
    exp, out, rc, report = save_and_disarm(tmp_path, quantized_checkpoint())
    got = torch.load(out, weights_only=True, mmap=True)
    assert_faithful(exp, got)
    for k, q in exp.items():
        assert got[k].qscheme() == q.qscheme(), k
        assert torch.equal(got[k].int_repr(), q.int_repr()), k
        if q.qscheme() == torch.per_tensor_affine:
            assert (got[k].q_scale(), got[k].q_zero_point()) == (q.q_scale(), q.q_zero_point()), k
        else:
            assert torch.equal(got[k].q_per_channel_scales(), q.q_per_channel_scales()), k
            assert torch.equal(got[k].q_per_channel_zero_points(), q.q_per_channel_zero_points()), k
            assert got[k].q_per_channel_axis() == q.q_per_channel_axis(), k
    assert rc == 0, findings_text(report)


def test_parameters_and_requires_grad_survive(tmp_path):
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 2)
    net.bias.requires_grad_(False)
    obj = {
        "frozen": torch.nn.Parameter(torch.ones(3), requires_grad=False),
        "trainable": torch.nn.Parameter(torch.randn(2, 2)),
        "grad_tensor": torch.randn(3).requires_grad_(),
        "plain": torch.randn(3),
        "params": list(net.parameters()),
        "half_param": torch.nn.Parameter(torch.randn(2).to(torch.float16)),
    }
    exp, out, rc, report = save_and_disarm(tmp_path, obj)
    for got in (torch.load(out, weights_only=True), torch.load(out, weights_only=True, mmap=True)):
        assert_faithful(exp, got)
        for k in ("frozen", "trainable", "half_param"):
            assert type(got[k]) is torch.nn.Parameter and got[k].requires_grad == exp[k].requires_grad, k
        assert got["grad_tensor"].requires_grad and type(got["grad_tensor"]) is torch.Tensor
        assert not got["plain"].requires_grad
        assert [p.requires_grad for p in got["params"]] == [True, False]
    assert rc == 0, findings_text(report)


def test_zip_layout_is_mmap_ready(tmp_path):
    """Storages start 64-byte aligned in the file and the byteorder record says little."""
    import zipfile

    obj = {f"t{i}": torch.arange(i + 1, dtype=torch.float32) for i in range(5)}
    obj["bytes1"] = torch.arange(3, dtype=torch.uint8)
    _, out, _, _ = save_and_disarm(tmp_path, obj)
    import struct

    raw = out.read_bytes()
    with zipfile.ZipFile(out) as z:
        names = z.namelist()
        prefix = names[0].split("/")[0]
        assert z.read(f"{prefix}/byteorder") == b"little"
        for info in z.infolist():
            if "/data/" in info.filename:
                # the local header's own name and extra lengths (its extra field holds the padding)
                n, m = struct.unpack_from("<HH", raw, info.header_offset + 26)
                data_start = info.header_offset + 30 + n + m
                assert data_start % 64 == 0, info.filename
                assert info.compress_type == zipfile.ZIP_STORED


@pytest.mark.parametrize("name", ["uint16", "float8_e5m2", "float8_e8m0fnu", "complex32"])
def test_torch2_only_dtypes_under_compat_torch113_are_dropped_and_reported(tmp_path, name):
    t = tensor_of_dtype(name)
    _, out, rc, report = save_and_disarm(tmp_path, {"t": t, "kept": torch.ones(2)}, "--compat", "torch1.13")
    got = vocab.static_torch_load(out)
    assert got["t"] is None and torch.equal(got["kept"], torch.ones(2))
    assert rc == 1 and name in findings_text(report), findings_text(report)


# --------------------------------------------------------------------------------------------------
# 7. whole-model saves: attributes are named in a finding, never dropped silently
# --------------------------------------------------------------------------------------------------
class _ConfiguredNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.hidden = 32
        self.config = {"lr": 0.1, "layers": [3, 4]}
        self.body = torch.nn.Linear(3, 4)


def test_whole_model_attributes_are_reported(tmp_path):
    torch.manual_seed(0)
    net = _ConfiguredNet()
    inp = tmp_path / "in.pt"
    torch.save(net, inp)
    out, rc, report = disarm_ok(tmp_path, inp)
    got = torch.load(out, weights_only=True)
    exp = collections.OrderedDict(net.named_parameters())  # parameters stay parameters
    assert list(got) == list(exp)
    for k, p in exp.items():
        assert type(got[k]) is torch.nn.Parameter and torch.equal(got[k].detach(), p.detach()), k
    text = findings_text(report)
    assert rc == 1 and "module attribute" in text, text
    for name in ("hidden", "config", "body.in_features"):
        assert name in text, text


# --------------------------------------------------------------------------------------------------
# 8. Lightning checkpoints: callback state keyed by callback classes (Lightning < 1.5)
# --------------------------------------------------------------------------------------------------
class ModelCheckpoint:  # stand-ins: pickled by reference as the dict keys, never instantiated
    pass


class EarlyStopping:
    pass


def test_lightning_callback_state_keyed_by_class_keeps_its_keys(tmp_path):
    torch.manual_seed(0)
    sd = torch.nn.Linear(2, 2).state_dict()
    ckpt_state = {"monitor": "val_loss", "best_model_score": torch.tensor(0.25), "best_k_models": {}}
    stop_state = {"wait_count": 2, "stopped_epoch": 0, "best_score": torch.tensor(0.3), "patience": 3}
    ckpt = {
        "epoch": 4, "global_step": 120, "pytorch-lightning_version": "1.4.9", "state_dict": sd,
        "callbacks": {ModelCheckpoint: ckpt_state, EarlyStopping: stop_state},
        "optimizer_states": [{"state": {}, "param_groups": [{"lr": 0.1, "params": [0, 1]}]}],
    }
    inp = tmp_path / "in.ckpt"
    torch.save(ckpt, inp)
    out, rc, report = disarm_ok(tmp_path, inp)
    assert vocab.check_output(out, "torch2") == []
    got = torch.load(out, weights_only=True)
    mod = __name__
    exp = dict(ckpt, callbacks={f"{mod}.ModelCheckpoint": ckpt_state, f"{mod}.EarlyStopping": stop_state})
    assert_faithful(exp, got)
    assert list(got["callbacks"]) == [f"{mod}.ModelCheckpoint", f"{mod}.EarlyStopping"]
    assert rc == 1 and "(a class) written as the string" in findings_text(report), findings_text(report)


# --------------------------------------------------------------------------------------------------
# 9. Python attributes on a tensor or Parameter (t.tag = ...): torch's weights_only loader restores
#    them (_rebuild_from_type_v2 / _rebuild_parameter_with_state state); disarm keeps the tensor and
#    reports the attributes it drops (README exceptions)
# --------------------------------------------------------------------------------------------------
def test_tensor_python_attributes_are_reported_and_the_tensor_kept(tmp_path):
    t = torch.arange(4.0)
    t.tag = "hi"
    p = torch.nn.Parameter(torch.ones(2))
    p.lr_scale = 0.5
    exp, out, rc, report = save_and_disarm(tmp_path, {"t": t, "p": p, "plain": torch.zeros(1)})
    assert exp["t"].tag == "hi" and exp["p"].lr_scale == 0.5  # the loader does restore them
    got = torch.load(out, weights_only=True)
    assert torch.equal(got["t"], exp["t"]) and type(got["p"]) is torch.nn.Parameter
    assert torch.equal(got["p"].detach(), exp["p"].detach()) and got["p"].requires_grad
    text = findings_text(report)
    assert rc == 1 and "Python attributes of a tensor" in text and "Python attributes of a parameter" in text, text


# --------------------------------------------------------------------------------------------------
# 10. numpy object arrays of plain Python data (joblib and pickle outputs keep them as object arrays)
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("writer", ["joblib", "pickle"])
def test_object_arrays_of_plain_data_are_rebuilt(tmp_path, writer):
    np = pytest.importorskip("numpy")
    joblib = pytest.importorskip("joblib")
    import pickle

    obj = {"mixed": np.array(["a", 1, 2.5, None, (1, 2), {"k": [3]}], dtype=object),
           "grid": np.array([["x", 1], [b"y", 2.0]], dtype=object), "w": np.arange(3.0)}
    inp = tmp_path / f"in.{writer}"
    if writer == "joblib":
        joblib.dump(obj, inp)
    else:
        inp.write_bytes(pickle.dumps(obj, protocol=4))
    out, rc, report = disarm_ok(tmp_path, inp, "--to", writer, out_name=f"out.{writer}")
    from test_formats_objects import writer_globals_ok
    writer_globals_ok(out)  # before it is loaded
    got = joblib.load(out) if writer == "joblib" else pickle.loads(out.read_bytes())
    for k, a in obj.items():
        assert got[k].dtype == a.dtype and got[k].shape == a.shape, k
        assert got[k].tolist() == a.tolist(), k
    assert rc == 0, findings_text(report)
