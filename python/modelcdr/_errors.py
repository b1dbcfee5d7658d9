"""Exceptions: every failure carries the engine's report (or MTD result) it came from."""
from __future__ import annotations

from typing import Any, Optional


class ModelcdrError(Exception):
    """A file could not be processed; ``report`` says why (``report.error``)."""

    def __init__(self, message: str, report: Optional[Any] = None) -> None:
        super().__init__(message)
        self.report = report


class RejectedError(ModelcdrError):
    """The input was rejected (fail closed): nothing was written or loaded."""


class MapError(ModelcdrError):
    """protect / restore / verify / load(map=...) failed: ``report`` is the MtdResult."""


class CancelledError(ModelcdrError):
    """A progress callback returned False (or raised) or a CancelToken was set: nothing was
    written or loaded (rule engine.cancelled)."""
