"""Engine, scan / disarm / protect / restore / verify over modelcdr._core (docs/PYTHON.md)."""
from __future__ import annotations

import os
from typing import IO, Any, Callable, Dict, List, Optional, Sequence, Union

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


def _paths(x: Union[PathLike, Sequence[PathLike], None]) -> List[str]:
    if x is None:
        return []
    if is_path(x):
        return [os.fspath(x)]  # type: ignore[arg-type]
    return [os.fspath(p) for p in x]  # type: ignore[union-attr]


def _opt(x: Optional[PathLike]) -> Optional[str]:
    return None if x is None else os.fspath(x)


def _checked(d: dict, what: str) -> MtdResult:
    r = mtd_result_from(d)
    if r.outcome == "error":
        raise MapError(f"modelcdr {what}: {r.error['text'] if r.error else r.code}", r)
    return r


def protect(
    src: PathLike,
    dst: PathLike,
    map: PathLike,
    *,
    key_file: Union[PathLike, Sequence[PathLike], None] = None,
    passphrase_file: Union[PathLike, Sequence[PathLike], None] = None,
    recipient: Union[PathLike, Sequence[PathLike], None] = None,
    sign: Optional[PathLike] = None,
    encrypt: bool = False,
    compat: str = "torch2",
    allow_trailing_data: bool = False,
) -> MtdResult:
    """`modelcdr protect SRC -o DST --map MAP ...`: disarms and protects; never overwrites."""
    for p in (dst, map):
        if os.path.lexists(p):
            raise FileExistsError(f"protect: {os.fspath(p)} already exists: remove it or choose another name")
    r = _checked(_core.protect(os.fspath(src), os.fspath(dst), os.fspath(map), _paths(key_file), _paths(passphrase_file),
                               _paths(recipient), _opt(sign), compat, encrypt, allow_trailing_data), "protect")
    return r


def _open_args(key_file, passphrase_file, identity, verify_signer, allow_unsigned):
    return (_opt(key_file), _opt(passphrase_file), _opt(identity), _paths(verify_signer), allow_unsigned)


def restore(
    src: PathLike,
    map: PathLike,
    dst: PathLike,
    *,
    key_file: Optional[PathLike] = None,
    passphrase_file: Optional[PathLike] = None,
    identity: Optional[PathLike] = None,
    verify_signer: Union[PathLike, Sequence[PathLike], None] = None,
    allow_unsigned: bool = False,
) -> MtdResult:
    """`modelcdr restore SRC --map MAP -o DST`: a mismatch raises MapError (nothing written)."""
    if os.path.lexists(dst):
        raise FileExistsError(f"restore: {os.fspath(dst)} already exists: remove it or choose another name")
    r = _checked(_core.restore(os.fspath(src), os.fspath(map), os.fspath(dst),
                               *_open_args(key_file, passphrase_file, identity, verify_signer, allow_unsigned)), "restore")
    if not r.ok:
        raise MapError(f"modelcdr restore: {os.fspath(src)}: {r.code}", r)
    return r


def verify(
    src: PathLike,
    map: PathLike,
    *,
    key_file: Optional[PathLike] = None,
    passphrase_file: Optional[PathLike] = None,
    identity: Optional[PathLike] = None,
    verify_signer: Union[PathLike, Sequence[PathLike], None] = None,
    allow_unsigned: bool = False,
    expect: str = "auto",
) -> MtdResult:
    """`modelcdr verify`: returns the result (``ok`` False on a mismatch); errors raise."""
    return _checked(_core.verify(os.fspath(src), os.fspath(map),
                                 *_open_args(key_file, passphrase_file, identity, verify_signer, allow_unsigned), expect),
                    "verify")


def restore_model(src: str, map: PathLike, key_file, passphrase_file, identity, verify_signer, allow_unsigned):
    """The in-memory restore behind load(map=...): (engine model, MtdResult)."""
    model, d = _core.restore_model(src, os.fspath(map),
                                   *_open_args(key_file, passphrase_file, identity, verify_signer, allow_unsigned))
    r = _checked(d, "load")
    if model is None:
        raise MapError(f"modelcdr load: {src}: {r.code}: the file does not match its map", r)
    return model, r
