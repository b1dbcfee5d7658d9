// The 68 opcodes of pickle protocols 0-5 (CPython Lib/pickletools.py is the reference list).
// Byte values are part of the format; names are the ones pickletools prints, so error messages
// and findings read like a `pickletools.dis` listing.
#pragma once
#include <cstdint>

namespace modelcdr::pickle {

enum class Op : uint8_t {
  MARK = '(',
  STOP = '.',
  POP = '0',
  POP_MARK = '1',
  DUP = '2',
  FLOAT = 'F',
  INT = 'I',
  BININT = 'J',
  BININT1 = 'K',
  LONG = 'L',
  BININT2 = 'M',
  NONE = 'N',
  PERSID = 'P',
  BINPERSID = 'Q',
  REDUCE = 'R',
  STRING = 'S',
  BINSTRING = 'T',
  SHORT_BINSTRING = 'U',
  UNICODE = 'V',
  BINUNICODE = 'X',
  APPEND = 'a',
  BUILD = 'b',
  GLOBAL = 'c',
  DICT = 'd',
  EMPTY_DICT = '}',
  APPENDS = 'e',
  GET = 'g',
  BINGET = 'h',
  INST = 'i',
  LONG_BINGET = 'j',
  LIST = 'l',
  EMPTY_LIST = ']',
  OBJ = 'o',
  PUT = 'p',
  BINPUT = 'q',
  LONG_BINPUT = 'r',
  SETITEM = 's',
  TUPLE = 't',
  EMPTY_TUPLE = ')',
  SETITEMS = 'u',
  BINFLOAT = 'G',
  // protocol 2
  PROTO = 0x80,
  NEWOBJ = 0x81,
  EXT1 = 0x82,
  EXT2 = 0x83,
  EXT4 = 0x84,
  TUPLE1 = 0x85,
  TUPLE2 = 0x86,
  TUPLE3 = 0x87,
  NEWTRUE = 0x88,
  NEWFALSE = 0x89,
  LONG1 = 0x8A,
  LONG4 = 0x8B,
  // protocol 3
  BINBYTES = 'B',
  SHORT_BINBYTES = 'C',
  // protocol 4
  SHORT_BINUNICODE = 0x8C,
  BINUNICODE8 = 0x8D,
  BINBYTES8 = 0x8E,
  EMPTY_SET = 0x8F,
  ADDITEMS = 0x90,
  FROZENSET = 0x91,
  NEWOBJ_EX = 0x92,
  STACK_GLOBAL = 0x93,
  MEMOIZE = 0x94,
  FRAME = 0x95,
  // protocol 5
  BYTEARRAY8 = 0x96,
  NEXT_BUFFER = 0x97,
  READONLY_BUFFER = 0x98,
};

inline constexpr int kHighestProtocol = 5;
inline constexpr int kOpcodeCount = 68;

// Name of an opcode byte, or nullptr when the byte is not an opcode.
constexpr const char* opcode_name(uint8_t byte) {
  switch (static_cast<Op>(byte)) {
#define MCDR_OPNAME(x) \
  case Op::x:          \
    return #x;
    MCDR_OPNAME(MARK) MCDR_OPNAME(STOP) MCDR_OPNAME(POP) MCDR_OPNAME(POP_MARK) MCDR_OPNAME(DUP)
    MCDR_OPNAME(FLOAT) MCDR_OPNAME(INT) MCDR_OPNAME(BININT) MCDR_OPNAME(BININT1) MCDR_OPNAME(LONG)
    MCDR_OPNAME(BININT2) MCDR_OPNAME(NONE) MCDR_OPNAME(PERSID) MCDR_OPNAME(BINPERSID) MCDR_OPNAME(REDUCE)
    MCDR_OPNAME(STRING) MCDR_OPNAME(BINSTRING) MCDR_OPNAME(SHORT_BINSTRING) MCDR_OPNAME(UNICODE)
    MCDR_OPNAME(BINUNICODE) MCDR_OPNAME(APPEND) MCDR_OPNAME(BUILD) MCDR_OPNAME(GLOBAL) MCDR_OPNAME(DICT)
    MCDR_OPNAME(EMPTY_DICT) MCDR_OPNAME(APPENDS) MCDR_OPNAME(GET) MCDR_OPNAME(BINGET) MCDR_OPNAME(INST)
    MCDR_OPNAME(LONG_BINGET) MCDR_OPNAME(LIST) MCDR_OPNAME(EMPTY_LIST) MCDR_OPNAME(OBJ) MCDR_OPNAME(PUT)
    MCDR_OPNAME(BINPUT) MCDR_OPNAME(LONG_BINPUT) MCDR_OPNAME(SETITEM) MCDR_OPNAME(TUPLE)
    MCDR_OPNAME(EMPTY_TUPLE) MCDR_OPNAME(SETITEMS) MCDR_OPNAME(BINFLOAT) MCDR_OPNAME(PROTO)
    MCDR_OPNAME(NEWOBJ) MCDR_OPNAME(EXT1) MCDR_OPNAME(EXT2) MCDR_OPNAME(EXT4) MCDR_OPNAME(TUPLE1)
    MCDR_OPNAME(TUPLE2) MCDR_OPNAME(TUPLE3) MCDR_OPNAME(NEWTRUE) MCDR_OPNAME(NEWFALSE) MCDR_OPNAME(LONG1)
    MCDR_OPNAME(LONG4) MCDR_OPNAME(BINBYTES) MCDR_OPNAME(SHORT_BINBYTES) MCDR_OPNAME(SHORT_BINUNICODE)
    MCDR_OPNAME(BINUNICODE8) MCDR_OPNAME(BINBYTES8) MCDR_OPNAME(EMPTY_SET) MCDR_OPNAME(ADDITEMS)
    MCDR_OPNAME(FROZENSET) MCDR_OPNAME(NEWOBJ_EX) MCDR_OPNAME(STACK_GLOBAL) MCDR_OPNAME(MEMOIZE)
    MCDR_OPNAME(FRAME) MCDR_OPNAME(BYTEARRAY8) MCDR_OPNAME(NEXT_BUFFER) MCDR_OPNAME(READONLY_BUFFER)
#undef MCDR_OPNAME
  }
  return nullptr;
}

constexpr int count_opcodes() {
  int n = 0;
  for (int b = 0; b < 256; ++b) n += opcode_name(static_cast<uint8_t>(b)) != nullptr;
  return n;
}
static_assert(count_opcodes() == kOpcodeCount, "every pickle opcode needs a name");

}  // namespace modelcdr::pickle
