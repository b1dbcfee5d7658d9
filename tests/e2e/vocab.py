"""Static checks of modelcdr's *output* and a data-only pickle evaluator.

Nothing in this module executes pickle code:

* ``check_entries`` / ``check_zip`` look at the zip directory and small text records.
* ``check_pickle`` walks ``data.pkl`` with ``pickletools.genops`` (a disassembler).
* ``static_load`` is a tiny stack machine over ``genops`` output.  It resolves GLOBAL only through an
  explicit dictionary handed in by the caller (default: a handful of harmless builtins) and refuses
  everything else, so it can read plain-data pickles without importing or calling anything.

The emit profile is docs/FORMATS.md §5.4 plus the 2.x-only additions CLI.md allows in the default
(``torch2``) mode.
"""
from __future__ import annotations

import codecs
import collections
import io
import pickletools
import re
import struct
import zipfile
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

PREFIX = "archive/"

# --------------------------------------------------------------------------------------------------
# Vocabulary
# --------------------------------------------------------------------------------------------------
BASE_OPCODES = frozenset(
    """PROTO STOP MARK TUPLE TUPLE1 TUPLE2 TUPLE3 EMPTY_TUPLE EMPTY_LIST EMPTY_DICT APPEND APPENDS
    SETITEM SETITEMS NONE NEWTRUE NEWFALSE BININT BININT1 BININT2 LONG1 BINUNICODE BINPUT LONG_BINPUT
    BINGET LONG_BINGET GLOBAL REDUCE BUILD BINPERSID""".split()
)
TORCH2_ONLY_OPCODES = frozenset({"BINFLOAT"})

LEGACY_STORAGES = frozenset(
    """DoubleStorage FloatStorage HalfStorage BFloat16Storage ComplexDoubleStorage ComplexFloatStorage
    LongStorage IntStorage ShortStorage CharStorage ByteStorage BoolStorage QInt8Storage QUInt8Storage
    QInt32Storage QUInt4x2Storage QUInt2x4Storage""".split()
)
# dtype objects that torch 1.13's weights_only allowlist knows
DTYPES_113 = frozenset(
    "complex32 complex64 complex128 float16 float32 float64 int8 int16 int32 int64".split()
)
# further dtypes that only 2.x accepts (UntypedStorage + _rebuild_tensor_v3, or dtype values)
DTYPES_2X = frozenset(
    """bfloat16 bool uint8 uint16 uint32 uint64 float8_e4m3fn float8_e5m2 float8_e4m3fnuz float8_e5m2fnuz
    float8_e8m0fnu float4_e2m1fn_x2 qint8 quint8 qint32 quint4x2 quint2x4 bits1x8 bits2x4 bits4x2 bits8
    bits16 int1 int2 int3 int4 int5 int6 int7 uint1 uint2 uint3 uint4 uint5 uint6 uint7""".split()
)

BASE_GLOBALS = frozenset(
    {("collections", "OrderedDict"),
     ("torch._utils", "_rebuild_tensor_v2"),
     ("torch._utils", "_rebuild_parameter"),
     ("torch._utils", "_rebuild_qtensor"),
     ("torch._utils", "_rebuild_sparse_tensor"),
     ("torch", "Size"),
     ("torch.serialization", "_get_layout"),
     ("torch", "per_tensor_affine"),
     ("torch", "per_channel_affine")}
    | {("torch", s) for s in LEGACY_STORAGES}
    | {("torch", d) for d in DTYPES_113}
)
TORCH2_ONLY_GLOBALS = frozenset(
    {("_codecs", "encode"),
     ("builtins", "set"), ("builtins", "complex"), ("builtins", "bytearray"),
     ("__builtin__", "set"), ("__builtin__", "complex"), ("__builtin__", "bytearray"),
     ("torch.storage", "UntypedStorage"),
     ("torch._utils", "_rebuild_tensor_v3"),
     ("torch", "device")}
    | {("torch", d) for d in DTYPES_2X}
)

# CSR for torch 1.13 (--compat): its loader rebuilds CSR only through this; 2.x's has no such name
TORCH113_ONLY_GLOBALS = frozenset({("torch._utils", "_rebuild_sparse_csr_tensor")})

MODES = ("torch2", "torch1.13")


def allowed_opcodes(mode: str = "torch2") -> frozenset:
    assert mode in MODES, mode
    return BASE_OPCODES | (TORCH2_ONLY_OPCODES if mode == "torch2" else frozenset())


def allowed_globals(mode: str = "torch2") -> frozenset:
    assert mode in MODES, mode
    return BASE_GLOBALS | (TORCH2_ONLY_GLOBALS if mode == "torch2" else TORCH113_ONLY_GLOBALS)


# --------------------------------------------------------------------------------------------------
# Pickle check
# --------------------------------------------------------------------------------------------------
def check_pickle(data: bytes, mode: str = "torch2") -> List[str]:
    """Return the list of emit-profile violations of one pickle stream (empty = OK)."""
    v: List[str] = []
    ops = allowed_opcodes(mode)
    globs = allowed_globals(mode)
    seen_any = False
    last_name = None
    last_pos = -1
    try:
        for i, (op, arg, pos) in enumerate(pickletools.genops(data)):
            seen_any = True
            if i == 0 and not (op.name == "PROTO" and arg == 2):
                v.append(f"first opcode is {op.name} {arg!r} at {pos}, expected PROTO 2")
            if op.name not in ops:
                v.append(f"opcode {op.name} at {pos} not in the {mode} emit profile")
            if op.name == "PROTO" and i != 0:
                v.append(f"PROTO repeated at {pos}")
            if op.name == "GLOBAL":
                mod, _, name = str(arg).partition(" ")
                if (mod, name) not in globs:
                    v.append(f"GLOBAL '{mod} {name}' at {pos} not allowed in {mode} mode")
            last_name, last_pos = op.name, pos
    except Exception as e:  # malformed stream
        v.append(f"genops failed: {type(e).__name__}: {e}")
        return v
    if not seen_any:
        v.append("empty pickle")
        return v
    if last_name != "STOP":
        v.append(f"last opcode is {last_name}, expected STOP")
    elif last_pos + 1 != len(data):
        v.append(f"{len(data) - last_pos - 1} bytes after STOP")
    return v


def pickle_opcode_names(data: bytes) -> List[str]:
    return [op.name for op, _a, _p in pickletools.genops(data)]


def pickle_globals(data: bytes) -> List[Tuple[str, str]]:
    out = []
    for op, arg, _p in pickletools.genops(data):
        if op.name == "GLOBAL":
            mod, _, name = str(arg).partition(" ")
            out.append((mod, name))
    return out


# --------------------------------------------------------------------------------------------------
# Zip checks
# --------------------------------------------------------------------------------------------------
REQUIRED_RECORDS = ("data.pkl", "version", "byteorder", ".format_version", ".storage_alignment")
OPTIONAL_RECORDS = (".data/serialization_id",)
_DATA_RE = re.compile(r"^data/(0|[1-9][0-9]*)$")


def check_entries(names: Iterable[str]) -> List[str]:
    """Check the entry names of an output zip (order: data.pkl first)."""
    names = list(names)
    v: List[str] = []
    if not names:
        return ["zip has no entries"]
    if names[0] != PREFIX + "data.pkl":
        v.append(f"first entry is {names[0]!r}, expected 'archive/data.pkl'")
    if len(set(names)) != len(names):
        v.append("duplicate entry names")
    keys = []
    for n in names:
        if not n.startswith(PREFIX):
            v.append(f"entry {n!r} not under 'archive/'")
            continue
        rel = n[len(PREFIX):]
        m = _DATA_RE.match(rel)
        if m:
            keys.append(int(m.group(1)))
        elif rel not in REQUIRED_RECORDS and rel not in OPTIONAL_RECORDS:
            v.append(f"unexpected entry {n!r}")
    for r in REQUIRED_RECORDS:
        if PREFIX + r not in names:
            v.append(f"missing entry 'archive/{r}'")
    if sorted(keys) != list(range(len(keys))):
        v.append(f"storage keys are not 0..n-1: {sorted(keys)}")
    return v


def check_zip(path) -> List[str]:
    """Container-level checks of one output file: entries, record contents, CRCs, storage method."""
    v: List[str] = []
    try:
        zf = zipfile.ZipFile(path)
    except Exception as e:
        return [f"not a zip: {e}"]
    with zf:
        infos = zf.infolist()
        v += check_entries(i.filename for i in infos)
        bad = None
        try:
            bad = zf.testzip()
        except Exception as e:
            v.append(f"zip read error: {e}")
        if bad:
            v.append(f"bad CRC in {bad}")
        for i in infos:
            if i.compress_type != zipfile.ZIP_STORED:
                v.append(f"{i.filename} is not stored (method {i.compress_type})")
            if i.flag_bits & 0x1:
                v.append(f"{i.filename} is encrypted")
        names = {i.filename for i in infos}

        def rec(n):
            return zf.read(PREFIX + n) if PREFIX + n in names else None

        ver = rec("version")
        if ver is not None and ver.strip() not in (b"3",):
            v.append(f"version record is {ver!r}")
        bo = rec("byteorder")
        if bo is not None and bo != b"little":
            v.append(f"byteorder record is {bo!r}")
        fv = rec(".format_version")
        if fv is not None and fv.strip() != b"1":
            v.append(f".format_version record is {fv!r}")
        sa = rec(".storage_alignment")
        if sa is not None and sa.strip() != b"64":
            v.append(f".storage_alignment record is {sa!r}")
        sid = rec(".data/serialization_id")
        if sid is not None and not re.fullmatch(rb"[0-9]{40}", sid):
            v.append(f".data/serialization_id is {sid!r}")
        # data alignment (torch writes 64-aligned storages; CLI.md promises a torch-like zip)
        with open(path, "rb") as f:
            for i in infos:
                if not _DATA_RE.match(i.filename[len(PREFIX):]) or i.file_size == 0:
                    continue
                f.seek(i.header_offset)
                hdr = f.read(30)
                if len(hdr) < 30 or hdr[:4] != b"PK\x03\x04":
                    v.append(f"bad local header for {i.filename}")
                    continue
                nlen, xlen = struct.unpack("<HH", hdr[26:30])
                start = i.header_offset + 30 + nlen + xlen
                if start % 64:
                    v.append(f"{i.filename} data at offset {start} is not 64-byte aligned")
    return v


def check_output(path, mode: str = "torch2") -> List[str]:
    """All static checks of one modelcdr output file."""
    v = check_zip(path)
    try:
        with zipfile.ZipFile(path) as zf:
            data = zf.read(PREFIX + "data.pkl")
    except Exception as e:
        return v + [f"cannot read archive/data.pkl: {e}"]
    return v + check_pickle(data, mode)


def read_data_pkl(path) -> bytes:
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        name = next(n for n in names if n.endswith("/data.pkl"))
        return zf.read(name)


# --------------------------------------------------------------------------------------------------
# Data-only pickle evaluator
# --------------------------------------------------------------------------------------------------
class StaticLoadError(Exception):
    pass


def _latin1_encode(s, enc="latin1"):
    if enc not in ("latin1", "latin-1"):
        raise StaticLoadError(f"_codecs.encode with encoding {enc!r}")
    return codecs.encode(s, "latin1")


PLAIN_GLOBALS: Dict[str, Any] = {
    "collections OrderedDict": collections.OrderedDict,
    "builtins set": set, "__builtin__ set": set,
    "builtins frozenset": frozenset, "__builtin__ frozenset": frozenset,
    "builtins bytearray": bytearray, "__builtin__ bytearray": bytearray,
    "builtins complex": complex, "__builtin__ complex": complex,
    "_codecs encode": _latin1_encode,
}

_MARK = object()


def static_load(data: bytes, globals_map: Optional[Dict[str, Any]] = None,
                persistent_load: Optional[Callable[[Any], Any]] = None,
                build_ok: Optional[Callable[[Any, Any], bool]] = None) -> Any:
    """Evaluate a pickle without importing anything.

    GLOBAL/STACK_GLOBAL resolve only through ``globals_map`` ("module name" -> object); REDUCE and NEWOBJ
    may call only those objects.  BUILD is allowed on an OrderedDict with a dict state (``_metadata``)
    or when ``build_ok(obj, state)`` says so (then ``obj.__setstate__``/__dict__ update is done by it).
    """
    gm = PLAIN_GLOBALS if globals_map is None else globals_map

    def callable_ok(f):  # looked up per call: a table may add inert stand-ins as names appear
        return any(f is o for o in gm.values())

    stack: List[Any] = []
    memo: Dict[int, Any] = {}

    def pop_mark():
        for k in range(len(stack) - 1, -1, -1):
            if stack[k] is _MARK:
                items = stack[k + 1:]
                del stack[k:]
                return items
        raise StaticLoadError("no MARK")

    def glob(mod, name):
        key = f"{mod} {name}"
        if key not in gm:
            raise StaticLoadError(f"global {key!r} not allowed")
        return gm[key]

    for op, arg, pos in pickletools.genops(data):
        n = op.name
        if n in ("PROTO", "FRAME"):
            continue
        if n == "STOP":
            if len(stack) != 1:
                raise StaticLoadError(f"stack has {len(stack)} items at STOP")
            return stack.pop()
        if n == "MARK":
            stack.append(_MARK)
        elif n == "POP":
            stack.pop()
        elif n == "POP_MARK":
            pop_mark()
        elif n == "DUP":
            stack.append(stack[-1])
        elif n == "TUPLE":
            stack.append(tuple(pop_mark()))
        elif n in ("TUPLE1", "TUPLE2", "TUPLE3"):
            k = int(n[-1])
            items = stack[-k:]
            del stack[-k:]
            stack.append(tuple(items))
        elif n == "EMPTY_TUPLE":
            stack.append(())
        elif n == "EMPTY_LIST":
            stack.append([])
        elif n == "LIST":
            stack.append(list(pop_mark()))
        elif n == "EMPTY_DICT":
            stack.append({})
        elif n == "DICT":
            items = pop_mark()
            stack.append({items[i]: items[i + 1] for i in range(0, len(items), 2)})
        elif n == "EMPTY_SET":
            stack.append(set())
        elif n == "FROZENSET":
            stack.append(frozenset(pop_mark()))
        elif n == "APPEND":
            x = stack.pop()
            if not isinstance(stack[-1], list):
                raise StaticLoadError("APPEND to non-list")
            stack[-1].append(x)
        elif n == "APPENDS":
            items = pop_mark()
            if not isinstance(stack[-1], list):
                raise StaticLoadError("APPENDS to non-list")
            stack[-1].extend(items)
        elif n == "ADDITEMS":
            items = pop_mark()
            if not isinstance(stack[-1], set):
                raise StaticLoadError("ADDITEMS to non-set")
            stack[-1].update(items)
        elif n == "SETITEM":
            val = stack.pop()
            key = stack.pop()
            if not isinstance(stack[-1], dict):
                raise StaticLoadError("SETITEM on non-dict")
            stack[-1][key] = val
        elif n == "SETITEMS":
            items = pop_mark()
            if not isinstance(stack[-1], dict):
                raise StaticLoadError("SETITEMS on non-dict")
            for i in range(0, len(items), 2):
                stack[-1][items[i]] = items[i + 1]
        elif n == "NONE":
            stack.append(None)
        elif n == "NEWTRUE":
            stack.append(True)
        elif n == "NEWFALSE":
            stack.append(False)
        elif n == "INT":  # protocol 0: I01/I00 are booleans; genops gives True/False for them
            stack.append(arg)
        elif n in ("BININT", "BININT1", "BININT2", "LONG", "LONG1", "LONG4"):
            stack.append(int(arg))
        elif n in ("FLOAT", "BINFLOAT"):
            stack.append(float(arg))
        elif n in ("STRING", "BINSTRING", "SHORT_BINSTRING"):
            # Python 3's default (encoding='ASCII') behaviour for py2 str
            a = arg if isinstance(arg, bytes) else str(arg).encode("latin1")
            stack.append(a.decode("ascii"))
        elif n in ("BINBYTES", "SHORT_BINBYTES", "BINBYTES8"):
            stack.append(bytes(arg))
        elif n == "BYTEARRAY8":
            stack.append(bytearray(arg))
        elif n in ("UNICODE", "BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8"):
            stack.append(str(arg))
        elif n in ("PUT", "BINPUT", "LONG_BINPUT"):
            memo[int(arg)] = stack[-1]
        elif n == "MEMOIZE":
            memo[len(memo)] = stack[-1]
        elif n in ("GET", "BINGET", "LONG_BINGET"):
            if int(arg) not in memo:
                raise StaticLoadError(f"memo {arg} undefined")
            stack.append(memo[int(arg)])
        elif n == "GLOBAL":
            mod, _, name = str(arg).partition(" ")
            stack.append(glob(mod, name))
        elif n == "STACK_GLOBAL":
            name = stack.pop()
            mod = stack.pop()
            if not isinstance(mod, str) or not isinstance(name, str):
                raise StaticLoadError("STACK_GLOBAL of non-str")
            stack.append(glob(mod, name))
        elif n in ("REDUCE", "NEWOBJ"):
            args = stack.pop()
            func = stack.pop()
            if not callable_ok(func):
                raise StaticLoadError(f"{n} of a non-allowlisted object")
            if not isinstance(args, tuple):
                raise StaticLoadError(f"{n} args not a tuple")
            stack.append(func(*args))
        elif n == "BUILD":
            state = stack.pop()
            obj = stack[-1]
            if build_ok is not None and build_ok(obj, state):
                pass
            elif isinstance(obj, collections.OrderedDict) and isinstance(state, dict):
                for k, val in state.items():
                    if not isinstance(k, str):
                        raise StaticLoadError("BUILD state key not str")
                    setattr(obj, k, val)
            else:
                raise StaticLoadError(f"BUILD on {type(obj).__name__}")
        elif n in ("BINPERSID", "PERSID"):
            pid = stack.pop() if n == "BINPERSID" else arg
            if persistent_load is None:
                raise StaticLoadError("persistent id without persistent_load")
            stack.append(persistent_load(pid))
        else:
            raise StaticLoadError(f"opcode {n} not supported by static_load")
    raise StaticLoadError("no STOP")


def torch_globals_map():
    """GLOBAL table for reading torch files whose pickle passed ``check_pickle`` (our outputs).

    Only the same objects torch's own weights_only loader allows.  Imports torch.
    """
    import torch
    import torch._utils as tu
    import torch.serialization as ts

    gm = dict(PLAIN_GLOBALS)
    for fn in ("_rebuild_tensor_v2", "_rebuild_parameter", "_rebuild_qtensor", "_rebuild_sparse_tensor"):
        gm[f"torch._utils {fn}"] = getattr(tu, fn)
    if hasattr(tu, "_rebuild_tensor_v3"):
        gm["torch._utils _rebuild_tensor_v3"] = tu._rebuild_tensor_v3
    if hasattr(tu, "_rebuild_sparse_csr_tensor"):  # torch 1.x only
        gm["torch._utils _rebuild_sparse_csr_tensor"] = tu._rebuild_sparse_csr_tensor
    gm["torch Size"] = torch.Size
    gm["torch device"] = torch.device
    gm["torch.serialization _get_layout"] = ts._get_layout
    for q in ("per_tensor_affine", "per_channel_affine"):
        gm[f"torch {q}"] = getattr(torch, q)
    for s in LEGACY_STORAGES:
        if hasattr(torch, s):
            gm[f"torch {s}"] = getattr(torch, s)
    for d in DTYPES_113 | DTYPES_2X:
        if isinstance(getattr(torch, d, None), torch.dtype):
            gm[f"torch {d}"] = getattr(torch, d)
    return gm


def static_torch_load(path, globals_map: Optional[Dict[str, Any]] = None,
                      build_ok: Optional[Callable[[Any, Any], bool]] = None) -> Any:
    """Read a torch zip (e.g. our default-mode output with BINFLOAT) without torch's unpickler.

    Uses ``static_load`` with ``torch_globals_map`` (or ``globals_map``, e.g. that table plus inert
    stand-ins for classes, with ``build_ok`` for their BUILD); storages come from ``<prefix>/data/<key>``.
    """
    import torch

    zf = zipfile.ZipFile(path)
    names = zf.namelist()
    prefix = names[0].split("/", 1)[0] + "/"
    data = zf.read(prefix + "data.pkl")
    cache: Dict[str, Any] = {}

    def pload(pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise StaticLoadError(f"bad persistent id {pid!r}")
        _tag, stype, key, _loc, numel = pid
        if key in cache:
            return cache[key]
        if isinstance(stype, torch.dtype):
            dtype = stype
        elif stype is getattr(torch, "UntypedStorage", None):
            dtype = torch.uint8
        else:
            dtype = stype(0).dtype if callable(stype) else stype.dtype
        raw = bytearray(zf.read(prefix + "data/" + key))
        esize = torch.empty((), dtype=dtype).element_size()
        if len(raw) != numel * esize:
            raise StaticLoadError(f"data/{key}: {len(raw)} bytes, expected {numel}*{esize}")
        u = torch.frombuffer(raw, dtype=torch.uint8) if raw else torch.empty(0, dtype=torch.uint8)
        untyped = u.storage()._untyped() if hasattr(u.storage(), "_untyped") else u.storage().untyped()
        st = torch.storage.TypedStorage(wrap_storage=untyped, dtype=dtype)
        cache[key] = st
        return st

    return static_load(data, torch_globals_map() if globals_map is None else globals_map, pload, build_ok)


# --------------------------------------------------------------------------------------------------
# Deep comparison of a reference object with what came back from our output
# --------------------------------------------------------------------------------------------------
def _tensor_bytes(t) -> bytes:
    import torch

    t = t.detach()
    if t.is_quantized:
        t = t.int_repr()
    flat = t.reshape(-1).contiguous()
    if flat.numel() == 0:
        return b""
    return bytes(flat.view(torch.uint8).numpy().tobytes())


def _storage_bytes(t) -> bytes:
    import torch

    st = t.storage()
    u = st._untyped() if hasattr(st, "_untyped") else st.untyped()
    if u.nbytes() == 0:
        return b""
    return bytes(torch.tensor([], dtype=torch.uint8).set_(u).numpy().tobytes())


def _compressed_parts(layout):
    """(compressed, plain) index accessors of a CSR/CSC/BSR/BSC layout, None for other layouts."""
    import torch
    names = {"sparse_csr": ("crow_indices", "col_indices"), "sparse_csc": ("ccol_indices", "row_indices"),
             "sparse_bsr": ("crow_indices", "col_indices"), "sparse_bsc": ("ccol_indices", "row_indices")}
    for k, v in names.items():
        if getattr(torch, k, None) is layout:
            return v
    return None


def compare_tensors(exp, got, path="$", strict_layout=True) -> List[str]:
    import torch

    d: List[str] = []
    if not isinstance(got, torch.Tensor):
        return [f"{path}: expected tensor, got {type(got).__name__}"]
    if type(exp) is not type(got):
        d.append(f"{path}: type {type(got).__name__} != {type(exp).__name__}")
    if exp.dtype != got.dtype:
        return d + [f"{path}: dtype {got.dtype} != {exp.dtype}"]
    if exp.layout != got.layout:
        return d + [f"{path}: layout {got.layout} != {exp.layout}"]
    if tuple(exp.shape) != tuple(got.shape):
        return d + [f"{path}: shape {tuple(got.shape)} != {tuple(exp.shape)}"]
    if exp.requires_grad != got.requires_grad:
        d.append(f"{path}: requires_grad {got.requires_grad} != {exp.requires_grad}")
    parts = _compressed_parts(exp.layout)
    if parts:
        for part in (*parts, "values"):
            d += compare_tensors(getattr(exp, part)(), getattr(got, part)(), f"{path}.{part}()", strict_layout)
        return d
    if exp.is_sparse:
        e, g = exp, got  # (is_coalesced is not stored by torch 1.13's writer, so it is not compared)
        d += compare_tensors(e._indices(), g._indices(), path + "._indices()", strict_layout)
        d += compare_tensors(e._values(), g._values(), path + "._values()", strict_layout)
        return d
    if strict_layout:
        if exp.stride() != got.stride():
            d.append(f"{path}: stride {got.stride()} != {exp.stride()}")
        if exp.storage_offset() != got.storage_offset():
            d.append(f"{path}: storage_offset {got.storage_offset()} != {exp.storage_offset()}")
    if exp.is_quantized:
        if exp.qscheme() != got.qscheme():
            return d + [f"{path}: qscheme {got.qscheme()} != {exp.qscheme()}"]
        if exp.qscheme() == torch.per_tensor_affine:
            if exp.q_scale() != got.q_scale() or exp.q_zero_point() != got.q_zero_point():
                d.append(f"{path}: qparams ({got.q_scale()}, {got.q_zero_point()}) != "
                         f"({exp.q_scale()}, {exp.q_zero_point()})")
        else:
            if exp.q_per_channel_axis() != got.q_per_channel_axis():
                d.append(f"{path}: axis differs")
            d += compare_tensors(exp.q_per_channel_scales(), got.q_per_channel_scales(),
                                 path + ".scales", False)
            d += compare_tensors(exp.q_per_channel_zero_points(), got.q_per_channel_zero_points(),
                                 path + ".zero_points", False)
    if _tensor_bytes(exp) != _tensor_bytes(got):
        d.append(f"{path}: tensor bytes differ")
    return d


def _is_tensor(x) -> bool:
    try:
        import torch
    except ImportError:
        return False
    return isinstance(x, torch.Tensor)


def _is_f64_scalar(got) -> bool:
    import torch

    return isinstance(got, torch.Tensor) and got.dtype == torch.float64 and got.dim() == 0


def compare(exp, got, compat: bool = False, path: str = "$", _ids=None, strict_layout=True) -> List[str]:
    """Differences between a reference object and the object loaded from our output.

    compat=True applies CLI.md's --compat torch1.13 conversions: float -> 0-dim float64 tensor,
    bytes/bytearray -> uint8 tensor, set/frozenset -> list.  Tied objects (the same tensor/container reached
    twice in ``exp``) must be the same object in ``got``.
    """
    if _ids is None:
        _ids = {}
    d: List[str] = []
    if _is_tensor(exp) or isinstance(exp, (dict, list)):
        prev = _ids.get(id(exp))
        if prev is not None and _is_tensor(exp):
            if prev[1] is not got:
                d.append(f"{path}: same object as {prev[0]} in the input, different object after disarm")
            return d
        _ids[id(exp)] = (path, got, exp)  # keep exp alive so ids stay unique
    if _is_tensor(exp):
        return compare_tensors(exp, got, path, strict_layout)
    if isinstance(exp, bool) or exp is None:
        if type(got) is not type(exp) or got != exp:
            d.append(f"{path}: {got!r} != {exp!r}")
        return d
    if isinstance(exp, int):
        if type(got) is not int or got != exp:
            d.append(f"{path}: {got!r} ({type(got).__name__}) != {exp!r}")
        return d
    if isinstance(exp, float):
        if compat:
            if not _is_f64_scalar(got):
                return [f"{path}: float {exp!r} should be a 0-dim float64 tensor, got {got!r}"]
            gv = got.item()
        else:
            if type(got) is not float:
                return [f"{path}: {got!r} ({type(got).__name__}) != float {exp!r}"]
            gv = got
        if not (gv == exp or (gv != gv and exp != exp)):
            d.append(f"{path}: {gv!r} != {exp!r}")
        elif struct.pack("<d", gv) != struct.pack("<d", exp) and exp == exp:
            d.append(f"{path}: float bits differ ({gv!r} vs {exp!r})")
        return d
    if isinstance(exp, complex):
        if compat:
            import torch

            if isinstance(got, torch.Tensor) and got.dim() == 0 and got.is_complex():
                gv = complex(got.item())
            else:
                return [f"{path}: complex {exp!r} not converted, got {got!r}"]
        else:
            gv = got
        if gv != exp:
            d.append(f"{path}: {gv!r} != {exp!r}")
        return d
    if isinstance(exp, str):
        if type(got) is not str or got != exp:
            d.append(f"{path}: {got!r} != {exp!r}")
        return d
    if isinstance(exp, (bytes, bytearray)):
        if compat:
            import torch

            if not (isinstance(got, torch.Tensor) and got.dtype == torch.uint8 and got.dim() == 1):
                return [f"{path}: bytes should be a 1-dim uint8 tensor, got {type(got).__name__}"]
            gb = bytes(got.numpy().tobytes()) if got.numel() else b""
        else:
            if not isinstance(got, (bytes, bytearray)) or type(got) is not type(exp):
                return [f"{path}: {type(got).__name__} != {type(exp).__name__}"]
            gb = bytes(got)
        if gb != bytes(exp):
            d.append(f"{path}: bytes differ")
        return d
    if isinstance(exp, (set, frozenset)):
        if compat:
            if not isinstance(got, list):
                return [f"{path}: set should become a list, got {type(got).__name__}"]
            if len(got) != len(exp) or set(got) != set(exp):
                d.append(f"{path}: {got!r} != {exp!r}")
        else:
            if not isinstance(got, (set, frozenset, list)) or set(got) != set(exp):
                d.append(f"{path}: {got!r} != {exp!r}")
        return d
    if isinstance(exp, tuple):  # includes torch.Size
        if not isinstance(got, tuple):
            return [f"{path}: {type(got).__name__} != tuple"]
        if len(got) != len(exp):
            return [f"{path}: length {len(got)} != {len(exp)}"]
        for i, (e, g) in enumerate(zip(exp, got)):
            d += compare(e, g, compat, f"{path}[{i}]", _ids, strict_layout)
        return d
    if isinstance(exp, list):
        if type(got) is not list:
            return [f"{path}: {type(got).__name__} != list"]
        if len(got) != len(exp):
            return [f"{path}: length {len(got)} != {len(exp)}"]
        for i, (e, g) in enumerate(zip(exp, got)):
            d += compare(e, g, compat, f"{path}[{i}]", _ids, strict_layout)
        return d
    if isinstance(exp, dict):
        if not isinstance(got, dict):
            return [f"{path}: {type(got).__name__} != {type(exp).__name__}"]
        if isinstance(exp, collections.OrderedDict) and not isinstance(got, collections.OrderedDict):
            d.append(f"{path}: dict instead of OrderedDict")
        ek, gk = list(exp.keys()), list(got.keys())
        if ek != gk:
            if set(map(repr, ek)) == set(map(repr, gk)):
                d.append(f"{path}: key order differs")
            else:
                missing = [k for k in ek if k not in got][:5]
                extra = [k for k in gk if k not in exp][:5]
                return d + [f"{path}: keys differ; missing {missing}, extra {extra}"]
        for k in ek:
            if k in got:
                d += compare(exp[k], got[k], compat, f"{path}[{k!r}]", _ids, strict_layout)
        em = getattr(exp, "_metadata", None)
        gm = getattr(got, "_metadata", None)
        if em is not None or gm is not None:
            if gm is None:
                d.append(f"{path}._metadata missing")
            elif em is None:
                d.append(f"{path}._metadata unexpected")
            else:
                d += compare(em, gm, compat, f"{path}._metadata", _ids, strict_layout)
        return d
    # anything else (numpy scalars etc.) - compare by value
    try:
        if got != exp:
            d.append(f"{path}: {got!r} != {exp!r}")
    except Exception as e:
        d.append(f"{path}: cannot compare {type(exp).__name__}: {e}")
    return d
