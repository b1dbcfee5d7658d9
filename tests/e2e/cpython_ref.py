"""CPython's C unpickler as a reference that runs nothing from its input.

Run as a script in a subprocess (`python cpython_ref.py < streams.json`): for each base64 pickle
in the JSON list on stdin it prints one JSON record
    {"ok": bool, "error": str|null, "globals": [[module, name], ...], "calls": [[callee, args], ...]}
`find_class` never imports: it records (module, name) and returns an inert stand-in class; calling
it (REDUCE, NEWOBJ, INST/OBJ) records the callee and the arguments' repr and returns an inert
stand-in object. `persistent_load` returns a stand-in too. A tripwire (an audit hook armed while
unpickling) aborts the process on any import, process, socket or file-write event, so a mistake in
this harness fails the test instead of running the input's code.

The repr of arguments follows modelcdr's rendering (`render_value` in src/cdr/program_scan.cpp):
str 'x', bytes b'x', tuples with a trailing comma for one item, a stand-in object as
`module.name(args)`; generators keep to values whose repr both sides spell the same.
"""
import base64
import io
import json
import os
import pickle
import sys

ARMED = [False]


def _audit(event, args):
    if not ARMED[0]:
        return
    if event in ("import", "exec", "compile", "os.system", "subprocess.Popen", "socket.connect", "ctypes.dlopen") or \
            event.startswith(("os.", "subprocess.", "socket.", "shutil.", "ctypes.", "urllib.", "http.")):
        os.write(2, f"TRIPWIRE {event} {str(args)[:200]}\n".encode())
        os._exit(99)
    if event == "open" and len(args) > 1 and isinstance(args[1], str) and any(c in args[1] for c in "wax+"):
        os.write(2, f"TRIPWIRE open-for-write {args[0]!r}\n".encode())
        os._exit(99)


class Recorder:
    def __init__(self):
        self.globals = []
        self.calls = []


def _quote(text, prefix):
    """modelcdr's spelling of a str or bytes value: '...' with \\ and \' escaped, control bytes as
    \\xNN, at most 200 bytes then '...'."""
    raw = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else bytes(text)
    out = []
    for c in raw[:200]:
        if c in (0x5C, 0x27):
            out.append("\\" + chr(c))
        elif c < 0x20 or c == 0x7F:
            out.append(f"\\x{c:02x}")
        else:
            out.append(c)
    body = bytearray()
    for x in out:
        body += x.encode() if isinstance(x, str) else bytes([x])
    return prefix + "'" + body.decode("utf-8", "replace") + ("..." if len(raw) > 200 else "") + "'"


def _render(v, depth=0):
    if depth > 4:  # modelcdr's nesting limit
        return "..."
    if isinstance(v, Result):
        return v.render(depth)
    if isinstance(v, bool) or v is None:
        return repr(v)
    if isinstance(v, int):
        return repr(v) if -2**63 <= v < 2**63 else "<object>"
    if isinstance(v, float):
        return f"{v:f}"
    if isinstance(v, str):
        return _quote(v, "")
    if isinstance(v, (bytes, bytearray)):
        return _quote(v, "b")
    if isinstance(v, tuple):
        inner = ", ".join(_render(x, depth + 1) for x in v)
        return "(" + inner + ("," if len(v) == 1 else "") + ")"
    if isinstance(v, list):
        return "[" + ", ".join(_render(x, depth + 1) for x in v) + "]"
    if isinstance(v, (dict, set, frozenset)):
        return "<dict>" if isinstance(v, dict) else "<object>"
    return repr(v)


def make_stand_in(rec, module, name):
    qual = f"{module}.{name}"  # the repr of a call's result: modelcdr renders it module.name(args)
    key = f"{module} {name}"  # how modelcdr's findings name the callee

    class Meta(type):
        def __call__(cls, *args, **kwargs):  # REDUCE / INST / OBJ
            rec.calls.append([key, _render(args)])
            return Result(qual, args)

        def __repr__(cls):
            return qual

    def new(cls, *args):  # NEWOBJ: cls.__new__(cls, *args)
        rec.calls.append([key, _render(args)])
        return Result(qual, args)

    return Meta(name if name.isidentifier() else "StandIn", (), {"__new__": new})


class Result:
    """What a stand-in call returns: inert, with a __dict__ BUILD may fill and list/dict hooks."""

    def __init__(self, qual, args=None):
        self._qual, self._args = qual, args

    def render(self, depth):  # as modelcdr renders a call node: callee and arguments one level down
        if self._args is None:
            return self._qual
        return ("..." if depth + 1 > 4 else self._qual) + _render(self._args, depth + 1)

    def __repr__(self):
        return self.render(0)

    def append(self, x):
        pass

    def extend(self, xs):
        pass

    def __setitem__(self, k, v):
        pass


class RefUnpickler(pickle.Unpickler):  # pickle.Unpickler is _pickle.Unpickler, the C one
    def __init__(self, data, rec):
        super().__init__(io.BytesIO(data), encoding="utf-8")
        self.rec = rec

    def find_class(self, module, name):
        self.rec.globals.append([module, name])
        return make_stand_in(self.rec, module, name)

    def persistent_load(self, pid):
        return Result("<object>")


def run_one(data):
    rec = Recorder()
    err = None
    ARMED[0] = True
    try:
        RefUnpickler(data, rec).load()
    except BaseException as e:  # the C unpickler's own errors (UnpicklingError, EOFError, ...)
        err = f"{type(e).__name__}: {e}"[:300]
    finally:
        ARMED[0] = False
    return {"ok": err is None, "error": err, "globals": rec.globals, "calls": rec.calls}


def main():
    import _pickle
    assert pickle.Unpickler is _pickle.Unpickler, "the C unpickler is required"
    streams = json.loads(sys.stdin.read())
    # A mutated stream can ask CPython for a huge memo (LONG_BINPUT 0xFFFFFFFF resizes its memo
    # array) or string: bounded address space turns that into a MemoryError, one failed stream.
    import resource
    resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))
    sys.addaudithook(_audit)
    out = [run_one(base64.b64decode(s)) for s in streams]
    sys.stdout.write(json.dumps(out))


if __name__ == "__main__":
    main()
