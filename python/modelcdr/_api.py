"""scan / disarm / protect / restore / verify over modelcdr._core (docs/PYTHON.md)."""
from __future__ import annotations

import os
from typing import IO, List, Optional, Sequence, Union

from . import _core
from ._errors import MapError, ModelcdrError, RejectedError
from ._io import Source, is_path, private_dir, source_path
from ._report import MtdResult, Report, mtd_result_from, report_from

PathLike = Union[str, "os.PathLike[str]"]


def raise_for(report: Report) -> None:
    """Turns a rejected / failed report into the exception that carries it."""
    if report.status == "rejected":
        raise RejectedError(f"modelcdr: rejected {report.input}: {report.error.text if report.error else report.note}", report)
    if report.status == "error":
        raise ModelcdrError(f"modelcdr: {report.input}: {report.error.text if report.error else report.note}", report)


def scan(src: Source, *, stego: bool = False) -> Report:
    """Scans without writing anything. Findings about the content are in the report; only a
    file that cannot be read at all (io.* errors) raises ModelcdrError."""
    with source_path(src) as path:
        report = report_from(_core.scan(path, stego))
    if report.error is not None and report.error.rule.startswith("io."):
        raise_for(report)
    return report


def disarm(
    src: Source,
    dst: Union[PathLike, IO[bytes], None] = None,
    *,
    compat: str = "torch2",
    output_format: str = "pt",
    allow_trailing_data: bool = False,
    fsync: bool = False,
    force: bool = False,
    reflink: bool = True,
) -> Union[Report, bytes]:
    """Rebuilds `src` as a new file. dst a path: written atomically, returns the Report;
    dst a binary file object: the bytes are written to it, returns the Report; dst None:
    returns the rebuilt file's bytes. A rejected input raises RejectedError (no output)."""
    opts = (compat, output_format, allow_trailing_data, fsync, force, reflink)
    with source_path(src) as path:
        if dst is not None and is_path(dst):
            report = report_from(_core.disarm(path, os.fspath(dst), *opts))  # type: ignore[arg-type]
            raise_for(report)
            return report
        with private_dir() as d:
            out = os.path.join(d, "out." + output_format)
            report = report_from(_core.disarm(path, out, *opts))
            raise_for(report)
            with open(out, "rb") as f:
                if dst is None:
                    return f.read()
                while chunk := f.read(1 << 20):
                    dst.write(chunk)  # type: ignore[union-attr]
            return report


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
