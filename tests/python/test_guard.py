"""modelcdr.guard(): torch.load goes through modelcdr.load, and is put back afterwards."""
from __future__ import annotations

import threading

import pytest

from conftest import modelcdr, strict_diff
from test_load import malicious_pickle


def test_guard_patches_and_restores(tmp_path, torch, reference):
    original = torch.load
    path = tmp_path / "m.pt"
    torch.save({"w": torch.randn(3)}, path)
    with modelcdr.guard():
        assert torch.load is not original
        got = torch.load(path, map_location="cpu", weights_only=True)
        with modelcdr.guard():  # nested
            pass
        assert torch.load is not original
    assert torch.load is original
    assert strict_diff(reference(path), got) == []


def test_guard_restores_on_exception(torch):
    original = torch.load
    with pytest.raises(KeyError):
        with modelcdr.guard():
            raise KeyError("boom")
    assert torch.load is original


def test_guard_blocks_malicious_file(tmp_path, torch):
    path = tmp_path / "evil.pt"
    path.write_bytes(malicious_pickle())
    with modelcdr.guard():
        with pytest.raises(modelcdr.RejectedError):
            torch.load(path, weights_only=False)  # even weights_only=False runs no pickle
        with pytest.raises(ValueError):
            torch.load(path, pickle_module=__import__("pickle"))


def test_global_switch(torch):
    original = torch.load
    modelcdr.enable()
    try:
        assert torch.load is not original
        with modelcdr.guard():
            pass
        assert torch.load is not original  # the global switch outlives the guard
    finally:
        modelcdr.disable()
    assert torch.load is original


def test_guard_across_threads(tmp_path, torch):
    original = torch.load
    path = tmp_path / "m.pt"
    torch.save({"w": torch.arange(100)}, path)
    errors = []
    barrier = threading.Barrier(8)

    def worker(i):
        try:
            barrier.wait()
            for _ in range(5):
                with modelcdr.guard():
                    out = torch.load(path)
                    assert torch.equal(out["w"], torch.arange(100))
        except Exception as e:  # noqa: BLE001 (collected for the assert below)
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert torch.load is original
