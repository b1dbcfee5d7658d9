"""Engine, scan / disarm / protect / restore / verify over modelcdr._core (docs/PYTHON.md)."""
from __future__ import annotations

import os
from typing import IO, Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

from . import _core
from ._core import CancelToken
from ._errors import CancelledError, MapError, ModelcdrError, RejectedError
from ._io import Source, engine_source, is_path
from ._report import MtdResult, Report, mtd_result_from, report_from

PathLike = Union[str, "os.PathLike[str]"]


def raise_for(report: Report) -> None:
    """Turns a rejected / failed report into the exception that carries it."""
    if report.status not in ("rejected", "error"):
        return
    text = report.error.text if report.error else report.note
    if report.error is not None and report.error.rule == "engine.cancelled":
        raise CancelledError(f"modelcdr: {report.input}: cancelled", report)
    if report.status == "rejected":
        raise RejectedError(f"modelcdr: rejected {report.input}: {text}", report)
    raise ModelcdrError(f"modelcdr: {report.input}: {text}", report)


# progress(stage, done, total): stage is "read", "transform", "write" or "done"; return False
# to cancel (CancelledError). Called on the calling thread, with the GIL.
Progress = Callable[[str, int, int], Optional[bool]]


# Where an output goes: a path (an atomic file), a binary file object (the bytes are written
# to it) or None (the bytes are returned).
Output = Union[PathLike, IO[bytes], None]


def _paths(x: Union[PathLike, Sequence[PathLike], None]) -> List[str]:
    if x is None:
        return []
    if is_path(x):
        return [os.fspath(x)]  # type: ignore[arg-type]
    return [os.fspath(p) for p in x]  # type: ignore[union-attr]


def _opt(x: Optional[PathLike]) -> Optional[str]:
    return None if x is None else os.fspath(x)


def _out_path(dst: Output) -> Optional[str]:
    """The path of a file destination; None for a memory sink (None or a file object)."""
    if dst is None or not is_path(dst):
        return None
    path = os.fspath(dst)  # type: ignore[arg-type]
    if not isinstance(path, str):
        raise TypeError("paths must be str or os.PathLike[str]")
    return path


def _write_to(dst: Output, data: Optional[bytes]) -> None:
    if dst is not None and not is_path(dst) and data is not None:
        dst.write(data)  # type: ignore[union-attr]


def _checked(d: dict, what: str) -> MtdResult:
    r = mtd_result_from(d)
    if r.outcome == "error":
        raise MapError(f"modelcdr {what}: {r.error['text'] if r.error else r.code}", r)
    return r


def _open_args(key_file, passphrase_file, identity, verify_signer, allow_unsigned):
    return (_opt(key_file), _opt(passphrase_file), _opt(identity), _paths(verify_signer), allow_unsigned)


class Engine:
    """One class policy and one set of limits (docs/API.md "Engine"). Immutable, reused and safe
    to share between threads: every call releases the GIL. The module-level functions use a
    default Engine (built-in registry, built-in limits); make your own for stricter limits or
    extra vetted classes (docs/REGISTRY.md):

        engine = modelcdr.Engine(max_input_bytes=2 << 30, allow_classes=["mypkg.Config"])
        sd = engine.load(upload_bytes)

    Limits of 0 keep the built-in defaults; larger values are clamped to them (an Engine can
    only be stricter)."""

    def __init__(
        self,
        *,
        max_input_bytes: int = 0,
        max_pickle_ops: int = 0,
        max_pickle_nodes: int = 0,
        max_container_items: int = 0,
        allow_classes: Sequence[str] = (),
        allow_reduce: Sequence[str] = (),
        policy_files: Sequence[PathLike] = (),
    ) -> None:
        self._core = _core.Engine(max_input_bytes, max_pickle_ops, max_pickle_nodes, max_container_items,
                                  list(allow_classes), list(allow_reduce), [os.fspath(p) for p in policy_files])

    @property
    def limits(self) -> Dict[str, int]:
        return self._core.limits

    def allowed_classes(self) -> List[str]:
        """"module.Class" of every class this Engine rebuilds (the defaults, then its policy)."""
        return self._core.allowed_classes()

    def scan(self, src: Source, *, stego: bool = False, progress: Optional[Progress] = None,
             cancel: Optional[CancelToken] = None) -> Report:
        """Scans without writing anything. Findings about the content are in the report; only a
        file that cannot be read at all (io.* errors) or a cancelled scan raises."""
        data, name = engine_source(src)
        report = report_from(self._core.scan(data, name, stego, progress, cancel))
        if report.error is not None and (report.error.rule.startswith("io.") or report.error.rule == "engine.cancelled"):
            raise_for(report)
        return report

    def disarm(
        self,
        src: Source,
        dst: Union[PathLike, IO[bytes], None] = None,
        *,
        compat: str = "torch2",
        output_format: str = "pt",
        allow_trailing_data: bool = False,
        fsync: bool = False,
        force: bool = False,
        reflink: bool = True,
        progress: Optional[Progress] = None,
        cancel: Optional[CancelToken] = None,
    ) -> Union[Report, bytes]:
        """Rebuilds `src` as a new file. dst a path: written atomically, returns the Report;
        dst a binary file object: the bytes are written to it, returns the Report; dst None:
        returns the rebuilt file's bytes (a memory sink: nothing touches the disk). A rejected
        input raises RejectedError (no output)."""
        data, name = engine_source(src)
        output = os.fspath(dst) if dst is not None and is_path(dst) else None  # type: ignore[arg-type]
        d, out = self._core.disarm(data, name, output, compat, output_format, allow_trailing_data, fsync, force,
                                   reflink, progress, cancel)
        report = report_from(d)
        raise_for(report)
        if output is not None:
            return report
        if dst is None:
            return out
        dst.write(out)  # type: ignore[union-attr]
        return report

    def protect(
        self,
        src: Source,
        dst: Output = None,
        map: Output = None,
        *,
        key_file: Union[PathLike, Sequence[PathLike], None] = None,
        passphrase_file: Union[PathLike, Sequence[PathLike], None] = None,
        recipient: Union[PathLike, Sequence[PathLike], None] = None,
        sign: Optional[PathLike] = None,
        encrypt: bool = False,
        compat: str = "torch2",
        allow_trailing_data: bool = False,
    ) -> Union[MtdResult, Tuple[Optional[bytes], Optional[bytes]]]:
        """`modelcdr protect SRC -o DST --map MAP ...` with this Engine's policy and limits:
        disarms and protects; never overwrites. `src` as for disarm; `dst` and `map` each a
        path, a binary file object or None. Both paths or file objects: returns the
        MtdResult; otherwise (protected bytes or None, map bytes or None): bytes for each
        destination given as None, None for the others. A failure (a rejected input
        included) raises MapError; nothing is written."""
        for p in (dst, map):
            if p is not None and is_path(p) and os.path.lexists(p):  # type: ignore[arg-type]
                raise FileExistsError(f"protect: {os.fspath(p)} already exists: remove it or choose another name")  # type: ignore[arg-type]
        data, name = engine_source(src)
        d, out, map_out = self._core.protect(data, name, _out_path(dst), _out_path(map), _paths(key_file),
                                             _paths(passphrase_file), _paths(recipient), _opt(sign), compat, encrypt,
                                             allow_trailing_data)
        r = _checked(d, "protect")
        _write_to(dst, out)
        _write_to(map, map_out)
        if dst is None or map is None:
            return (out if dst is None else None), (map_out if map is None else None)
        return r

    def restore(
        self,
        src: Source,
        map: Source,
        dst: Output = None,
        *,
        key_file: Optional[PathLike] = None,
        passphrase_file: Optional[PathLike] = None,
        identity: Optional[PathLike] = None,
        verify_signer: Union[PathLike, Sequence[PathLike], None] = None,
        allow_unsigned: bool = False,
    ) -> Union[MtdResult, bytes]:
        """`modelcdr restore SRC --map MAP -o DST` with this Engine's policy and limits. `src`
        and `map` as disarm's `src`; `dst` a path or a binary file object (returns the
        MtdResult) or None (returns the restored bytes). A mismatch raises MapError
        (nothing written)."""
        if dst is not None and is_path(dst) and os.path.lexists(dst):  # type: ignore[arg-type]
            raise FileExistsError(f"restore: {os.fspath(dst)} already exists: remove it or choose another name")  # type: ignore[arg-type]
        data, name = engine_source(src)
        map_data, map_name = engine_source(map)
        d, out = self._core.restore(data, name, map_data, map_name, _out_path(dst),
                                    *_open_args(key_file, passphrase_file, identity, verify_signer, allow_unsigned))
        r = _checked(d, "restore")
        if not r.ok:
            raise MapError(f"modelcdr restore: {name}: {r.code}", r)
        if dst is None:
            return out
        _write_to(dst, out)
        return r

    def verify(
        self,
        src: Source,
        map: Source,
        *,
        key_file: Optional[PathLike] = None,
        passphrase_file: Optional[PathLike] = None,
        identity: Optional[PathLike] = None,
        verify_signer: Union[PathLike, Sequence[PathLike], None] = None,
        allow_unsigned: bool = False,
        expect: str = "auto",
    ) -> MtdResult:
        """`modelcdr verify` with this Engine's policy and limits: returns the result (``ok``
        False on a mismatch); errors raise MapError. `src` and `map` as disarm's `src`."""
        data, name = engine_source(src)
        map_data, map_name = engine_source(map)
        return _checked(self._core.verify(data, name, map_data, map_name,
                                          *_open_args(key_file, passphrase_file, identity, verify_signer, allow_unsigned),
                                          expect), "verify")

    def load(self, src: Source, **kwargs: Any) -> Any:
        """modelcdr.load with this Engine's policy and limits."""
        from ._loader import load

        return load(src, engine=self, **kwargs)


_default_engine = Engine()


def default_engine() -> Engine:
    """The Engine the module-level functions use."""
    return _default_engine


def scan(src: Source, *, stego: bool = False, progress: Optional[Progress] = None,
         cancel: Optional[CancelToken] = None) -> Report:
    """Engine.scan with the default Engine."""
    return _default_engine.scan(src, stego=stego, progress=progress, cancel=cancel)


def disarm(src: Source, dst: Union[PathLike, IO[bytes], None] = None, **options: Any) -> Union[Report, bytes]:
    """Engine.disarm with the default Engine (options: compat, output_format,
    allow_trailing_data, fsync, force, reflink, progress, cancel)."""
    return _default_engine.disarm(src, dst, **options)


def protect(src: Source, dst: Output = None, map: Output = None,
            **options: Any) -> Union[MtdResult, Tuple[Optional[bytes], Optional[bytes]]]:
    """Engine.protect with the default Engine (options: key_file, passphrase_file, recipient,
    sign, encrypt, compat, allow_trailing_data)."""
    return _default_engine.protect(src, dst, map, **options)


def restore(src: Source, map: Source, dst: Output = None, **options: Any) -> Union[MtdResult, bytes]:
    """Engine.restore with the default Engine (options: key_file | passphrase_file | identity,
    verify_signer, allow_unsigned)."""
    return _default_engine.restore(src, map, dst, **options)


def verify(src: Source, map: Source, **options: Any) -> MtdResult:
    """Engine.verify with the default Engine (options as restore's, and expect)."""
    return _default_engine.verify(src, map, **options)


def restore_model(src: Source, map: Source, key_file, passphrase_file, identity, verify_signer, allow_unsigned,
                  engine: Optional[Engine] = None):
    """The in-memory restore behind load(map=...): (engine model, MtdResult), with `engine`'s
    policy and limits (default: the default Engine)."""
    data, name = engine_source(src)
    map_data, map_name = engine_source(map)
    model, d = (engine or _default_engine)._core.restore_model(
        data, name, map_data, map_name, *_open_args(key_file, passphrase_file, identity, verify_signer, allow_unsigned))
    r = _checked(d, "load")
    if model is None:
        raise MapError(f"modelcdr load: {name}: {r.code}: the file does not match its map", r)
    return model, r
