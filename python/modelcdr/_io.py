"""Inputs and outputs that are not paths. The engine reads files (it maps them); bytes and
binary file objects are written to a private temporary file (mode 0600, removed afterwards)
until the engine takes memory sources."""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from typing import IO, Iterator, Union

Source = Union[str, "os.PathLike[str]", bytes, bytearray, memoryview, IO[bytes]]


def is_path(x: object) -> bool:
    return isinstance(x, (str, os.PathLike))


@contextlib.contextmanager
def source_path(src: Source) -> Iterator[str]:
    if is_path(src):
        yield os.fspath(src)  # type: ignore[arg-type]
        return
    if isinstance(src, (bytes, bytearray, memoryview)):
        writer = lambda f: f.write(src)  # noqa: E731
    elif hasattr(src, "read"):
        writer = lambda f: shutil.copyfileobj(src, f, 1 << 20)  # noqa: E731
    else:
        raise TypeError(f"expected a path, a bytes-like object or a binary file object, not {type(src).__name__}")
    fd, path = tempfile.mkstemp(prefix="modelcdr-in-")  # 0600, this user only
    try:
        with os.fdopen(fd, "wb") as f:
            writer(f)
        yield path
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


@contextlib.contextmanager
def private_dir() -> Iterator[str]:
    d = tempfile.mkdtemp(prefix="modelcdr-")  # 0700
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)
