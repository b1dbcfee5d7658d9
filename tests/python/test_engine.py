"""modelcdr.Engine over the engine's memory sources and sinks: bytes in, bytes out, file
objects, per-Engine limits, progress and cancellation, one Engine shared by threads."""
from __future__ import annotations

import io
import tempfile
import threading

import pytest

from conftest import modelcdr, strict_diff, vocab
from test_load import malicious_pickle


@pytest.fixture
def checkpoint(tmp_path, torch):
    path = tmp_path / "m.pt"
    torch.save({"w": torch.randn(64, 64), "b": torch.arange(7), "step": 3}, path)
    return path


@pytest.fixture
def no_temp_files(monkeypatch):
    """Any temporary file or folder made through tempfile fails the test."""
    def refuse(*a, **k):
        raise AssertionError("a temporary file was made")

    for name in ("mkstemp", "mkdtemp", "NamedTemporaryFile", "TemporaryFile", "TemporaryDirectory"):
        monkeypatch.setattr(tempfile, name, refuse)


def test_bytes_in_bytes_out(tmp_path, checkpoint, reference, no_temp_files):
    out = tmp_path / "out.pt"
    modelcdr.disarm(checkpoint, out)
    data = checkpoint.read_bytes()
    for src in (data, bytearray(data), memoryview(data)):
        got = modelcdr.disarm(src)
        assert isinstance(got, bytes) and got == out.read_bytes()
        assert strict_diff(reference(checkpoint), modelcdr.load(src)) == []
        r = modelcdr.scan(src)
        assert r.status == "clean" and r.input == "<memory>" and r.format == "torch-zip"
    (tmp_path / "from_bytes.pt").write_bytes(got)
    assert vocab.check_output(tmp_path / "from_bytes.pt") == []


def test_file_object_in(checkpoint, reference, no_temp_files):
    exp = reference(checkpoint)
    with open(checkpoint, "rb") as f:
        r = modelcdr.scan(f)
    assert r.status == "clean" and r.input == str(checkpoint)  # named after the file object
    reader = io.BufferedReader(io.BytesIO(checkpoint.read_bytes()))  # not a real file
    assert strict_diff(exp, modelcdr.load(reader)) == []
    with pytest.raises(TypeError):
        modelcdr.load(io.StringIO("text"))


def test_rejected_memory_input_gives_no_bytes(no_temp_files):
    with pytest.raises(modelcdr.RejectedError) as e:
        modelcdr.disarm(malicious_pickle())
    assert e.value.report.input == "<memory>" and e.value.report.error.rule


def test_loaded_tensors_do_not_borrow_the_input(checkpoint, torch):
    data = bytearray(checkpoint.read_bytes())
    sd = modelcdr.load(data)
    w = sd["w"].clone()
    data[:] = bytes(len(data))  # the engine's borrow ended with the call
    data.extend(b"resizable again")
    assert torch.equal(sd["w"], w)



def test_writable_input_changed_by_another_thread(torch):
    # The engine runs without the GIL: a bytearray another thread keeps rewriting must not change
    # what the engine reads between its checks and its uses (the binding copies writable buffers;
    # borrowed, the records changed under the reader and failed their CRC-32 checks).
    f = io.BytesIO()
    torch.save({f"w{i}": torch.randn(256, 256) for i in range(32)}, f)  # 8 MiB: reads take a while
    data = f.getvalue()
    expected = modelcdr.disarm(data)
    with pytest.raises(modelcdr.RejectedError) as zeros:
        modelcdr.disarm(bytes(len(data)))
    buf = bytearray(data)
    stop = threading.Event()

    def scribble():
        blank = bytes(len(buf))
        while not stop.is_set():
            buf[:] = blank
            buf[:] = data

    t = threading.Thread(target=scribble)
    t.start()
    outcomes = []
    try:
        for _ in range(30):
            try:
                outcomes.append("rebuilt" if modelcdr.disarm(buf) == expected else "different")
            except modelcdr.RejectedError as e:
                outcomes.append("zeros" if str(e) == str(zeros.value) else str(e))
    finally:
        stop.set()
        t.join()
    # Each call copies with the GIL held, so it sees one whole state: the file (and gives exactly
    # its rebuild) or all zeros (and is rejected as such); a torn read gives anything else.
    assert set(outcomes) <= {"rebuilt", "zeros"}, outcomes


def test_engine_limits_are_per_engine(checkpoint):
    data = checkpoint.read_bytes()
    small = modelcdr.Engine(max_input_bytes=len(data) - 1)
    assert small.limits["max_input_bytes"] == len(data) - 1
    with pytest.raises(modelcdr.RejectedError) as e:
        small.load(data)
    assert e.value.report.error.rule == "limits.input-size"
    with pytest.raises(modelcdr.RejectedError):
        small.disarm(checkpoint)
    few_ops = modelcdr.Engine(max_pickle_ops=5)
    with pytest.raises(modelcdr.RejectedError) as e:
        few_ops.disarm(data)
    assert e.value.report.error.rule == "pickle.limit-ops"
    assert modelcdr.load(data)["step"] == 3  # the default Engine is unaffected
    assert modelcdr.Engine(max_input_bytes=len(data)).load(data)["step"] == 3


def test_engine_policy_adds_classes():
    extra = modelcdr.Engine(allow_classes=["mypkg.config.Config"])
    assert "mypkg.config.Config" in extra.allowed_classes()
    assert "mypkg.config.Config" not in modelcdr.Engine().allowed_classes()
    with pytest.raises(ValueError):
        modelcdr.Engine(allow_classes=["os.*"])


def test_progress_reports_stages(tmp_path, checkpoint):
    seen = []
    modelcdr.disarm(checkpoint, tmp_path / "o.pt", progress=lambda s, d, t: seen.append((s, d, t)))
    stages = [s for s, _, _ in seen]
    assert stages[0] == "read" and stages[-1] == "done" and "write" in stages
    for s in ("read", "write"):
        done = [d for st, d, t in seen if st == s]
        assert done == sorted(done) and all(d <= t for st, d, t in seen if st == s)


def test_progress_false_cancels(tmp_path, checkpoint):
    out = tmp_path / "o.pt"
    with pytest.raises(modelcdr.CancelledError) as e:
        modelcdr.disarm(checkpoint, out, progress=lambda s, d, t: s != "write")
    assert e.value.report.error.rule == "engine.cancelled"
    assert not out.exists()
    with pytest.raises(modelcdr.CancelledError):
        modelcdr.load(checkpoint, progress=lambda s, d, t: False)


def test_progress_exception_propagates(checkpoint):
    class Stop(Exception):
        pass

    def boom(stage, done, total):
        raise Stop(stage)

    with pytest.raises(Stop):
        modelcdr.disarm(checkpoint.read_bytes(), progress=boom)


def test_cancel_token(tmp_path, checkpoint):
    token = modelcdr.CancelToken()
    assert not token.cancelled
    modelcdr.scan(checkpoint, cancel=token)  # not set: runs
    token.cancel()
    assert token.cancelled
    with pytest.raises(modelcdr.CancelledError):
        modelcdr.disarm(checkpoint, tmp_path / "o.pt", cancel=token)
    assert not (tmp_path / "o.pt").exists()
    with pytest.raises(modelcdr.CancelledError):
        modelcdr.scan(checkpoint.read_bytes(), cancel=token)


def test_one_engine_shared_by_threads(tmp_path, torch):
    """One Engine, 8 threads, bytes and paths at once: every result is its own input's."""
    engine = modelcdr.Engine(max_input_bytes=1 << 30)
    inputs = []
    for i in range(4):
        p = tmp_path / f"m{i}.pt"
        torch.save({"w": torch.full((5000,), float(i)), "i": i}, p)
        inputs.append((p, p.read_bytes(), modelcdr.disarm(p)))
    errors = []

    def work(k):
        try:
            for n in range(6):
                p, data, clean = inputs[(k + n) % 4]
                src = data if (k + n) % 2 else p
                got = engine.load(src)
                assert got["i"] == (k + n) % 4 and float(got["w"][-1]) == float((k + n) % 4)
                assert engine.disarm(src) == clean
                assert engine.scan(src).status == "clean"
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    ts = [threading.Thread(target=work, args=(k,)) for k in range(8)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert errors == []
