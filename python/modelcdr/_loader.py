"""The safe loader: the engine parses and lifts the file (nothing in it runs), then the
Python objects are built here directly from the lifted model. No pickle program runs at
all, not even torch's weights_only unpickler: tensors are made by the same torch._utils
rebuild functions that torch.load's loader calls, with the values the engine read.

The result equals torch.load(<the disarmed file>, weights_only=True).
"""
from __future__ import annotations

import collections
import io
import mmap as _mmap
import sys
import threading
from typing import Any, Dict, Optional

from . import _api
from ._errors import ModelcdrError, RejectedError
from ._io import Source, engine_source
from ._report import Report, report_from

# modelcdr/model.hpp ValueKind
(NONE, BOOLEAN, INTEGER, BIG_INTEGER, FLOATING, COMPLEX, STRING, BYTES, LIST, TUPLE, DICT, ORDERED_DICT, SET,
 TENSOR, DROPPED, NDARRAY, NUMPY_DTYPE, OBJECT) = range(18)
TORCH_SIZE, TORCH_DEVICE = 1, 2  # TorchType
DENSE, Q_PER_TENSOR, Q_PER_CHANNEL, SPARSE_COO, SPARSE_CSR, SPARSE_CSC, SPARSE_BSR, SPARSE_BSC = range(8)  # TensorKind
_COMPRESSED_LAYOUTS = {SPARSE_CSR: "sparse_csr", SPARSE_CSC: "sparse_csc", SPARSE_BSR: "sparse_bsr", SPARSE_BSC: "sparse_bsc"}
NO_VALUE = 0xFFFFFFFF

TORCH_FORMATS = ("torch-zip", "torch-legacy", "torch-tar", "torchscript")


class _TorchBuilder:
    """Builds one model's Python objects. Every value is built once (memo by id), so objects
    the file shares stay shared; one torch storage per engine storage, so views share."""

    def __init__(self, model: Any, mmap: bool, device: Any) -> None:
        import torch

        self.torch = torch
        self.model = model
        self.values = model.values()
        self.tensors = model.tensors()
        self.storage_info = model.storages()
        self.mmap = mmap
        self.device = device
        self.memo: Dict[int, Any] = {}
        self.tensor_memo: Dict[int, Any] = {}
        self.untyped: Dict[int, Any] = {}
        self.mapping: Optional[_mmap.mmap] = None
        self.sparse = False

    # -- storages --------------------------------------------------------------------------
    def _file_view(self, offset: int, nbytes: int, fd: int) -> memoryview:
        if self.mapping is None:
            # Copy-on-write pages of the very file the engine checked (its descriptor): like
            # torch.load(mmap=True), tensors are writable and writes never reach the file.
            self.mapping = _mmap.mmap(fd, 0, access=_mmap.ACCESS_COPY)
        return memoryview(self.mapping)[offset:offset + nbytes]

    def untyped_storage(self, sid: int) -> Any:
        st = self.untyped.get(sid)
        if st is not None:
            return st
        torch = self.torch
        _dtype, nbytes, offset, fd = self.storage_info[sid]
        if self.device is not None and self.device.type == "meta":
            st = torch.UntypedStorage(nbytes, device=self.device)  # shapes only, no bytes read
        elif nbytes == 0:
            st = torch.UntypedStorage(0)
        else:
            buf = self.model.owned_buffer(sid)  # restored in memory: view it, no copy
            if buf is None and self.mmap and offset is not None:
                buf = self._file_view(offset, nbytes, fd)
            if buf is not None:
                st = torch.frombuffer(buf, dtype=torch.uint8).untyped_storage()
            else:
                # A storage of torch's own allocator, as torch.load makes; the engine reads the
                # record straight into it (one pread, CRC checked on the way, no GIL).
                st = torch.UntypedStorage(nbytes)
                self.model.storage_into(sid, st.data_ptr(), nbytes)
        if self.device is not None and self.device.type not in ("cpu", "meta"):
            moved = torch.UntypedStorage(st.nbytes(), device=self.device)
            moved.copy_(st)
            st = moved
        self.untyped[sid] = st
        return st

    def typed_storage(self, sid: int, dtype: Any) -> Any:
        return self.torch.storage.TypedStorage(wrap_storage=self.untyped_storage(sid), dtype=dtype, _internal=True)

    # -- tensors ---------------------------------------------------------------------------
    def dtype(self, name: str) -> Any:
        return getattr(self.torch, name)

    def tensor(self, tid: int) -> Any:
        (kind, dtype, sid, offset, shape, stride, requires_grad, is_param, param_grad, q_scale, q_zp, q_scales,
         q_zps, q_axis, sp_indices, sp_values, sp_coalesced, _sp_plain) = self.tensors[tid]
        t = self.bare_tensor(tid)
        if is_param:
            t = self.torch._utils._rebuild_parameter(t, param_grad, collections.OrderedDict())
        return t

    def tensor_ref(self, tid: int) -> Any:
        # Quantized scales and sparse parts: one object per tensor id, as the writer memoizes.
        t = self.tensor_memo.get(tid)
        if t is None:
            t = self.tensor_memo[tid] = self.bare_tensor(tid)
        return t

    def bare_tensor(self, tid: int) -> Any:
        torch = self.torch
        rebuild = torch._utils
        (kind, dtype, sid, offset, shape, stride, requires_grad, _p, _pg, q_scale, q_zp, q_scales, q_zps, q_axis,
         sp_indices, sp_values, sp_coalesced, sp_plain) = self.tensors[tid]
        dt = self.dtype(dtype)
        size, strides, hooks = tuple(shape), tuple(stride), collections.OrderedDict()
        if kind == DENSE:
            if dtype in _V3_DTYPES:
                return rebuild._rebuild_tensor_v3(self.typed_storage(sid, dt), offset, size, strides, requires_grad,
                                                  hooks, dt)
            return rebuild._rebuild_tensor_v2(self.typed_storage(sid, dt), offset, size, strides, requires_grad, hooks)
        if kind in (Q_PER_TENSOR, Q_PER_CHANNEL):
            if kind == Q_PER_TENSOR:
                qparams = (torch.per_tensor_affine, q_scale, q_zp)
            else:
                qparams = (torch.per_channel_affine, self.tensor_ref(q_scales), self.tensor_ref(q_zps), q_axis)
            return rebuild._rebuild_qtensor(self.typed_storage(sid, dt), offset, size, strides, qparams, requires_grad,
                                            hooks)
        if kind == SPARSE_COO:
            data = [self.tensor_ref(sp_indices), self.tensor_ref(sp_values), torch.Size(size)]
            if sp_coalesced is not None:
                data.append(sp_coalesced)
            self.sparse = True
            return rebuild._rebuild_sparse_tensor(torch.sparse_coo, tuple(data))
        if kind in _COMPRESSED_LAYOUTS:  # (compressed indices, plain indices, values, size), as torch saves them
            data = (self.tensor_ref(sp_indices), self.tensor_ref(sp_plain), self.tensor_ref(sp_values), torch.Size(size))
            self.sparse = True
            return rebuild._rebuild_sparse_tensor(getattr(torch, _COMPRESSED_LAYOUTS[kind]), data)
        raise ModelcdrError(f"tensor kind {kind} is not supported by this loader")

    # -- values ----------------------------------------------------------------------------
    def value(self, vid: int) -> Any:
        if vid == NO_VALUE:
            return None
        if vid in self.memo:
            return self.memo[vid]
        (kind, torch_type, b, i, f, imag, text, items, entries, metadata, tensor, state, shape,
         fortran) = self.values[vid]
        if kind in (NONE, DROPPED):
            out: Any = None
        elif kind == BOOLEAN:
            out = b
        elif kind == INTEGER:
            out = i
        elif kind == BIG_INTEGER:
            out = int.from_bytes(text, "little", signed=True)
        elif kind == FLOATING:
            out = f
        elif kind == COMPLEX:
            out = complex(f, imag)
        elif kind == STRING:
            out = text.decode("utf-8", "surrogatepass")
            if torch_type == TORCH_DEVICE:
                out = self.torch.device(out)
        elif kind == BYTES:
            out = bytes(text)
        elif kind == LIST or (kind == NDARRAY and (items or self._object_dtype(state))):
            out = self.memo[vid] = []  # before the items: a list may contain itself
            out.extend(self.value(x) for x in items)
        elif kind == TUPLE:
            out = tuple(self.value(x) for x in items)
            if torch_type == TORCH_SIZE:
                out = self.torch.Size(out)
        elif kind in (DICT, ORDERED_DICT):
            out = self.memo[vid] = collections.OrderedDict() if kind == ORDERED_DICT else {}
            for k, v in entries:
                out[self.value(k)] = self.value(v)
            if kind == ORDERED_DICT and metadata != NO_VALUE:
                out._metadata = self.value(metadata)  # type: ignore[attr-defined]
        elif kind == SET:
            out = set(self.value(x) for x in items)
        elif kind in (TENSOR, NDARRAY):
            out = self.tensor(tensor)
        elif kind == NUMPY_DTYPE:
            out = text.decode("utf-8", "surrogatepass")  # the torch writer keeps the dtype code
        elif kind == OBJECT:
            out = self.value(state)  # ... and a registry object's state
        else:
            raise ModelcdrError(f"value kind {kind} is not supported by this loader")
        self.memo[vid] = out
        return out

    def _object_dtype(self, state: int) -> bool:
        return state != NO_VALUE and self.values[state][6].startswith(b"O")


# Dtypes torch 2.x writes with _rebuild_tensor_v3 (no legacy storage class).
_V3_DTYPES = {"uint16", "uint32", "uint64", "float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz",
              "complex32"}


def _device(map_location: Any) -> Any:
    import torch

    if map_location is None:
        return None
    if isinstance(map_location, (str, torch.device)):
        return torch.device(map_location)
    raise TypeError("map_location must be a device or a device name (callables and dicts are not supported)")


# The engine bounds nesting at 512 levels (limits.depth); building spends up to 3 Python frames
# per level, more than the default recursion limit. Raised while any load runs (a counter, as
# loads run in several threads), then put back.
_depth_lock = threading.Lock()
_depth_users = 0
_saved_limit = 0
_NEEDED_LIMIT = 512 * 3 + 200


def _raise_recursion_limit() -> None:
    global _depth_users, _saved_limit
    with _depth_lock:
        if _depth_users == 0:
            _saved_limit = sys.getrecursionlimit()
            sys.setrecursionlimit(max(_saved_limit, _NEEDED_LIMIT))
        _depth_users += 1


def _restore_recursion_limit() -> None:
    global _depth_users
    with _depth_lock:
        _depth_users -= 1
        if _depth_users == 0:
            sys.setrecursionlimit(_saved_limit)


def _build_torch(model: Any, mmap: bool, map_location: Any) -> Any:
    builder = _TorchBuilder(model, mmap, _device(map_location))
    _raise_recursion_limit()
    try:
        out = builder.value(model.root)
        if builder.sparse:
            # Every rebuilt sparse tensor's invariants (indices in range, compressed indices
            # ordered), checked always: torch.load skips this unless the caller enabled
            # torch.sparse.check_sparse_tensor_invariants, and an index out of range makes
            # to_dense() and friends write outside the tensor.
            with builder.torch.sparse.check_sparse_tensor_invariants(True):
                try:
                    builder.torch._utils._validate_loaded_sparse_tensors()
                except RuntimeError as e:
                    raise ModelcdrError(f"sparse tensor fails torch's invariant check: {e}") from None
        return out
    finally:
        _restore_recursion_limit()


def _engine_load(data: object, name: str, engine: Any, compat: str, allow_trailing_data: bool, progress: Any,
                 cancel: Any):
    model, d = (engine or _api.default_engine())._core.load(data, name, compat, allow_trailing_data, progress, cancel)
    report = report_from(d)
    _api.raise_for(report)
    return model, report


def _through_output(data: object, fmt: str, engine: Any, compat: str, allow_trailing_data: bool) -> Any:
    """numpy and scikit-learn files: disarm into memory, then read OUR output (the emitter's
    fixed vocabulary; .npy/.npz with allow_pickle=False, no pickle at all)."""
    out = (engine or _api.default_engine()).disarm(data, compat=compat, output_format=fmt,
                                                   allow_trailing_data=allow_trailing_data)
    if fmt in ("npy", "npz"):
        import numpy as np

        loaded = np.load(io.BytesIO(out), allow_pickle=False)
        if fmt == "npz":
            with loaded:
                return {k: loaded[k] for k in loaded.files}
        return loaded
    import joblib

    return joblib.load(io.BytesIO(out))


def load(
    src: Source,
    *,
    map_location: Any = "cpu",
    mmap: bool = False,
    weights_only: bool = True,
    map: Any = None,
    key_file: Any = None,
    passphrase_file: Any = None,
    identity: Any = None,
    verify_signer: Any = None,
    allow_unsigned: bool = False,
    compat: str = "torch2",
    allow_trailing_data: bool = False,
    engine: Any = None,
    progress: Any = None,
    cancel: Any = None,
) -> Any:
    """Loads a model file safely (see the module docstring). torch checkpoints give what
    torch.load(disarmed, weights_only=True) gives; safetensors a dict of tensors; .npy a
    numpy array, .npz a dict of arrays; joblib / pickle the vetted registry objects.
    With ``map=`` the file is an MTD-protected model, restored in memory. ``engine``: the
    Engine whose policy and limits apply (default: modelcdr's default Engine); ``progress``
    and ``cancel`` as for Engine.disarm (they cover the engine's parse, not the tensor copies)."""
    if not weights_only:
        raise ValueError("modelcdr.load never runs pickle code: weights_only=False is not supported")
    if map is not None:  # the model and the map each a path, bytes or a binary file object
        model, _ = _api.restore_model(src, map, key_file, passphrase_file, identity, verify_signer, allow_unsigned,
                                      engine)
        return _build_torch(model, False, map_location)
    data, name = engine_source(src)
    model, report = _engine_load(data, name, engine, compat, allow_trailing_data, progress, cancel)
    if report.format in TORCH_FORMATS or report.format == "safetensors":
        try:
            return _build_torch(model, mmap, map_location)
        except ValueError as e:  # a record's bytes failed their zip CRC while being copied
            if "[zip.bad-crc]" not in str(e):
                raise
            raise RejectedError(f"modelcdr: rejected {name}: {e}", report) from None
    fmt = {"npy": "npy", "npz": "npz", "joblib": "joblib", "pickle": "pickle"}.get(report.format)
    if fmt is None:
        raise ModelcdrError(f"modelcdr.load: {name}: {report.format} files are not supported", report)
    del model
    return _through_output(data, fmt, engine, compat, allow_trailing_data)


def load_file(src: Source, device: Any = "cpu") -> Dict[str, Any]:
    """safetensors.torch.load_file's counterpart: a flat {name: tensor} dict from any
    tensor file the engine reads (safetensors, torch checkpoints holding a flat dict)."""
    out = load(src, map_location=device)
    if not isinstance(out, dict) or not all(isinstance(k, str) for k in out):
        raise ModelcdrError("modelcdr.load_file: the file does not hold a flat dict of named tensors")
    return dict(out)


def inspect(src: Source) -> Report:
    """The report load() would act on (formats, findings, what would be removed)."""
    data, name = engine_source(src)
    _model, report = _engine_load(data, name, None, "torch2", False, None, None)
    return report
