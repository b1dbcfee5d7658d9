#!/usr/bin/python3
"""Writes seed pickles for fuzz/pickle_machine_fuzz.cpp into fuzz/seeds/pickle_machine/.

Everything here is our own data: pickle.dumps of plain values at every protocol, plus the
data.pkl record of small torch.save() files (and one legacy-format file). Nothing is loaded.
Run: /usr/bin/python3 fuzz/make_seeds.py
"""
import collections
import io
import os
import pickle
import zipfile

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "seeds", "pickle_machine")


def write(name, data):
    with open(os.path.join(OUT, name), "wb") as f:
        f.write(data)


def main():
    os.makedirs(OUT, exist_ok=True)
    shared = [1, 2]
    plain = {
        "ints": [0, 1, -1, 255, 65535, 2**31, -2**31 - 1, 2**70, -2**70],
        "floats": (1.5, -0.0, float("inf")),
        "text": ["h\u00e9llo", "\U0001F600", "x" * 300],
        "bytes": [b"\x00\xff", bytearray(b"ab")],
        "shared": [shared, shared],
        "sets": [{1, 2}, frozenset({3})],
        "none": None,
        "bools": [True, False],
        "ordered": collections.OrderedDict(a=1, b=[2]),
    }
    for proto in range(6):
        write(f"plain_p{proto}.pkl", pickle.dumps(plain, protocol=proto))
    cyclic = []
    cyclic.append(cyclic)
    write("cyclic_p2.pkl", pickle.dumps(cyclic, protocol=2))
    write("int_list_p4.pkl", pickle.dumps(list(range(100000, 103000)), protocol=4))

    try:
        import torch
    except ImportError:
        return
    torch.manual_seed(0)
    w = torch.randn(2, 3)
    state = collections.OrderedDict(weight=w, tied=w, bias=torch.zeros(3, dtype=torch.float16),
                                    step=torch.tensor(7, dtype=torch.int64))
    buf = io.BytesIO()
    torch.save(state, buf)
    with zipfile.ZipFile(io.BytesIO(buf.getvalue())) as z:
        for name in z.namelist():
            if name.endswith("/data.pkl"):
                write("torch_state_dict_data.pkl", z.read(name))
    buf = io.BytesIO()
    torch.save(torch.nn.Linear(2, 2).state_dict(), buf, _use_new_zipfile_serialization=False)
    write("torch_legacy.pt", buf.getvalue())


if __name__ == "__main__":
    main()
