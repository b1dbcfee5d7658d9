"""What CPython would run (issue 11 item 2): where a stream uses a trick the strict machine rejects
(STRING operands of STACK_GLOBAL, a FRAME longer than the data, memo games, setattr on a module,
a broken start), `scan` still reports the globals and calls CPython's unpickler reaches, with their
arguments, and says whether CPython fails too. `disarm` keeps rejecting every one (fail closed).
Streams are built here as bytes; the reference is CPython's C unpickler with inert stand-ins
(cpython_ref.py, in a subprocess with a tripwire)."""
import json
import struct

import pytest

import differential
from conftest import explain, require_bin, run_cli


def frame(body, extra=0):
    return b"\x80\x04\x95" + struct.pack("<Q", len(body) + extra) + body


TRICKS = {
    # CPython decodes STRING to str, so STACK_GLOBAL accepts it (picklescan malicious23.pkl)
    "string-operands": b"S'os'\nS'system'\n\x93S'ls -la'\n\x85R.",
    # the call runs, then a memo miss makes CPython fail (picklescan keyerror-exploit.pkl)
    "memo-miss": b"\x80\x04cos\nsystem\n\x8c\x0becho memo k\x85R0\x8c\x02os\x94h\x03h\x00\x93K\x01.",
    # the call runs, then STACK_GLOBAL gets an int operand (type-confusion-exploit.pkl)
    "type-confusion": b"\x80\x04cos\nsystem\n\x8c\x06echo t\x85R0J*\x00\x00\x00\x94\x8c\x02os\x94h\x00h\x01\x93.",
    # the call runs, then an unquoted STRING (modelscan-pickle-bypass rce_payload.pkl)
    "bad-string": b"cbase64\nb64decode\n(S'aWQ='\ntR(S{}\n.",
    # the C unpickler reads INT with strtol, which stops at a NUL: "I\x001" is 0, and the stream
    # goes on to a second call (found by test_unpickler_differential.py, batch seed 113)
    "int-nul": b"\x80\x03Vos\n\x94X\x06\x00\x00\x00system\x93I\x001\nX\x02\x00\x00\x00id\x86R0h\x00S'system'\n\x93(S'ls'\ntR.",
}


def scan(path):
    rc, so, se = run_cli("scan", "--json", path)
    assert rc in (0, 1, 2), explain(rc, so, se)
    return rc, json.loads(so)["files"][0]


@pytest.mark.parametrize("name", sorted(TRICKS))
def test_trick_reports_what_cpython_runs(tmp_path, name):
    require_bin()
    data = TRICKS[name]
    ref = differential.reference([data])[0]
    assert ref["calls"], ref  # CPython does call something before it stops (or at STOP)
    p = tmp_path / f"{name}.pkl"
    p.write_bytes(data)
    rc, f = scan(p)
    assert rc == 2 and f["status"] == "error", f  # the strict reading still rejects it
    view = [x for x in f["findings"] if x["rule"] == "pickle.cpython-view"]
    assert len(view) == 1, f
    assert ("fails on this stream too" in view[0]["message"]) == (not ref["ok"]), (view, ref)
    messages = [x["message"] for x in f["findings"]]
    for callee, args in ref["calls"]:
        assert any(f"calls '{callee}' with arguments {args}" in x for x in messages), (callee, args, messages)
    out = tmp_path / "out.pt"
    rc, so, se = run_cli("disarm", p, "-o", out)
    assert rc == 2 and not out.exists(), explain(rc, so, se)


def test_frame_longer_than_the_data(tmp_path):
    """pickle.py reads a too-long FRAME to STOP; CPython's C unpickler fails at it (nt_alias_attack)."""
    require_bin()
    data = frame(b"\x8c\x02nt\x94\x8c\x06system\x94\x93\x8c\x03dir\x85R.", extra=3)
    assert not differential.reference([data])[0]["ok"]
    p = tmp_path / "frame.pkl"
    p.write_bytes(data)
    rc, f = scan(p)
    assert rc == 2
    view = [x["message"] for x in f["findings"] if x["rule"] == "pickle.cpython-view"]
    assert view and "pickle.py" in view[0] and "C unpickler fails at the FRAME" in view[0]
    assert any("calls 'nt system' with arguments ('dir',)" in x["message"] for x in f["findings"]), f


def test_module_setattr_resolves_the_hidden_global(tmp_path):
    """BUILD on a module sets an attribute that a later STACK_GLOBAL operand resolves through
    (picklescan sys_module_override_sploit.pkl): the operands become 'builtins' 'eval'."""
    require_bin()
    data = (b"\x80\x04\x8c\x05torch\x94\x8c\x06_utils\x94\x93\x94"          # memo 2: torch._utils (a module)
            b"\x8c\x0ctorch._utils\x94\x8c\x01a\x94\x8c\x01b\x94"           # memo 3..5
            b"h\x02}h\x04\x8c\x08builtinss" b"b0"                          # torch._utils.a = 'builtins'
            b"h\x02}h\x05\x8c\x04evals" b"b0"                              # torch._utils.b = 'eval'
            b"h\x03h\x04\x93h\x03h\x05\x93\x93\x8c\x0bprint('hi')\x85R.")
    p = tmp_path / "setattr.pkl"
    p.write_bytes(data)
    rc, f = scan(p)
    assert rc == 2, f
    assert any("calls 'builtins eval' with arguments (\"print('hi')\"" in x["message"] or
               "calls 'builtins eval' with arguments ('print(\\'hi\\')'" in x["message"] for x in f["findings"]), f


def test_broken_start_resyncs_to_the_payload(tmp_path):
    """A stream broken where it starts (an npy header length pointing into padding): CPython fails at
    once; the scan says so and reports the pickle that begins after it."""
    require_bin()
    hdr = b"{'descr': '|O', 'fortran_order': False, 'shape': (1,), }"
    data = b"\x93NUMPY\x01\x00" + struct.pack("<H", len(hdr)) + hdr + b"      \n" + b"cos\nsystem\n(S'echo r'\ntR."
    p = tmp_path / "resync.npy"  # the header length stops 7 bytes short: np.load's pickle starts at a space
    p.write_bytes(data)
    rc, f = scan(p)
    assert rc == 2 and f["status"] == "error", f
    msgs = [x["message"] for x in f["findings"]]
    assert any("before it imports or calls anything" in m for m in msgs), f
    assert any(f"a pickle stream begins at offset {10 + len(hdr) + 7}" in m for m in msgs), f
    assert any("calls 'os system' with arguments ('echo r',)" in m for m in msgs), f


def test_malicious_corpus_files_are_never_only_a_parse_error(corpus):
    """Every malicious corpus file that is a pickle or a zip says what dangerous thing it holds;
    the only files left as a bare error are formats modelcdr does not read."""
    require_bin()
    recs = [r for r in json.loads((corpus / "manifest.json").read_text()) if r["label"] == "malicious"]
    rc, so, se = run_cli("scan", "--json", *[corpus / r["path"] for r in recs], timeout=600)
    files = json.loads(so)["files"]
    bare = sorted(str(f["path"]).split("malicious/", 1)[1] for f in files
                  if f["status"] == "error" and not any(x["severity"] in ("medium", "high", "critical")
                                                         for x in f["findings"]))
    # the Keras files are graded from their config now (test_scan_keras.py)
    assert bare == ["Malicious-Models/malicious_model.onnx", "picklescan/malicious1.7z"], bare
