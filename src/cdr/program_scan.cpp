// Static findings over the whole pickle program: every global, call, object construction and
// BUILD, reachable from the root or not. A payload can run while unpickling and be popped before
// STOP, so walking only what the lifter keeps would miss it.
#include <algorithm>
#include <array>
#include <cctype>
#include <cstring>
#include <iterator>
#include <optional>
#include <map>
#include <set>
#include <span>
#include <vector>

#include "cdr/class_registry.hpp"
#include "cdr/globals_policy.hpp"
#include "pickle/globals.hpp"
#include "cdr/lifter.hpp"
#include "cdr/nested_pickle.hpp"
#include "pickle/pickle_machine.hpp"

namespace modelcdr::cdr {

namespace {

using pickle::Node;
using pickle::NodeKind;

std::string quoted_global(const Node& g) { return "'" + g.text + " " + g.name() + "'"; }

bool starts_with(std::string_view s, std::string_view p) { return s.substr(0, p.size()) == p; }

// Library classes a mainstream loader needs and modelcdr rebuilds faithfully (the `safe`
// verdict, docs/RULES.md): torch.nn modules of a whole-model save, numpy arrays and dtypes,
// joblib's array wrapper, argparse.Namespace and the vetted class registry (docs/REGISTRY.md).
bool is_safe_library_global(const std::string& module, const std::string& name) {
  if (pickle::has_role(module, name, pickle::kGSafe)) return true;  // pickle/globals.def
  if (starts_with(module, "torch.nn.modules.") && !name.empty() && std::isupper(static_cast<unsigned char>(name[0])))
    return true;
  // Legacy typed tensors and storages (torch.FloatTensor, torch.cuda.HalfStorage, ...): old saves
  // name them as types; the legacy reader rebuilds them as plain tensors.
  if ((module == "torch" || module == "torch.cuda") && !name.empty() && std::isupper(static_cast<unsigned char>(name[0])) &&
      (name.ends_with("Tensor") || name.ends_with("Storage")))
    return true;
  return ClassRegistry::active().find(module, name).has_value();
}

// CPython's standard library (sys.stdlib_module_names of 3.11, less the data-only modules
// datetime, decimal, fractions, collections, numbers, enum, _codecs, copyreg, argparse, types,
// pathlib, and builtins, which globals_policy judges name by name). A standard-library name
// that is not a known data class is reached only to run code or reach the system (os, io,
// logging handlers, imaplib, uuid's command helpers, test.support, ...): dangerous.
bool is_stdlib_module(std::string_view module) {
  static const std::string_view kStdlib[] = {"_abc", "_aix_support", "_ast", "_asyncio", "_bisect", "_blake2", "_bootsubprocess", "_bz2", "_codecs_cn", "_codecs_hk", "_codecs_iso2022", "_codecs_jp", "_codecs_kr", "_codecs_tw", "_collections", "_collections_abc", "_compat_pickle", "_compression", "_contextvars", "_crypt", "_csv", "_ctypes", "_curses", "_curses_panel", "_datetime", "_dbm", "_decimal", "_elementtree", "_frozen_importlib", "_frozen_importlib_external", "_functools", "_gdbm", "_hashlib", "_heapq", "_imp", "_io", "_json", "_locale", "_lsprof", "_lzma", "_markupbase", "_md5", "_msi", "_multibytecodec", "_multiprocessing", "_opcode", "_operator", "_osx_support", "_overlapped", "_pickle", "_posixshmem", "_posixsubprocess", "_py_abc", "_pydecimal", "_pyio", "_queue", "_random", "_scproxy", "_sha1", "_sha256", "_sha3", "_sha512", "_signal", "_sitebuiltins", "_socket", "_sqlite3", "_sre", "_ssl", "_stat", "_statistics", "_string", "_strptime", "_struct", "_symtable", "_thread", "_threading_local", "_tkinter", "_tokenize", "_tracemalloc", "_typing", "_uuid", "_warnings", "_weakref", "_weakrefset", "_winapi", "_zoneinfo", "abc", "aifc", "array", "ast", "asynchat", "asyncio", "asyncore", "atexit", "audioop", "base64", "bdb", "binascii", "bisect", "bz2", "cProfile", "calendar", "cgi", "cgitb", "chunk", "cmath", "cmd", "code", "codecs", "codeop", "colorsys", "compileall", "concurrent", "configparser", "contextlib", "contextvars", "copy", "crypt", "csv", "ctypes", "curses", "dataclasses", "dbm", "difflib", "dis", "distutils", "doctest", "email", "encodings", "ensurepip", "errno", "faulthandler", "fcntl", "filecmp", "fileinput", "fnmatch", "ftplib", "functools", "gc", "genericpath", "getopt", "getpass", "gettext", "glob", "graphlib", "grp", "gzip", "hashlib", "heapq", "hmac", "html", "http", "idlelib", "imaplib", "imghdr", "imp", "importlib", "inspect", "io", "ipaddress", "itertools", "json", "keyword", "lib2to3", "linecache", "locale", "logging", "lzma", "mailbox", "mailcap", "marshal", "math", "mimetypes", "mmap", "modulefinder", "msilib", "msvcrt", "multiprocessing", "netrc", "nis", "nntplib", "nt", "ntpath", "nturl2path", "opcode", "operator", "optparse", "os", "ossaudiodev", "pdb", "pickle", "pickletools", "pipes", "pkgutil", "platform", "plistlib", "poplib", "posix", "posixpath", "pprint", "profile", "pstats", "pty", "pwd", "py_compile", "pyclbr", "pydoc", "pydoc_data", "pyexpat", "queue", "quopri", "random", "re", "readline", "reprlib", "resource", "rlcompleter", "runpy", "sched", "secrets", "select", "selectors", "shelve", "shlex", "shutil", "signal", "site", "smtpd", "smtplib", "sndhdr", "socket", "socketserver", "spwd", "sqlite3", "sre_compile", "sre_constants", "sre_parse", "ssl", "stat", "statistics", "string", "stringprep", "struct", "subprocess", "sunau", "symtable", "sys", "sysconfig", "syslog", "tabnanny", "tarfile", "telnetlib", "tempfile", "termios", "textwrap", "threading", "time", "timeit", "tkinter", "token", "tokenize", "tomllib", "trace", "traceback", "tracemalloc", "tty", "turtle", "turtledemo", "typing", "unicodedata", "unittest", "urllib", "uu", "uuid", "venv", "warnings", "wave", "weakref", "webbrowser", "winreg", "winsound", "wsgiref", "xdrlib", "xml", "xmlrpc", "zipapp", "zipfile", "zipimport", "zlib", "zoneinfo"};
  std::string_view top = module.substr(0, module.find('.'));
  return std::binary_search(std::begin(kStdlib), std::end(kStdlib), top);
}

// Lightning's callback classes, named but never called: checkpoints key callback state by them
// (the lifter writes the keys as strings, cdr.converted). A call would run their __init__.
bool is_lightning_callback_class(const std::string& module, const std::string& name) {
  for (std::string_view prefix : {"pytorch_lightning.callbacks.", "lightning.pytorch.callbacks."})
    if (starts_with(module, prefix) && !name.empty() && std::isupper(static_cast<unsigned char>(name[0]))) return true;
  return false;
}

// critical for what runs code or reaches the system, low for a safe library class, else high.
Severity global_severity(const std::string& module, const std::string& name) {
  Severity s = unknown_global_severity(module, name);
  if (s == Severity::critical) return s;
  if (is_safe_library_global(module, name)) return Severity::low;
  return is_stdlib_module(module) ? Severity::critical : s;
}

// A value as data, Python-like and bounded (a call's arguments: the command a payload runs).
void render_value(const pickle::Program& p, pickle::NodeId id, int depth, std::string& out) {
  constexpr size_t kMaxText = 200, kMaxOut = 400;
  if (out.size() > kMaxOut) return;
  if (id >= p.nodes.size() || depth > 4) {
    out += "...";
    return;
  }
  const Node& n = p.at(id);
  auto items = [&](std::span<const pickle::NodeId> v, const char* open, const char* close) {
    out += open;
    for (size_t i = 0; i < v.size() && out.size() <= kMaxOut; ++i) {
      if (i) out += ", ";
      render_value(p, v[i], depth + 1, out);
    }
    if (n.kind == NodeKind::Tuple && v.size() == 1) out += ",";
    out += close;
  };
  switch (n.kind) {
    case NodeKind::None: out += "None"; break;
    case NodeKind::Bool: out += n.b ? "True" : "False"; break;
    case NodeKind::Int: out += std::to_string(n.i); break;
    case NodeKind::Float: out += std::to_string(n.f); break;
    case NodeKind::Str:
    case NodeKind::Py2Str:
    case NodeKind::Bytes:
    case NodeKind::ByteArray: {
      out += n.kind == NodeKind::Str || n.kind == NodeKind::Py2Str ? "'" : "b'";
      for (size_t i = 0; i < n.text.size() && i < kMaxText; ++i) {
        unsigned char c = static_cast<unsigned char>(n.text[i]);
        if (c == '\\' || c == '\'') out += '\\';
        if (c < 0x20 || c == 0x7f) {
          static const char hex[] = "0123456789abcdef";
          out += "\\x";
          out += hex[c >> 4];
          out += hex[c & 15];
        } else {
          out += static_cast<char>(c);
        }
      }
      if (n.text.size() > kMaxText) out += "...";
      out += "'";
      break;
    }
    case NodeKind::Tuple: items(n.items, "(", ")"); break;
    case NodeKind::List: items(n.items, "[", "]"); break;
    case NodeKind::Global: out += n.text + "." + n.name(); break;
    case NodeKind::Call:
    case NodeKind::NewObj:
      if (n.items.size() < 2) {
        out += "<call>";
        break;
      }
      render_value(p, n.items[0], depth + 1, out);
      render_value(p, n.items[1], depth + 1, out);
      break;
    default: out += "<" + std::string(n.kind == NodeKind::Dict ? "dict" : "object") + ">"; break;
  }
}

std::string call_arguments(const pickle::Program& p, const Node& n) {
  if (n.items.size() < 2) return {};
  std::string args;
  render_value(p, n.items[1], 0, args);
  return " with arguments " + args;
}

// INST/OBJ keep their arguments after the class, not in a tuple.
std::string inst_arguments(const pickle::Program& p, const Node& n) {
  if (n.items.empty()) return {};
  std::string args = "(";
  for (size_t i = 1; i < n.items.size(); ++i) {
    if (i > 1) args += ", ";
    render_value(p, n.items[i], 1, args);
  }
  return " with arguments " + args + (n.items.size() == 2 ? ",)" : ")");
}

// Calling a torch function that torch's own weights_only loader does not allow (and that is
// not a module class a whole-model save constructs) is reaching into torch internals that run
// code: compile_file, bottleneck's run_cprofile, hub loaders, ... dangerous.
Severity call_severity(const std::string& module, const std::string& name) {
  Severity s = global_severity(module, name);
  if (s == Severity::high && (module == "torch" || starts_with(module, "torch."))) return Severity::critical;
  return s;
}

void check_call_target(const pickle::Program& p, const Node& n, const char* what, const std::string& entry, Findings& out) {
  if (n.items.empty()) return;  // a partial program (cpython_view.cpp) can end inside the opcode
  const Node& callee = p.at(n.items[0]);
  if (callee.kind == NodeKind::Global) {
    if (!is_known_global(callee.text, callee.name()))
      add_finding(out, call_severity(callee.text, callee.name()), Rule::pickle_call,
                  std::string(what) + " calls " + quoted_global(callee) + call_arguments(p, n) + " (GLOBAL at offset " +
                      std::to_string(callee.offset) + ")",
                  entry, n.offset);
  } else if (callee.kind != NodeKind::PersId) {
    add_finding(out, Severity::critical, Rule::pickle_call_computed,
                std::string(what) + " calls a computed callable (not a named global)" + call_arguments(p, n), entry, n.offset);
  }
}

bool plain_build_target(const pickle::Program& p, const Node& n) {
  if (n.kind != NodeKind::Call && n.kind != NodeKind::NewObj) return false;
  const Node& c = p.at(n.items[0]);
  return c.kind == NodeKind::Global && c.text == "collections" && c.name() == "OrderedDict";
}

// BUILD on an object of a class in the `safe` table (a torch.nn module, a numpy array, a vetted
// registry class, argparse.Namespace, ...): state a mainstream loader sets on a library class, and
// modelcdr rebuilds from data. The class is the callee, or the first argument of a reconstructor
// (numpy's _reconstruct(ndarray, ...), copyreg._reconstructor(cls, object, None)).
bool safe_build_target(const pickle::Program& p, const Node& n) {
  if ((n.kind != NodeKind::Call && n.kind != NodeKind::NewObj) || n.items.empty()) return false;
  const Node& c = p.at(n.items[0]);
  if (c.kind != NodeKind::Global || !is_safe_library_global(c.text, c.name())) return false;
  if (c.name() != "_reconstruct" && c.name() != "_reconstructor") return true;
  if (n.items.size() < 2 || p.at(n.items[1]).kind != NodeKind::Tuple || p.at(n.items[1]).items.empty()) return false;
  const Node& cls = p.at(p.at(n.items[1]).items[0]);
  return cls.kind == NodeKind::Global && is_safe_library_global(cls.text, cls.name());
}

// " of class 'module name'" for the finding, where the object's class is a named global.
std::string build_target_name(const pickle::Program& p, const Node& n) {
  if ((n.kind != NodeKind::Call && n.kind != NodeKind::NewObj && n.kind != NodeKind::Inst) || n.items.empty()) return {};
  const Node* c = &p.at(n.items[0]);
  if (c->kind == NodeKind::Global && (c->name() == "_reconstruct" || c->name() == "_reconstructor") && n.items.size() >= 2 &&
      p.at(n.items[1]).kind == NodeKind::Tuple && !p.at(n.items[1]).items.empty())
    c = &p.at(p.at(n.items[1]).items[0]);
  return c->kind == NodeKind::Global ? " of class " + quoted_global(*c) : std::string();
}

// The key strings of torch storage persistent ids ('storage', cls, KEY, location, numel...):
// decimal record names such as "8002", whose hex reading (80 02) is a protocol header. They
// name a record of the container and are never written out (writers number storages afresh),
// so they are no place to hide a nested pickle; the check skips them.
std::vector<bool> storage_key_nodes(const pickle::Program& p) {
  std::vector<bool> keys(p.nodes.size(), false);
  for (const Node& n : p.nodes) {
    if (n.kind != NodeKind::PersId || n.items.empty()) continue;
    const Node& pid = p.at(n.items[0]);
    if (pid.kind != NodeKind::Tuple || pid.items.size() < 3) continue;
    const Node& tag = p.at(pid.items[0]);
    if ((tag.kind == NodeKind::Str || tag.kind == NodeKind::Py2Str) && tag.text == "storage") keys[pid.items[2]] = true;
  }
  return keys;
}

}  // namespace

namespace {

// A candidate parses as a pickle when our machine reads it up to a STOP, whatever precedes
// the payload (any protocol, `N0` and other no-op prefixes) and whatever follows the STOP
// (pickle.loads ignores it). The limits keep the check small; a candidate that reaches one
// has parsed as thousands of valid opcodes and is taken for a pickle (fail closed).
// A fragment counts too (a payload split over values, or cut to hide it): a stream with a
// protocol 2-5 header that runs out of data, or 8+ bytes of complete opcodes lacking only STOP.
// Opcodes a stream can begin with: every other one needs a value, a mark or a memo entry
// that an empty stack lacks, so the machine would fail on it at once (not worth running).
bool can_begin_stream(unsigned char op) {
  static constexpr unsigned char ops[] = {0x80, 0x95, '(', ')', ']', '}', 0x8f, 'N', 0x88, 0x89, 'I', 'J',
                                          'K',  'M',  'L', 0x8a, 0x8b, 'F', 'G', 'S', 'T', 'U', 'V', 'X',
                                          'B',  'C',  0x8c, 0x8d, 0x8e, 0x96, 'c', 'P', 0x82, 0x83, 0x84, 0x97};
  // A table of the 256 byte values: asked for every string of every pickle (twice per layer).
  static constexpr std::array<bool, 256> table = [] {
    std::array<bool, 256> t{};
    for (unsigned char c : ops) t[c] = true;
    return t;
  }();
  return table[op];
}

// Text-line opcodes cannot complete without a newline.
bool first_op_can_complete(std::string_view d) {
  if (std::strchr("IFLSVPc", d[0]) == nullptr) return true;
  return d.find('\n') != std::string_view::npos;
}

// One of the pickle machine's budgets ran out: the candidate parsed that far as a pickle.
bool hit_pickle_limit(Rule r) {
  switch (r) {
    case Rule::pickle_limit_items: case Rule::pickle_limit_memo: case Rule::pickle_limit_memo_index: case Rule::pickle_limit_nodes: case Rule::pickle_limit_ops: case Rule::pickle_limit_stack: case Rule::pickle_limit_text:
      return true;
    default: return false;
  }
}

bool parses_as_pickle(std::string_view d) {
  if (d.size() < 2 || !can_begin_stream(static_cast<unsigned char>(d[0])) || !first_op_can_complete(d)) return false;
  pickle::DecodeOptions o;
  o.limits.max_ops = 1 << 16;
  o.limits.max_nodes = 4096;
  o.limits.max_memo_entries = 4096;
  o.limits.max_stack_depth = 1 << 16;
  o.limits.max_container_items = 1 << 16;
  Findings ignored;
  auto span = std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(d.data()), d.size());
  auto r = pickle::decode(span, o, ignored);
  if (r.ok() || hit_pickle_limit(r.error().rule)) return true;
  const Error& e = r.error();
  bool ran_out = e.rule == Rule::pickle_truncated || e.rule == Rule::pickle_frame_too_long;
  bool proto_header = static_cast<unsigned char>(d[0]) == 0x80 && d[1] >= 2 && d[1] <= 5;
  return ran_out && (proto_header || (d.size() >= 8 && e.offset == d.size()));
}

int base64_digit(char c) {
  if (c >= 'A' && c <= 'Z') return c - 'A';
  if (c >= 'a' && c <= 'z') return c - 'a' + 26;
  if (c >= '0' && c <= '9') return c - '0' + 52;
  if (c == '+' || c == '-') return 62;  // standard and URL-safe alphabets
  if (c == '/' || c == '_') return 63;
  return -1;
}

// base64 as Python's b64decode/urlsafe_b64decode accept it: whitespace ignored, padding
// optional at the end. nullopt when `s` is not base64.
std::optional<std::string> base64_decode(std::string_view s) {
  std::string out;
  uint32_t acc = 0;
  int bits = 0;
  size_t digits = 0;
  bool padded = false;
  for (char c : s) {
    if (std::isspace(static_cast<unsigned char>(c))) continue;
    if (c == '=') {
      padded = true;
      continue;
    }
    int v = base64_digit(c);
    if (v < 0 || padded) return std::nullopt;
    acc = (acc << 6) | static_cast<uint32_t>(v);
    bits += 6;
    ++digits;
    if (bits >= 8) {
      bits -= 8;
      out.push_back(static_cast<char>((acc >> bits) & 0xFF));
    }
  }
  if (digits < 4 || digits % 4 == 1) return std::nullopt;
  return out;
}

int hex_digit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// Hex as bytes.fromhex accepts it (whitespace between digits ignored). nullopt otherwise.
std::optional<std::string> hex_decode(std::string_view s) {
  std::string out;
  int high = -1;
  for (char c : s) {
    if (std::isspace(static_cast<unsigned char>(c))) continue;
    int v = hex_digit(c);
    if (v < 0) return std::nullopt;
    if (high < 0) {
      high = v;
    } else {
      out.push_back(static_cast<char>(high << 4 | v));
      high = -1;
    }
  }
  if (high >= 0 || out.size() < 2) return std::nullopt;
  return out;
}

// The first byte a decoding of `d` would give, from its first two digits; nullopt if unknown.
template <class Digit>
std::optional<unsigned char> first_decoded_byte(std::string_view d, Digit digit, int bits_per_digit) {
  int got = 0;
  uint32_t acc = 0;
  for (char c : d) {
    if (std::isspace(static_cast<unsigned char>(c))) continue;
    int v = digit(c);
    if (v < 0) return std::nullopt;
    acc = acc << bits_per_digit | static_cast<uint32_t>(v);
    if (++got == 2) return static_cast<unsigned char>(acc >> (2 * bits_per_digit - 8));
  }
  return std::nullopt;
}

// Whether a decoded layer starting with `b` can hold a pickle: it begins a stream, or it is
// a digit of another encoding layer (hex digits are base64 digits too).
bool worth_decoding(std::optional<unsigned char> b, int layers_left) {
  return b && (can_begin_stream(*b) || (layers_left > 0 && base64_digit(static_cast<char>(*b)) >= 0));
}

// The value itself, or its base64 or hex decoding, up to `layers` encodings deep: the layer that
// parses as a pickle, or nullopt. Most text is ruled out by its first bytes before anything is
// decoded or run.
std::optional<std::string> pickle_layer(std::string_view d, int layers) {
  if (parses_as_pickle(d)) return std::string(d);
  if (layers == 0) return std::nullopt;
  // Under 11 characters no decoding reaches kMinDecoded (below) bytes: base64 gives at most
  // 6 bits a character, hex 4. Most strings of a model (keys, names) end here.
  if (d.size() < 11) return std::nullopt;
  if (!worth_decoding(first_decoded_byte(d, base64_digit, 6), layers - 1) &&
      !worth_decoding(first_decoded_byte(d, hex_digit, 4), layers - 1))
    return std::nullopt;
  // A decoding shorter than 8 bytes is not taken (the fragment floor): short words read as
  // base64 by chance ("groups" is EXT1 186, STOP), and so few bytes import nothing but through
  // an EXT code, which a stock interpreter's empty extension registry refuses.
  constexpr size_t kMinDecoded = 8;
  if (auto b = base64_decode(d); b && b->size() >= kMinDecoded)
    if (auto inner = pickle_layer(*b, layers - 1)) return inner;
  if (auto h = hex_decode(d); h && h->size() >= kMinDecoded)
    if (auto inner = pickle_layer(*h, layers - 1)) return inner;
  return std::nullopt;
}

// A str whose code points are all <= 0xFF, as latin-1 bytes (how protocol 2 spells bytes, and
// how a str is usually turned back into bytes); nullopt when that differs from its UTF-8 text
// (pure ASCII) or is not possible.
std::optional<std::string> latin1_bytes(std::string_view utf8) {
  if (std::all_of(utf8.begin(), utf8.end(), [](char c) { return static_cast<unsigned char>(c) < 0x80; }))
    return std::nullopt;
  std::string bytes;
  for (size_t i = 0; i < utf8.size(); ++i) {
    unsigned char c = static_cast<unsigned char>(utf8[i]);
    if (c < 0x80) {
      bytes.push_back(static_cast<char>(c));
    } else if ((c == 0xC2 || c == 0xC3) && i + 1 < utf8.size()) {
      bytes.push_back(static_cast<char>(((c & 0x03) << 6) | (static_cast<unsigned char>(utf8[++i]) & 0x3F)));
    } else {
      return std::nullopt;
    }
  }
  return bytes;
}

// The bytes of the pickle a str/bytes value holds (raw, latin-1, base64/hex), or nullopt.
std::optional<std::string> embedded_pickle(std::string_view d) {
  if (auto p = pickle_layer(d, 3)) return p;
  if (auto latin1 = latin1_bytes(d)) return pickle_layer(*latin1, 3);
  return std::nullopt;
}

// How many nested-pickle grades are running on this thread (a nested pickle can hold another):
// bounded like the rebuild (cdr/nested_pickle.hpp) without threading a counter through.
thread_local uint32_t grading = 0;

// The most severe finding, for the nested pickle's message.
const Finding* worst_finding(const Findings& fs) {
  const Finding* worst = nullptr;
  for (const Finding& f : fs)
    if (!worst || verdict_of(f.rule, f.severity) > verdict_of(worst->rule, worst->severity)) worst = &f;
  return worst;
}

// A nested pickle is graded by a scan of the inner stream under the file's own limits: the
// finding is dangerous (critical) only when the inner pickle is, unknown (high) when the inner
// pickle holds something unproven, safe (low) otherwise: disarm rebuilds or drops it.
void grade_nested_pickle(const Node& n, const std::string& inner, const std::string& entry, Findings& out) {
  const std::string what = "a string/bytes value holds a serialized pickle (" + std::to_string(n.text.size()) + " bytes)";
  if (grading >= kMaxNestedPickleLevel) {
    add_finding(out, Severity::high, Rule::pickle_nested_pickle,
                what + ", nested more than " + std::to_string(kMaxNestedPickleLevel) + " levels deep: not graded", entry,
                n.offset);
    return;
  }
  ++grading;
  auto bytes = std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(inner.data()), inner.size());
  pickle::DecodeOptions d;
  d.entry = entry;
  d.base_offset = n.offset;
  d.limits.max_nodes = std::min<uint64_t>(d.limits.max_nodes, 2'000'000 + bytes.size() / 4);
  pickle::Program partial;
  d.partial = &partial;
  Findings found;
  auto program = pickle::decode(bytes, d, found);
  // A stream that breaks off (a fragment, or text whose base64 reading happens to begin like a
  // pickle: "groups") is graded by what an unpickler imports and calls before the break; the
  // opcode-level notes of the broken tail say nothing about what it would run.
  if (!program.ok()) found.clear();
  scan_program(program.ok() ? *program : partial, entry, found);
  --grading;
  const Verdict v = file_verdict(found);
  std::string detail;
  if (!program.ok())
    detail = "it breaks off at inner offset " + std::to_string(program.error().offset - n.offset) + " (" +
             program.error().message + ")" + (found.empty() ? ", before it imports or calls anything" : "");
  const Finding* worst = worst_finding(found);
  if (worst && verdict_of(worst->rule, worst->severity) >= std::max(v, Verdict::unknown))
    detail += (detail.empty() ? "" : "; ") + worst->message;
  const Severity s = v == Verdict::dangerous ? Severity::critical : v == Verdict::unknown ? Severity::high : Severity::low;
  add_finding(out, s, Rule::pickle_nested_pickle,
              what + "; the inner pickle's verdict: " + verdict_name(v) + (detail.empty() ? "" : " (" + detail + ")"),
              entry, n.offset);
}


}  // namespace

bool looks_like_embedded_pickle(std::string_view d) { return embedded_pickle(d).has_value(); }

// One finding per thing: a global that a REDUCE/NEWOBJ calls is reported once, as part of the
// call's finding (callable, arguments, where the GLOBAL was); only a global that is never
// called gets a finding of its own.
void scan_program(const pickle::Program& p, const std::string& entry, Findings& out) {
  const std::vector<bool> storage_keys = storage_key_nodes(p);
  std::vector<bool> called(p.nodes.size(), false);
  for (const Node& n : p.nodes)
    if ((n.kind == NodeKind::Call || n.kind == NodeKind::NewObj) && !n.items.empty() && n.items[0] < called.size())
      called[n.items[0]] = true;
  for (size_t id = 0; id < p.nodes.size(); ++id) {
    const Node& n = p.nodes[id];
    switch (n.kind) {
      case NodeKind::Global:
        if (!called[id] && !is_known_global(n.text, n.name()))
          add_finding(out, is_lightning_callback_class(n.text, n.name()) ? Severity::low : global_severity(n.text, n.name()),
                      Rule::pickle_global_not_allowed,
                      "GLOBAL " + quoted_global(n) + " is not allowed", entry, n.offset);
        break;
      case NodeKind::Call: check_call_target(p, n, "REDUCE", entry, out); break;
      case NodeKind::NewObj: check_call_target(p, n, "NEWOBJ", entry, out); break;
      case NodeKind::Inst:
        add_finding(out, Severity::critical, Rule::pickle_inst,
                    "INST/OBJ instantiates " + (n.items.empty() ? std::string("?") : quoted_global(p.at(n.items[0]))) +
                        inst_arguments(p, n),
                    entry, n.offset);
        break;
      case NodeKind::Str:
      case NodeKind::Py2Str:
      case NodeKind::Bytes:
      case NodeKind::ByteArray:
        if (storage_keys[id]) break;
        if (auto inner = embedded_pickle(n.text)) grade_nested_pickle(n, *inner, entry, out);
        break;
      default: break;
    }
    if (!n.build_states().empty() && !plain_build_target(p, n) && n.kind != NodeKind::NewObj)
      add_finding(out, safe_build_target(p, n) ? Severity::low : Severity::high, Rule::pickle_build_on_object,
                  "BUILD applies state to a non-plain object" + build_target_name(p, n), entry, n.offset);
  }
}

void fold_call_removals(Findings& findings) {
  std::set<std::pair<std::string, uint64_t>> calls;
  for (const Finding& f : findings)
    if (f.rule == Rule::pickle_call || f.rule == Rule::pickle_call_computed) calls.insert({f.entry, f.offset});
  if (calls.empty()) return;
  // The call line takes the removal's severity: a registry call softened to info by the joblib
  // reader (soften_vetted) that the lifter still dropped (bad arguments) is a removal, not a rebuild.
  std::map<std::pair<std::string, uint64_t>, Severity> removed;
  std::erase_if(findings, [&](const Finding& f) {
    bool fold = f.rule == Rule::cdr_dropped && calls.count({f.entry, f.offset});
    if (fold) {
      auto [it, fresh] = removed.emplace(std::pair{f.entry, f.offset}, f.severity);
      if (!fresh) it->second = std::max(it->second, f.severity);
    }
    return fold;
  });
  static constexpr std::string_view kVetted = " (vetted: rebuilt from data by the class registry)";
  for (Finding& f : findings) {
    if (f.rule != Rule::pickle_call && f.rule != Rule::pickle_call_computed) continue;
    auto it = removed.find({f.entry, f.offset});
    if (it == removed.end()) continue;
    if (f.severity < it->second) {
      f.severity = it->second;
      if (auto at = f.message.find(kVetted); at != std::string::npos) f.message.erase(at, kVetted.size());
    }
    f.message += "; removed by disarm";
  }
}

}  // namespace modelcdr::cdr
