"""Round trips: torch.save -> modelcdr disarm -> load our output -> compare.

Inputs are benign and built by the tests themselves.  Default-mode outputs are loaded with torch 2.x's
torch.load(weights_only=True) (conftest.load_default_output).  The --compat torch1.13 tests are marked
torch113 and run under Debian's torch 1.13, whose weights_only loader is what that mode targets.
"""
from __future__ import annotations

import collections
import json
import zipfile
from pathlib import Path

import pytest

from conftest import disarm, explain, import_torchvision, load_default_output, require_bin
import vocab

torch = pytest.importorskip("torch")
nn = torch.nn



# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------
def run_roundtrip(tmp_path, obj, *extra, name="in.pt", save_kwargs=None, expect_rc=0):
    require_bin()
    inp = tmp_path / name
    torch.save(obj, inp, **(save_kwargs or {}))
    return run_disarm(tmp_path, inp, *extra, expect_rc=expect_rc)


def run_disarm(tmp_path, inp, *extra, expect_rc=0):
    require_bin()
    out = tmp_path / "out.pt"
    rep = tmp_path / "report.json"
    rc, so, se, report = disarm(inp, out, *extra, report=rep)
    assert rc == expect_rc, explain(rc, so, se)
    assert out.is_file(), "no output written\n" + explain(rc, so, se)
    mode = "torch1.13" if "torch1.13" in extra else "torch2"
    v = vocab.check_output(out, mode)
    assert v == [], f"emit-profile violations ({mode}):\n" + "\n".join(v)
    assert report is not None, "no report written"
    check_report_shape(report, expect_rc)
    return out, report, se


def check_report_shape(report, rc):
    assert report.get("schema") == "modelcdr.disarm/1", report
    assert report["tool"]["name"] == "modelcdr"
    assert isinstance(report["files"], list) and len(report["files"]) == 1
    f = report["files"][0]
    for k in ("input", "output", "format", "status", "error", "tensors", "removed", "findings", "architecture"):
        assert k in f, f"report file entry lacks {k!r}: {f}"
    want = {0: "clean", 1: "removed", 2: "rejected"}[rc]
    assert f["status"] == want, f
    s = report["summary"]
    for k in ("files", "clean", "removed", "rejected", "skipped"):
        assert k in s, s
    assert s["files"] == 1 and s[want] == 1, s
    if rc == 0:
        assert f["removed"] == [], f["removed"]
    if rc == 1:
        assert f["removed"], "exit 1 but nothing listed under removed"


def load_wo(path):
    return torch.load(path, weights_only=True)


def assert_same(exp, got, compat=False, strict_layout=True):
    d = vocab.compare(exp, got, compat=compat, strict_layout=strict_layout)
    assert d == [], "\n".join(d[:40])


def sd_of(model):
    return model.state_dict()


def seeded(ctor, **kw):
    torch.manual_seed(0)
    m = ctor(**kw)
    # make BatchNorm running stats non-trivial so they are not all zeros/ones
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, nn.modules.batchnorm._BatchNorm) and mod.running_mean is not None:
                mod.running_mean.normal_()
                mod.running_var.uniform_(0.5, 2.0)
                mod.num_batches_tracked.fill_(7)
    return m


class TinyNet(nn.Module):
    """A user class: whole-model pickles reference it by name (GLOBAL test_roundtrip TinyNet)."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(4, 8)
        self.bn = nn.BatchNorm1d(8)
        self.fc2 = nn.Linear(8, 2)
        self.register_buffer("scale", torch.arange(2, dtype=torch.float32))

    def forward(self, x):
        return self.fc2(torch.relu(self.bn(self.fc1(x)))) * self.scale


# --------------------------------------------------------------------------------------------------
# torchvision state dicts
# --------------------------------------------------------------------------------------------------
@pytest.mark.torchvision
@pytest.mark.parametrize("arch", ["resnet18", "mobilenet_v3_small", "squeezenet1_0"])
def test_torchvision_state_dict(tmp_path, arch):
    tv = import_torchvision()
    model = seeded(getattr(tv.models, arch), weights=None)
    sd = model.state_dict()
    out, report, _ = run_roundtrip(tmp_path, sd)
    got = load_wo(out)
    assert isinstance(got, collections.OrderedDict)
    assert list(got.keys()) == list(sd.keys())
    assert_same(sd, got)
    assert got._metadata == sd._metadata
    # the result really is a usable state dict
    fresh = getattr(tv.models, arch)(weights=None)
    fresh.load_state_dict(got, strict=True)
    # report counters
    t = report["files"][0]["tensors"]
    assert t["count"] == len(sd), t
    assert t["total_bytes"] == sum(v.numel() * v.element_size() for v in sd.values()), t
    assert sum(t["dtypes"].values()) == len(sd), t


# --------------------------------------------------------------------------------------------------
# tied weights and views
# --------------------------------------------------------------------------------------------------
def _views_dict():
    torch.manual_seed(1)
    w = torch.randn(6, 8)
    other = torch.randn(5)
    sd = collections.OrderedDict()
    sd["a"] = w
    sd["b"] = w                      # same object (tied)
    sd["t"] = w.t()                  # transpose view
    sd["s"] = w[1:]                  # slice with offset
    sd["c"] = w[2:, 3:5]             # 2-D window, offset + non-contiguous
    sd["flat"] = w.view(-1)[7:19]    # flat view, odd offset
    sd["step"] = w[:, ::3]           # stride 3
    sd["other"] = other
    sd["other_again"] = other
    sd._metadata = collections.OrderedDict([("", {"version": 1})])
    return sd


def _check_views(sd, got):
    assert got["a"] is got["b"], "tied tensor not the same object after load"
    assert got["other"] is got["other_again"]
    ptr = got["a"].storage().data_ptr()
    for k in ("t", "s", "c", "flat", "step"):
        assert got[k].storage().data_ptr() == ptr, f"{k} does not share storage with a"
    assert got["other"].storage().data_ptr() != ptr
    # writes through one view are visible through the others (real shared memory)
    got["a"][2, 3] = 12345.0
    assert got["c"][0, 0].item() == 12345.0
    assert got["t"][3, 2].item() == 12345.0


def test_tied_weights_and_views(tmp_path):
    sd = _views_dict()
    out, _, _ = run_roundtrip(tmp_path, sd)
    got = load_wo(out)
    assert_same(sd, got)
    _check_views(sd, got)
    with zipfile.ZipFile(out) as zf:
        recs = [n for n in zf.namelist() if n.startswith("archive/data/")]
    assert len(recs) == 2, f"expected one record per distinct storage, got {recs}"


def test_legacy_format_views(tmp_path):
    sd = _views_dict()
    out, report, _ = run_roundtrip(tmp_path, sd, save_kwargs={"_use_new_zipfile_serialization": False})
    assert report["files"][0]["format"] == "torch-legacy"
    got = load_wo(out)
    assert_same(sd, got)
    _check_views(sd, got)


@pytest.mark.torchvision
@pytest.mark.parametrize("arch", ["resnet18"])
def test_legacy_format_state_dict(tmp_path, arch):
    tv = import_torchvision()
    sd = seeded(getattr(tv.models, arch), weights=None).state_dict()
    out, _, _ = run_roundtrip(tmp_path, sd, save_kwargs={"_use_new_zipfile_serialization": False})
    got = load_wo(out)
    assert_same(sd, got)
    assert got._metadata == sd._metadata


@pytest.mark.torch2
def test_transformers_gpt2_state_dict_runs_the_same(tmp_path):
    """A Hugging Face pytorch_model.bin (torch.save of the state dict, lm_head tied to wte), built here
    from a config (no download): the disarmed file loads into a fresh model that computes the same."""
    transformers = pytest.importorskip("transformers")
    cfg = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=100, n_positions=16,
                                  bos_token_id=0, eos_token_id=0)
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(cfg).eval()
    sd = model.state_dict()
    out, _, _ = run_roundtrip(tmp_path, sd, name="pytorch_model.bin")
    got = load_default_output(out)
    assert_same(sd, got)
    wte, head = got["transformer.wte.weight"], got["lm_head.weight"]
    assert head.untyped_storage().data_ptr() == wte.untyped_storage().data_ptr(), "lm_head no longer tied"
    fresh = transformers.GPT2LMHeadModel(cfg).eval()
    fresh.load_state_dict(got, strict=True)
    ids = torch.arange(12).reshape(1, 12)
    with torch.no_grad():
        assert torch.equal(fresh(ids).logits, model(ids).logits)


# --------------------------------------------------------------------------------------------------
# dtypes and layouts
# --------------------------------------------------------------------------------------------------
def _dtype_dict():
    g = torch.Generator().manual_seed(2)
    d = collections.OrderedDict()
    for dt in (torch.float64, torch.float32, torch.float16, torch.bfloat16):
        d[str(dt)] = torch.randn(3, 5, generator=g).to(dt)
    d["complex64"] = torch.randn(4, 2, dtype=torch.complex64, generator=g)
    d["complex128"] = torch.randn(3, dtype=torch.complex128, generator=g)
    for dt, lo, hi in ((torch.int64, -2**62, 2**62), (torch.int32, -2**31, 2**31 - 1),
                       (torch.int16, -2**15, 2**15 - 1), (torch.int8, -128, 127), (torch.uint8, 0, 255)):
        d[str(dt)] = torch.randint(lo, hi, (7,), dtype=dt, generator=g)
    d["bool"] = torch.randint(0, 2, (3, 3), generator=g).bool()
    d["zero_dim"] = torch.tensor(3.25)
    d["zero_dim_int"] = torch.tensor(-7, dtype=torch.int64)
    d["zero_size"] = torch.empty(0, 4)
    d["zero_size_3d"] = torch.empty(2, 0, 3, dtype=torch.float16)
    base = torch.randn(5, 6, generator=g)
    d["strided"] = base[1:, ::2]                 # offset 6, stride (6, 2)
    d["strided_t"] = base.t()[2:]                # offset 2, stride (1, 6)
    d["expanded"] = torch.randn(1, 3, generator=g).expand(4, 3)   # stride 0
    big = torch.randn(100, generator=g, dtype=torch.float64)
    d["tail"] = big[97:]                         # small view of a bigger storage
    d["param"] = nn.Parameter(torch.randn(2, 2, generator=g))
    d["param_frozen"] = nn.Parameter(torch.randn(3, generator=g), requires_grad=False)
    d["nan_inf"] = torch.tensor([float("nan"), float("inf"), -float("inf"), -0.0])
    return d


def test_dtypes_and_strides(tmp_path):
    d = _dtype_dict()
    out, report, _ = run_roundtrip(tmp_path, d)
    got = load_wo(out)
    assert_same(d, got)
    assert isinstance(got["param"], nn.Parameter) and got["param"].requires_grad
    assert isinstance(got["param_frozen"], nn.Parameter) and not got["param_frozen"].requires_grad
    assert report["files"][0]["tensors"]["count"] == len(d)


@pytest.mark.torch113
def test_dtypes_compat_mode(tmp_path):
    d = _dtype_dict()
    out, _, _ = run_roundtrip(tmp_path, d, "--compat", "torch1.13")
    assert_same(d, load_wo(out), compat=True)


def test_empty_state_dict(tmp_path):
    sd = collections.OrderedDict()
    sd._metadata = collections.OrderedDict()
    out, report, _ = run_roundtrip(tmp_path, sd)
    got = load_wo(out)
    assert isinstance(got, collections.OrderedDict) and len(got) == 0
    assert report["files"][0]["tensors"]["count"] == 0


def test_sparse_coo(tmp_path):
    g = torch.Generator().manual_seed(3)
    dense = torch.randn(5, 4, generator=g) * (torch.rand(5, 4, generator=g) > 0.6)
    d = {"coalesced": dense.to_sparse(), "uncoalesced": torch.sparse_coo_tensor(
        torch.tensor([[0, 2, 0], [1, 1, 1]]), torch.tensor([1.0, 2.0, 3.0]), (3, 3))}
    out, _, _ = run_roundtrip(tmp_path, d)
    got = load_wo(out)
    assert_same(d, got)
    assert torch.equal(got["coalesced"].to_dense(), dense)


def test_quantized(tmp_path):
    g = torch.Generator().manual_seed(4)
    d = {
        "per_tensor": torch.quantize_per_tensor(torch.randn(4, 3, generator=g), 0.05, 7, torch.quint8),
        "per_tensor_qint8": torch.quantize_per_tensor(torch.randn(6, generator=g), 0.1, 0, torch.qint8),
        "per_channel": torch.quantize_per_channel(
            torch.randn(3, 5, generator=g), torch.tensor([0.1, 0.02, 0.3], dtype=torch.float64),
            torch.tensor([0, 1, 2]), 0, torch.qint8),
    }
    out, _, _ = run_roundtrip(tmp_path, d)
    got = load_default_output(out)  # qtensors: torch 2.x's weights_only loader
    assert_same(d, got)
    got2 = vocab.static_torch_load(out)
    assert_same(d, got2)


# --------------------------------------------------------------------------------------------------
# checkpoints with non-tensor values
# --------------------------------------------------------------------------------------------------
def _checkpoint(opt_kind):
    torch.manual_seed(5)
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))
    if opt_kind == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    else:
        opt = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.9, 0.999))
    for _ in range(2):
        opt.zero_grad()
        model(torch.randn(5, 4)).pow(2).mean().backward()
        opt.step()
    return {
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "epoch": 3,
        "best": None,
        "name": "run",
        "flags": [True, False],
        "nested": {"a": (1, 2)},
    }


@pytest.mark.torch113
@pytest.mark.parametrize("opt_kind", ["sgd", "adam"])
def test_checkpoint_compat(tmp_path, opt_kind):
    ck = _checkpoint(opt_kind)
    out, _, _ = run_roundtrip(tmp_path, ck, "--compat", "torch1.13")
    names = vocab.pickle_opcode_names(vocab.read_data_pkl(out))
    assert "BINFLOAT" not in names
    got = load_wo(out)
    assert_same(ck, got, compat=True)
    # the floats became 0-dim float64 tensors
    lr = got["optimizer"]["param_groups"][0]["lr"]
    assert isinstance(lr, torch.Tensor) and lr.dtype == torch.float64 and lr.dim() == 0
    assert lr.item() == ck["optimizer"]["param_groups"][0]["lr"]


@pytest.mark.parametrize("opt_kind", ["sgd", "adam"])
def test_checkpoint_default_mode(tmp_path, opt_kind):
    ck = _checkpoint(opt_kind)
    out, _, _ = run_roundtrip(tmp_path, ck)
    data = vocab.read_data_pkl(out)
    assert "BINFLOAT" in vocab.pickle_opcode_names(data)
    # BINFLOAT is outside the 1.13 profile: the strict checker must say so ...
    assert any("BINFLOAT" in x for x in vocab.check_pickle(data, "torch1.13"))
    # ... and is fine in the torch2 profile (checked in run_roundtrip), which torch 2.x's loader reads.
    assert_same(ck, load_default_output(out))
    assert_same(ck, vocab.static_torch_load(out))


def test_checkpoint_misc_values_default_mode(tmp_path):
    obj = {
        "bytes": b"\x00\x01\xffabc",
        "set": {1, 2, 3},
        "float": 2.5,
        "neg_big": -(2**80),
        "tuple_of_floats": (0.1, -1e300),
        "size": torch.Size([2, 3]),
        "unicode": "h\u00e9llo \u2603",
        "int_keys": {1: "a", -5: "b"},
        "w": torch.ones(2),
    }
    out, _, _ = run_roundtrip(tmp_path, obj)
    got = load_default_output(out)
    assert_same(obj, got)


@pytest.mark.torch113
def test_checkpoint_misc_values_compat(tmp_path):
    obj = {
        "bytes": b"\x00\x01\xffabc",
        "set": {1, 2, 3},
        "float": 2.5,
        "w": torch.ones(2),
    }
    out, _, _ = run_roundtrip(tmp_path, obj, "--compat", "torch1.13")
    assert_same(obj, load_wo(out), compat=True)


@pytest.mark.torch113
def test_numpy_scalars(tmp_path):
    np = pytest.importorskip("numpy")
    ck = {"best_acc": np.float64(0.5), "epoch": np.int64(3), "w": torch.arange(4.0)}
    out, report, se = run_roundtrip(tmp_path, ck, "--compat", "torch1.13", expect_rc=1)
    got = load_wo(out)
    assert set(got) == set(ck)
    assert torch.equal(got["w"], ck["w"])
    ba = got["best_acc"]
    assert (isinstance(ba, torch.Tensor) and ba.dim() == 0 and ba.dtype == torch.float64
            and ba.item() == 0.5), repr(ba)
    assert got["epoch"] == 3 and type(got["epoch"]) is int, repr(got["epoch"])
    removed = json.dumps(report["files"][0]["removed"])
    assert "numpy" in removed, removed
    assert se.strip(), "exit 1 should explain on stderr what was converted"


def test_numpy_scalars_default_mode(tmp_path):
    np = pytest.importorskip("numpy")
    ck = {"best_acc": np.float64(0.5), "w": torch.arange(4.0)}
    out, _, _ = run_roundtrip(tmp_path, ck, expect_rc=1)
    got = load_default_output(out)
    assert got["best_acc"] == 0.5 and type(got["best_acc"]) is float


# --------------------------------------------------------------------------------------------------
# whole-model pickles
# --------------------------------------------------------------------------------------------------
def _assert_state_dict_equal(sd, got):
    assert list(got.keys()) == list(sd.keys())
    for k, v in sd.items():
        g = got[k]
        assert isinstance(g, torch.Tensor), k
        assert g.dtype == v.dtype and tuple(g.shape) == tuple(v.shape), k
        assert vocab._tensor_bytes(g) == vocab._tensor_bytes(v), k


def _whole_model_case(tmp_path, model, class_names, legacy=False):
    sd = model.state_dict()
    kw = {"_use_new_zipfile_serialization": False} if legacy else None
    out, report, se = run_roundtrip(tmp_path, model, save_kwargs=kw, expect_rc=1)
    got = load_wo(out)
    _assert_state_dict_equal(sd, got)
    type(model)().load_state_dict(got, strict=True) if isinstance(model, TinyNet) else None
    arch = Path(str(out) + ".architecture.json")
    assert arch.is_file(), "no OUT.architecture.json"
    text = arch.read_text()
    json.loads(text)
    for name in class_names:
        assert name in text, f"{name!r} not in architecture.json"
    f = report["files"][0]
    assert f["architecture"] and Path(f["architecture"]).name == arch.name, f["architecture"]
    assert se.strip(), "exit 1 should say on stderr what was removed"
    return got, text


def test_whole_model_custom_class(tmp_path):
    torch.manual_seed(6)
    m = TinyNet()
    _, text = _whole_model_case(tmp_path, m, ["TinyNet", "Linear", "BatchNorm1d"])
    for path in ("fc1", "bn", "fc2"):
        assert path in text


def test_whole_model_sequential(tmp_path):
    torch.manual_seed(7)
    m = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8, 2))
    _whole_model_case(tmp_path, m, ["Sequential", "Conv2d", "Linear"])


def test_whole_model_legacy_format(tmp_path):
    torch.manual_seed(8)
    m = TinyNet()
    _whole_model_case(tmp_path, m, ["TinyNet", "Linear"], legacy=True)


# --------------------------------------------------------------------------------------------------
# the vocabulary checker itself (no binary needed)
# --------------------------------------------------------------------------------------------------
def test_vocab_accepts_torch_save_pickle(tmp_path):
    """A torch.save state dict pickle (1.13 or 2.x) is inside the 1.13 profile."""
    p = tmp_path / "x.pt"
    torch.save(_views_dict(), p)
    assert vocab.check_pickle(vocab.read_data_pkl(p), "torch1.13") == []


def _torch_save_entries(tmp_path):
    p = tmp_path / "archive.pt"  # torch names the archive folder after the file: archive/...
    torch.save(_views_dict(), p)
    with zipfile.ZipFile(p) as zf:
        return zf.namelist()


@pytest.mark.torch113
def test_vocab_entries_of_torch113_zip(tmp_path):
    """torch 1.13's zip lacks the records 2.x writes; the entry checker says which."""
    v = vocab.check_entries(_torch_save_entries(tmp_path))
    assert "missing entry 'archive/byteorder'" in v, v


@pytest.mark.torch2
def test_vocab_entries_of_torch2_zip(tmp_path):
    """torch 2.x's own zip has every record the checker requires of our outputs."""
    assert vocab.check_entries(_torch_save_entries(tmp_path)) == []


def test_vocab_rejects_foreign_globals():
    bad = b"\x80\x02cposix\nsystem\nq\x00X\x02\x00\x00\x00hiq\x01\x85q\x02Rq\x03."
    v = vocab.check_pickle(bad)
    assert any("posix system" in x for x in v)
    assert any("bytes after STOP" in x for x in vocab.check_pickle(b"\x80\x02N.junk"))
    assert any("first opcode" in x for x in vocab.check_pickle(b"N."))
    assert any("SHORT_BINSTRING" in x for x in vocab.check_pickle(b"\x80\x02U\x01a."))

