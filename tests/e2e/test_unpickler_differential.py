"""Differential test: modelcdr's pickle machine against CPython's C unpickler (issue 11, proof).

Generated and mutated pickles (tests/e2e/pickle_gen.py: every protocol, FRAME, memo and EXT
tricks, protocol mixing) go through `modelcdr scan --json` and through CPython's C unpickler whose
find_class records the name and returns an inert stand-in (tests/e2e/cpython_ref.py, in a
subprocess with a tripwire: nothing of the input is executed). Every global CPython resolves and
every call it makes must be in modelcdr's findings, accepted or rejected; where both read the
stream to STOP, the globals agree exactly (tests/e2e/differential.py states the rule).

Bounded: MODELCDR_DIFF_SECONDS (default 30) of batches from a fixed seed; bench/differential.py
runs it longer.
"""
import os
import time

import pytest

import differential
import pickle_gen
from conftest import require_bin, bin_path

SECONDS = float(os.environ.get("MODELCDR_DIFF_SECONDS", "30"))
BATCH = 400


def test_reference_is_inert_and_sees_tricks(tmp_path):
    """The reference itself: it records what CPython would run and runs none of it."""
    marker = tmp_path / "pwned"
    streams = [
        b"cos\nsystem\n(S'touch " + str(marker).encode() + b"'\ntR.",
        b"S'os'\nS'system'\n\x93S'id'\n\x85R.",  # STRING operands of STACK_GLOBAL: CPython runs it
        b"\x80\x04cos\nsystem\nX\x02\x00\x00\x00ls\x85R0h\x09.",  # the call runs, then a memo miss
    ]
    ref = differential.reference(streams)
    assert not marker.exists()
    assert ref[0]["ok"] and ref[0]["calls"] == [["os system", f"('touch {marker}',)"]]
    assert ref[1]["ok"] and ref[1]["calls"] == [["os system", "('id',)"]]
    assert not ref[2]["ok"] and "Memo" in ref[2]["error"] and ref[2]["calls"] == [["os system", "('ls',)"]]


def test_generated_streams_agree_with_cpython(tmp_path):
    require_bin()
    deadline = time.monotonic() + SECONDS
    seed, total, accepted_by_both, bad = 0, 0, 0, []
    while time.monotonic() < deadline and not bad:
        streams = list(pickle_gen.streams(seed, BATCH))
        work = tmp_path / f"b{seed}"
        work.mkdir()
        bad = differential.disagreements(bin_path(), streams, work)
        total += len(streams)
        seed += 1
    assert total >= BATCH
    assert not bad, f"{len(bad)} disagreement(s) in batch seed {seed - 1}; first: {bad[0]}"
