"""The engine's reports as Python objects (built from the plain dicts of modelcdr._core)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional


@dataclass(frozen=True)
class Finding:
    severity: str  # info | low | medium | high | critical
    rule: str  # stable id, docs/RULES.md
    message: str
    entry: str = ""  # container member ("archive/data.pkl"), "" for a bare file
    offset: int = 0


@dataclass(frozen=True)
class ErrorInfo:
    rule: str
    message: str
    entry: str = ""
    offset: Optional[int] = None
    text: str = ""  # "entry offset N: message [rule]"


@dataclass(frozen=True)
class TensorStats:
    count: int = 0
    total_bytes: int = 0
    dtypes: Dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Report:
    """What scan found, or what disarm/load removed. ``status``: clean, findings, removed,
    rejected, error, skipped (the CLI's vocabulary, docs/CLI.md)."""

    input: str
    output: str
    format: str
    status: str
    error: Optional[ErrorInfo]
    tensors: TensorStats
    findings: List[Finding]
    removed: List[Finding]
    architecture: str = ""
    note: str = ""
    # scan only: clean | safe | unknown | dangerous, the verdict its findings imply (the CLI's
    # `scan` verdict and --fail-on, docs/RULES.md); "" in the reports of disarm and load.
    verdict: str = ""

    @property
    def ok(self) -> bool:
        return self.status not in ("rejected", "error")


def report_from(d: Dict[str, Any]) -> Report:
    return Report(
        input=d["input"],
        output=d["output"],
        format=d["format"],
        status=d["status"],
        error=ErrorInfo(**d["error"]) if d["error"] else None,
        tensors=TensorStats(**d["tensors"]),
        findings=[Finding(**f) for f in d["findings"]],
        removed=[Finding(**f) for f in d["removed"]],
        architecture=d["architecture"],
        note=d["note"],
        verdict=d.get("verdict", ""),
    )


@dataclass(frozen=True)
class Mismatch:
    what: str  # tensor | non-tensor | structure | file | map | wrong-file
    name: str
    key: int
    against: str
    expected: str
    actual: str
    detail: str


@dataclass(frozen=True)
class MtdResult:
    """Outcome of protect / restore / verify (docs/MTD.md): ``outcome`` ok | mismatch | error,
    ``code`` one word per diagnosis (ok, tampered, wrong-file, ...)."""

    outcome: str
    code: str
    state: str
    output: str
    signer: str
    signer_trusted: bool
    storages: int
    permuted: int
    swapped: int
    error: Optional[Dict[str, str]]
    mismatches: List[Mismatch]
    file: Report

    @property
    def ok(self) -> bool:
        return self.outcome == "ok"


def mtd_result_from(d: Dict[str, Any]) -> MtdResult:
    d = dict(d)
    d["mismatches"] = [Mismatch(**m) for m in d["mismatches"]]
    d["file"] = report_from(d["file"])
    return MtdResult(**d)
