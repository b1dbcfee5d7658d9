"""A seeded generator of pickle streams for the differential test (and bench/differential.py).

Streams are built opcode by opcode from a small grammar: every protocol header (or none), FRAMEs
of the right or a wrong length, GLOBAL and STACK_GLOBAL (operands from UNICODE or from protocol-0
STRING, directly or through the memo), REDUCE/NEWOBJ/INST/OBJ calls whose arguments are plain
values, values popped before STOP, memo PUT/GET games (overwrites, missing indexes), EXT codes and
protocol mixing; then some are mutated (a byte flipped, cut, an opcode inserted or a span repeated).
Nothing here unpickles anything. The names are outside modelcdr's vocabulary so that each
import and call is a finding on modelcdr's side.
"""
import random
import struct

NAMES = [("os", "system"), ("builtins", "eval"), ("subprocess", "Popen"), ("posix", "system"),
         ("nt", "system"), ("builtins", "getattr"), ("mypkg.mod", "Thing"), ("runpy", "run_path")]
WORDS = ["ls", "echo hi", "id", "x", "touch /tmp/p", "a b c", ""]


class Gen:
    def __init__(self, rng):
        self.r = rng
        self.out = bytearray()
        self.memo = 0  # next MEMOIZE index
        self.memo_strs = {}  # memo index -> str pushed there
        self.proto = 0

    def op(self, b):
        self.out += b

    def str_value(self, s):
        r = self.r.random()
        enc = s.encode()
        if r < 0.3:
            self.op(b"\x8c" + bytes([len(enc)]) + enc)  # SHORT_BINUNICODE
        elif r < 0.5:
            self.op(b"X" + struct.pack("<I", len(enc)) + enc)  # BINUNICODE
        elif r < 0.7:
            self.op(b"V" + enc + b"\n")  # UNICODE (raw-unicode-escape; plain ASCII here)
        elif r < 0.85:
            self.op(b"S'" + enc + b"'\n")  # STRING: a str under CPython's default decoding
        else:
            self.op(b"U" + bytes([len(enc)]) + enc)  # SHORT_BINSTRING

    def memoize(self, s=None):
        if self.r.random() < 0.5:
            self.op(b"\x94")  # MEMOIZE
            idx = self.memo
            self.memo += 1
        else:
            idx = self.r.randrange(0, 8)
            self.op(b"q" + bytes([idx]))  # BINPUT (may overwrite)
            self.memo = max(self.memo, idx + 1)
        if s is not None:
            self.memo_strs[idx] = s
        else:
            self.memo_strs.pop(idx, None)

    def plain(self, depth=0):
        r = self.r.random()
        if r < 0.3:
            self.str_value(self.r.choice(WORDS))
        elif r < 0.5:
            v = self.r.randrange(0, 300)
            self.op(b"K" + bytes([v]) if v < 256 else b"M" + struct.pack("<H", v))
        elif r < 0.6:
            self.op(b"I" + str(self.r.randrange(-5, 5)).encode() + b"\n")
        elif r < 0.7:
            self.op(self.r.choice([b"N", b"\x88", b"\x89"]))
        elif r < 0.8:
            b = self.r.choice(WORDS).encode()
            self.op(b"C" + bytes([len(b)]) + b)  # SHORT_BINBYTES
        elif depth < 2:
            self.args(depth + 1)
        else:
            self.op(b"N")

    def args(self, depth=0):
        n = self.r.randrange(0, 4)
        if n and n <= 3 and self.r.random() < 0.6:
            for _ in range(n):
                self.plain(depth)
            self.op(b"\x85\x86\x87"[n - 1:n])  # TUPLE1/2/3
        else:
            self.op(b"(")
            for _ in range(n):
                self.plain(depth)
            self.op(b"t")

    def global_(self):
        m, n = self.r.choice(NAMES)
        r = self.r.random()
        if r < 0.4:
            self.op(b"c" + m.encode() + b"\n" + n.encode() + b"\n")
        elif r < 0.7 or not self.memo_strs:
            self.str_value(m)
            if self.r.random() < 0.4:
                self.memoize(m)
            self.str_value(n)
            self.op(b"\x93")  # STACK_GLOBAL
        else:  # operands fetched from the memo (whatever it holds now)
            idx = self.r.choice(list(self.memo_strs))
            self.op(b"h" + bytes([idx]))  # BINGET
            self.str_value(n)
            self.op(b"\x93")

    def call(self):
        r = self.r.random()
        if r < 0.55:
            self.global_()
            self.args()
            self.op(b"R")  # REDUCE
        elif r < 0.7:
            self.global_()
            self.args()
            self.op(b"\x81")  # NEWOBJ
        elif r < 0.85:
            m, n = self.r.choice(NAMES)
            self.op(b"(")
            self.plain()
            self.op(b"i" + m.encode() + b"\n" + n.encode() + b"\n")  # INST
        else:
            self.op(b"(")
            self.global_()
            self.plain()
            self.op(b"o")  # OBJ

    def item(self):
        r = self.r.random()
        if r < 0.45:
            self.call()
        elif r < 0.6:
            self.global_()
        elif r < 0.75:
            self.plain()
        elif r < 0.8:
            self.op(b"\x82" + bytes([self.r.randrange(1, 4)]))  # EXT1 (never registered)
        else:
            self.plain()
            self.memoize()
            self.op(b"h" + bytes([self.r.randrange(0, self.memo + 2)]))  # BINGET, maybe missing
        if self.r.random() < 0.3:
            self.memoize()

    def stream(self):
        self.proto = self.r.choice([None, 0, 1, 2, 3, 4, 5])
        if self.proto is not None:
            self.op(b"\x80" + bytes([self.proto]))
        frame_at = len(self.out) if self.proto is not None and self.proto >= 4 and self.r.random() < 0.5 else None
        n = self.r.randrange(1, 5)
        for i in range(n):
            self.item()
            if i < n - 1:
                self.op(b"0")  # POP: the value was made (and its call run) all the same
        self.op(b".")
        data = bytes(self.out)
        if frame_at is not None:
            body = data[frame_at:]
            length = len(body) + self.r.choice([0, 0, 0, -3, 3, 20])
            data = data[:frame_at] + b"\x95" + struct.pack("<Q", max(0, length)) + body
        return data


def mutate(rng, data):
    r = rng.random()
    b = bytearray(data)
    if r < 0.3 and b:
        b[rng.randrange(len(b))] = rng.randrange(256)
    elif r < 0.5 and len(b) > 2:
        b = b[:rng.randrange(1, len(b))]
    elif r < 0.7:
        at = rng.randrange(len(b) + 1)
        b[at:at] = bytes([rng.choice(b"0()tR\x93\x94h.2")])
    elif len(b) > 4:
        i = rng.randrange(len(b) - 2)
        j = rng.randrange(i + 1, min(len(b), i + 12))
        b[j:j] = b[i:j]
    return bytes(b)


def streams(seed, count, mutate_ratio=0.4):
    rng = random.Random(seed)
    for _ in range(count):
        data = Gen(rng).stream()
        if rng.random() < mutate_ratio:
            data = mutate(rng, data)
        yield data
