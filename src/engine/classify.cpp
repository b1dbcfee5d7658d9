#include "engine/classify.hpp"

#include <algorithm>
#include <cctype>
#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <optional>
#include <string_view>
#include <vector>

#include "formats/registry.hpp"
#include "io/bounded_json.hpp"
#include "io/byte_cursor.hpp"
#include "io/mapped_file.hpp"
#include "pickle/opcodes.hpp"

namespace modelcdr::engine {

namespace {

using container::Format;
using pickle::Op;

constexpr uint64_t kMaxText = 64ull << 20;  // larger "text" is not copied: nobody ships 64 MiB configs
constexpr uint32_t kMaxJsonDepth = 64;            // configs and indexes nest under 10 levels
constexpr uint64_t kMaxJsonElements = 4u << 20;

bool has_magic(std::span<const uint8_t> b, size_t at, std::string_view magic) {
  return b.size() >= at + magic.size() && std::memcmp(b.data() + at, magic.data(), magic.size()) == 0;
}

std::string lower_name(const std::string& path) {
  std::string n = std::filesystem::path(path).filename().string();
  std::transform(n.begin(), n.end(), n.begin(), [](unsigned char c) { return std::tolower(c); });
  return n;
}

bool ends_with(const std::string& s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

bool ends_with_any(const std::string& s, std::initializer_list<std::string_view> suffixes) {
  return std::any_of(suffixes.begin(), suffixes.end(), [&](std::string_view x) { return ends_with(s, x); });
}

// Source code and scripts: text, but text that something executes when it is "loaded"
// (trust_remote_code, a shell, a notebook), so never inert.
bool is_code(const std::string& name, std::span<const uint8_t> b) {
  if (has_magic(b, 0, "#!")) return true;
  static const std::initializer_list<std::string_view> exts = {
      ".py", ".pyw", ".pyi", ".pyx", ".pxd", ".ipynb", ".sh", ".bash", ".zsh", ".fish", ".ksh", ".csh", ".ps1",
      ".psm1", ".bat", ".cmd", ".vbs", ".js", ".mjs", ".cjs", ".ts", ".rb", ".pl", ".pm", ".php", ".lua", ".r",
      ".jl", ".java", ".scala", ".kt", ".go", ".rs", ".c", ".cc", ".cpp", ".cxx", ".h", ".hpp", ".cu", ".swift",
      ".m", ".mk", ".cmake", ".sql", ".awk", ".tcl", ".el", ".vim"};
  if (ends_with_any(name, exts)) return true;
  return name == "makefile" || name == "dockerfile" || name == "rakefile" || name == "gemfile" || name == "justfile";
}

// Model formats that modelcdr does not rebuild yet: reported, never copied.
std::optional<std::string> unsupported_by_magic(std::span<const uint8_t> b) {
  for (size_t at : {0, 512, 1024, 2048})  // HDF5 allows a user block of 512 * 2^n bytes before its signature
    if (has_magic(b, at, "\x89HDF\r\n\x1a\n")) return "HDF5 (Keras .h5)";
  if (has_magic(b, 0, "GGUF")) return "GGUF";
  if (has_magic(b, 4, "TFL3")) return "TensorFlow Lite";
  return std::nullopt;
}

std::optional<std::string> unsupported_by_name(const std::string& name) {
  if (ends_with_any(name, {".onnx", ".ort"})) return "ONNX";
  if (ends_with_any(name, {".pb", ".tflite", ".savedmodel"}) || name.rfind("variables.data-", 0) == 0 ||
      ends_with(name, ".index"))
    return "TensorFlow";
  if (ends_with_any(name, {".h5", ".hdf5", ".keras"})) return "Keras";
  if (ends_with_any(name, {".gguf", ".ggml"})) return "GGUF/GGML";
  if (ends_with(name, ".msgpack")) return "Flax msgpack";
  if (ends_with_any(name, {".mlmodel", ".pte", ".engine", ".plan"})) return "other model format";
  return std::nullopt;
}

bool inert_binary(std::span<const uint8_t> b) {
  return has_magic(b, 0, "\x89PNG\r\n\x1a\n") || has_magic(b, 0, "\xFF\xD8\xFF") || has_magic(b, 0, "GIF87a") ||
         has_magic(b, 0, "GIF89a") || (has_magic(b, 0, "RIFF") && has_magic(b, 8, "WEBP"));
}

// A model of CPython's unpickler stack: the number of values above each MARK. Every branch
// that answers "Python fails here" must be one where CPython raises at or before this point;
// wherever Python would go on, so does the model (it ignores types and memo contents).
class UnpicklerModel {
 public:
  explicit UnpicklerModel(std::span<const uint8_t> b) : b_(b) {}

  bool may_run() {
    while (pos_ < b_.size()) {
      if (frames_.size() > kMaxMarks) return true;  // too deep to model: assume the worst
      auto r = step(b_[pos_++]);
      if (r) return *r;
    }
    return false;  // EOFError before anything ran
  }

 private:
  static constexpr size_t kMaxMarks = 1 << 20;

  // nullopt: keep going; true: Python reaches code or a complete value; false: Python raises.
  std::optional<bool> step(uint8_t op) {
    switch (static_cast<Op>(op)) {
      case Op::GLOBAL:
      case Op::INST: {  // the import happens before anything is popped
        std::string_view module = line();
        line();
        return importable(module) ? std::optional<bool>(true) : std::optional<bool>(false);
      }
      case Op::STACK_GLOBAL:
      case Op::REDUCE:
      case Op::BUILD:
      case Op::NEWOBJ: return need(2) ? std::optional<bool>(true) : false;
      case Op::NEWOBJ_EX: return need(3) ? std::optional<bool>(true) : false;
      case Op::OBJ: return frames_.size() > 1 && frames_.back() >= 1 ? std::optional<bool>(true) : false;
      case Op::EXT1: return skip(1) ? std::optional<bool>(true) : false;
      case Op::EXT2: return skip(2) ? std::optional<bool>(true) : false;
      case Op::EXT4: return skip(4) ? std::optional<bool>(true) : false;
      // Plain unpicklers raise here; torch's persistent_load only turns the id into a storage
      // (data), so the model goes on as if a value were pushed.
      case Op::PERSID: line(); return push();
      case Op::BINPERSID: return need(1) ? std::nullopt : std::optional<bool>(false);
      case Op::STOP: return need(1);  // a complete pickle: a model file, whatever it holds

      case Op::MARK: frames_.push_back(0); return std::nullopt;
      case Op::POP:
        if (frames_.back() > 0) --frames_.back();
        else if (!pop_mark()) return false;
        return std::nullopt;
      case Op::POP_MARK: return pop_mark() ? std::nullopt : std::optional<bool>(false);
      case Op::DUP: return need(1) ? push() : false;
      case Op::FLOAT: case Op::INT: case Op::LONG: case Op::STRING: case Op::UNICODE: case Op::GET:
        line();
        return push();
      case Op::PUT: line(); return need(1) ? std::nullopt : std::optional<bool>(false);
      case Op::BINPUT: return skip(1) && need(1) ? std::nullopt : std::optional<bool>(false);
      case Op::LONG_BINPUT: return skip(4) && need(1) ? std::nullopt : std::optional<bool>(false);
      case Op::MEMOIZE: return need(1) ? std::nullopt : std::optional<bool>(false);
      case Op::BININT1: case Op::BINGET: return skip(1) ? push() : false;
      case Op::BININT2: return skip(2) ? push() : false;
      case Op::BININT: case Op::LONG_BINGET: return skip(4) ? push() : false;
      case Op::BINFLOAT: return skip(8) ? push() : false;
      case Op::SHORT_BINSTRING: case Op::SHORT_BINBYTES: case Op::SHORT_BINUNICODE: case Op::LONG1:
        return counted(1) ? push() : false;
      case Op::BINSTRING: case Op::BINUNICODE: case Op::BINBYTES: case Op::LONG4:
        return counted(4) ? push() : false;
      case Op::BINUNICODE8: case Op::BINBYTES8: case Op::BYTEARRAY8: return counted(8) ? push() : false;
      case Op::NONE: case Op::NEWTRUE: case Op::NEWFALSE: case Op::EMPTY_DICT: case Op::EMPTY_LIST:
      case Op::EMPTY_TUPLE: case Op::EMPTY_SET: case Op::NEXT_BUFFER:
        return push();
      case Op::READONLY_BUFFER: return need(1) ? std::nullopt : std::optional<bool>(false);
      case Op::APPEND: return need(2) ? pop(1) : false;
      case Op::SETITEM: return need(3) ? pop(2) : false;
      case Op::APPENDS: case Op::SETITEMS: case Op::ADDITEMS:
        return pop_mark() && need(1) ? std::nullopt : std::optional<bool>(false);
      case Op::DICT: case Op::LIST: case Op::TUPLE: case Op::FROZENSET:
        return pop_mark() ? push() : false;
      case Op::TUPLE1: return need(1) ? std::nullopt : std::optional<bool>(false);
      case Op::TUPLE2: return need(2) ? pop(1) : false;
      case Op::TUPLE3: return need(3) ? pop(2) : false;
      case Op::PROTO: return pos_ < b_.size() && b_[pos_++] <= pickle::kHighestProtocol ? std::nullopt : std::optional<bool>(false);
      case Op::FRAME: return skip(8) ? std::nullopt : std::optional<bool>(false);
    }
    return false;  // not an opcode: UnpicklingError
  }

  // A name __import__ could find: dotted identifiers (non-ASCII letters allowed, to be safe).
  // "import os" (a line of a .py file read as INST) or "os\r" (CRLF) can never be imported.
  static bool importable(std::string_view m) {
    if (m.empty()) return false;
    bool start = true;
    for (unsigned char c : m) {
      if (c == '.') {
        if (start) return false;
        start = true;
        continue;
      }
      bool letter = std::isalpha(c) || c == '_' || c >= 0x80;
      if (!letter && (start || !std::isdigit(c))) return false;
      start = false;
    }
    return !start;
  }

  // readline(): up to and including '\n', or the rest of the file (Python uses a partial
  // last line too). Returns the line without its last byte, as the unpickler does.
  std::string_view line() {
    const uint8_t* start = b_.data() + pos_;
    const void* nl = std::memchr(start, '\n', b_.size() - pos_);
    size_t len = nl ? static_cast<const uint8_t*>(nl) - start + 1 : b_.size() - pos_;
    pos_ += len;
    return std::string_view(reinterpret_cast<const char*>(start), len ? len - 1 : 0);
  }
  bool skip(size_t n) {
    if (b_.size() - pos_ < n) return false;
    pos_ += n;
    return true;
  }
  bool counted(size_t width) {
    if (b_.size() - pos_ < width) return false;
    uint64_t n = 0;
    for (size_t i = 0; i < width; ++i) n |= static_cast<uint64_t>(b_[pos_ + i]) << (8 * i);
    pos_ += width;
    return skip(n > b_.size() ? b_.size() + 1 : static_cast<size_t>(n));  // too long: truncated (Python raises)
  }
  bool need(uint64_t n) const { return frames_.back() >= n; }
  std::optional<bool> push() {
    ++frames_.back();
    return std::nullopt;
  }
  std::optional<bool> pop(uint64_t n) {
    frames_.back() -= n;
    return std::nullopt;
  }
  bool pop_mark() {
    if (frames_.size() < 2) return false;
    frames_.pop_back();
    return true;
  }

  std::span<const uint8_t> b_;
  size_t pos_ = 0;
  std::vector<uint64_t> frames_{0};  // values above each MARK; [0]: below the first
};

Classification text_kind(const std::string& name, std::span<const uint8_t> b) {
  if (b.size() > kMaxText) return {Kind::unknown_binary, "larger than 64 MiB: not checked as text"};
  if (!is_utf8_text(b)) return {Kind::unknown_binary, "unknown binary content"};
  if (is_code(name, b)) return {Kind::code, "source code or a script"};
  if (ends_with(name, ".json")) {
    // One bounded SAX pass, no DOM: nesting, size and duplicate keys checked (a 64 MiB nested
    // config took 2.5 GB as a DOM and was copied on for other parsers to choke on).
    std::string_view text(reinterpret_cast<const char*>(b.data()), b.size());
    const io::JsonLimits limits{kMaxJsonDepth, kMaxJsonElements};
    io::JsonShape shape = io::inspect_json(text, limits);
    if (auto e = io::limit_error(shape, limits))
      return {Kind::unknown_binary, "a .json file past the limits: " + e->message + " [" + std::string(rule_id(e->rule)) + "]"};
    if (!shape.valid) return {Kind::unknown_binary, "a .json file that is not valid JSON"};
    return {Kind::json, "JSON"};
  }
  return {Kind::text, "text"};
}

}  // namespace

const char* kind_name(Kind k) {
  switch (k) {
    case Kind::model: return "model";
    case Kind::unsupported_model: return "unsupported-model";
    case Kind::text: return "text";
    case Kind::json: return "json";
    case Kind::code: return "code";
    case Kind::inert_binary: return "inert-binary";
    case Kind::unknown_binary: return "unknown-binary";
    case Kind::unreadable: return "unreadable";
  }
  return "unknown-binary";
}

bool may_unpickle(std::span<const uint8_t> bytes) { return UnpicklerModel(bytes).may_run(); }

bool is_utf8_text(std::span<const uint8_t> bytes) {
  io::ByteCursor c(bytes);
  while (!c.at_end()) {
    uint8_t b = *c.u8();
    if (b == 0) return false;
    if (b < 0x80) continue;
    int n = (b & 0xE0) == 0xC0 ? 1 : (b & 0xF0) == 0xE0 ? 2 : (b & 0xF8) == 0xF0 ? 3 : -1;
    if (n < 0) return false;
    uint32_t cp = b & (0x3F >> n);
    for (int i = 0; i < n; ++i) {
      auto x = c.u8();
      if (!x.ok() || (*x & 0xC0) != 0x80) return false;
      cp = (cp << 6) | (*x & 0x3F);
    }
    if ((n == 1 && cp < 0x80) || (n == 2 && cp < 0x800) || (n == 3 && cp < 0x10000) || cp > 0x10FFFF ||
        (cp >= 0xD800 && cp <= 0xDFFF))
      return false;
  }
  return true;
}

Classification classify(const std::string& path) {
  auto file = io::MappedFile::open(path);
  if (!file.ok()) return {Kind::unreadable, file.error().message};
  return classify_bytes(std::filesystem::path(path).filename().string(), file->bytes());
}

Classification classify_bytes(const std::string& file_name, std::span<const uint8_t> b) {
  const std::string name = lower_name(file_name);
  if (auto what = unsupported_by_magic(b)) return {Kind::unsupported_model, *what};
  Format f = formats::sniff(b);
  switch (f) {
    case Format::empty: return {Kind::text, "empty file"};
    case Format::unknown: break;
    case Format::torch_zip:
      if (ends_with(name, ".keras")) return {Kind::unsupported_model, "Keras (.keras zip)"};
      return {Kind::model, formats::format_name(f)};
    case Format::pickle:
      // Protocol 0/1 pickles start with an ordinary byte (a letter, '(' ...): such a file is a
      // pickle when the unpickler could act on it; otherwise it fails on its first bytes.
      if (b[0] == 0x80 || may_unpickle(b)) return {Kind::model, "pickle"};
      break;
    default: return {Kind::model, formats::format_name(f)};  // every codec, tar, 7z, npy, ...
  }
  // Not a pickle by its first byte, nor a zip, tar or codec stream; an unpickler may still act
  // on it (text starting with an opcode letter, or a GIF: 'G' is BINFLOAT, and the opcode after
  // its 8-byte argument is the image height's high byte). Then it is a model file.
  if (may_unpickle(b)) return {Kind::model, "pickle"};
  if (inert_binary(b)) return {Kind::inert_binary, "image"};
  auto text = text_kind(name, b);
  if (text.kind == Kind::unknown_binary)
    if (auto what = unsupported_by_name(name)) return {Kind::unsupported_model, *what};
  return text;
}

}  // namespace modelcdr::engine
