"""modelcdr.guard(): existing code that calls torch.load (directly, or inside a library
such as transformers, which looks torch.load up at each call) goes through modelcdr.load.

The patch is process-wide while at least one guard is active (a counter under a lock), so
loads in worker threads that a guarded call starts are covered too; the last guard to
leave, by return or by exception, puts the original torch.load back.
"""
from __future__ import annotations

import contextlib
import functools
import threading
from typing import Any, Callable, Iterator, Optional

_lock = threading.RLock()
_active = 0
_global = False
_original: Optional[Callable[..., Any]] = None


def _guarded_load(f: Any, map_location: Any = None, pickle_module: Any = None, *, weights_only: Any = None,
                  mmap: Any = None, **kwargs: Any) -> Any:
    from ._loader import load

    if pickle_module is not None:
        raise ValueError("modelcdr.guard: torch.load(pickle_module=...) is not allowed: modelcdr runs no pickle code")
    if weights_only is False:
        # Under the guard nothing is unpickled; the caller gets the safe result instead.
        pass
    if callable(map_location) or isinstance(map_location, dict):
        map_location = "cpu"  # (remapping functions are not supported: load to CPU)
    return load(f, map_location=map_location or "cpu", mmap=bool(mmap))


def _install() -> None:
    global _original
    import torch

    if _original is None:
        _original = torch.load
        torch.load = functools.wraps(_original)(_guarded_load)


def _uninstall() -> None:
    global _original
    import torch

    if _original is not None:
        torch.load = _original
        _original = None


def _update() -> None:
    if _active > 0 or _global:
        _install()
    else:
        _uninstall()


@contextlib.contextmanager
def guard() -> Iterator[None]:
    """Within the block, torch.load is modelcdr.load. Nested and concurrent guards are fine."""
    global _active
    with _lock:
        _active += 1
        _update()
    try:
        yield
    finally:
        with _lock:
            _active -= 1
            _update()


def enable() -> None:
    """The opt-in global switch: torch.load stays modelcdr.load until disable()."""
    global _global
    with _lock:
        _global = True
        _update()


def disable() -> None:
    global _global
    with _lock:
        _global = False
        _update()


def is_active() -> bool:
    with _lock:
        return _original is not None
