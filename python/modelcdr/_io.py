"""Inputs that are not paths. The engine takes paths (it maps the file) and bytes-like
objects (memory sources it borrows, no copy); a binary file object is read into memory."""
from __future__ import annotations

import os
from typing import IO, Tuple, Union

Source = Union[str, "os.PathLike[str]", bytes, bytearray, memoryview, IO[bytes]]


def is_path(x: object) -> bool:
    return isinstance(x, (str, os.PathLike))


def engine_source(src: Source) -> Tuple[object, str]:
    """(what modelcdr._core takes: a str path or a bytes-like object, its name in reports)."""
    if is_path(src):
        path = os.fspath(src)  # type: ignore[arg-type]
        if not isinstance(path, str):
            raise TypeError("paths must be str or os.PathLike[str]")
        return path, path
    if isinstance(src, (bytes, bytearray, memoryview)):
        return src, "<memory>"
    if hasattr(src, "read"):
        data = src.read()  # type: ignore[union-attr]
        if not isinstance(data, (bytes, bytearray)):
            raise TypeError(f"the file object must be opened in binary mode (read() gave {type(data).__name__})")
        name = getattr(src, "name", None)
        return data, name if isinstance(name, str) else "<file object>"
    raise TypeError(f"expected a path, a bytes-like object or a binary file object, not {type(src).__name__}")
