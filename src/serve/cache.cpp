#include "serve/cache.hpp"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <span>
#include <vector>

#include "engine/classify.hpp"
#include "engine/output_names.hpp"
#include "io/atomic_output.hpp"
#include "modelcdr/api.hpp"
#include "mtd/digest.hpp"
#include "modelcdr/render.hpp"

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace modelcdr::serve {

namespace {

constexpr uint64_t kMaxInertBytes = 256ull << 20;  // other files are read whole to be classified

std::string random_suffix() {
  std::random_device rd;
  return std::to_string(::getpid()) + "." + std::to_string(rd()) + std::to_string(rd());
}

Status write_file(const std::string& path, std::string_view bytes) {
  if (forced_write_failure()) return make_error(Rule::io_write, "cannot write " + path + ": No space left on device (forced)");
  auto out = io::AtomicOutput::create(path);
  if (!out.ok()) return out.error();
  MCDR_TRY(out->write(bytes));
  return out->commit();
}

json meta_json(const Entry& e) {
  return {{"served", e.served}, {"kind", e.kind},     {"verdict", e.verdict}, {"format", e.format},
          {"size", e.size},     {"sha256", e.sha256}, {"input_sha256", e.input_sha256},
          {"code", e.code},     {"message", e.message}, {"removed", e.removed}};
}

std::string one_line(std::string s) {
  for (char& c : s)
    if (c == '\n' || c == '\r') c = ' ';
  return s;
}

// Fills `e` as a refusal (never served) with the reason a client will see.
void refuse(Entry& e, FileReport& r, Rule code, std::string message) {
  e.served = false;
  e.verdict = "refused";
  e.code = std::string(rule_id(code));
  e.message = one_line(std::move(message));
  r.status = FileStatus::rejected;
  if (!r.error) r.error = make_error(code, e.message);
}

Status write_inert(const std::string& tmp, std::string_view bytes, Entry& e) {
  MCDR_TRY(write_file(tmp + "/data", bytes));
  e.served = true;
  e.kind = "inert";
  e.verdict = "inert";
  e.size = bytes.size();
  auto d = mtd::sha256(std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size()));
  e.sha256 = hex(d.data(), d.size());
  return ok_status();
}

// A non-model file under a conversion: a shard index is rewritten for the converted shard
// names (engine/output_names.hpp, as `disarm DIR --to` does), and a file whose name asks for a
// model format but holds no model is refused. Returns false for the other files, which are
// served as they are (the inert rule decides).
Result<bool> build_converted_other(const std::string& tmp, const std::vector<uint8_t>& bytes,
                                   const engine::Classification& c, const BuildOptions& o, Entry& e, FileReport& r) {
  using engine::Kind;
  if (c.kind == Kind::json && engine::is_shard_index(o.name)) {
    auto text = engine::rewrite_index(bytes, o.to);
    if (!text.ok()) {
      refuse(e, r, text.error().rule, o.name + ": " + text.error().message);
      return true;
    }
    MCDR_TRY(write_inert(tmp, *text, e));
    e.verdict = "rewritten";
    r.status = FileStatus::skipped;
    r.note = std::string("shard index checked and rewritten for the shards served as ") + engine::format_flag(*o.to);
    r.output = o.shown;
    return true;
  }
  if (engine::format_for_name(o.name)) {
    refuse(e, r, Rule::convert_nothing_to_write,
           o.name + ": not a model file (" + c.detail + "), so there is nothing to serve as " + engine::format_flag(*o.to));
    return true;
  }
  return false;
}

// A non-model file: served only when its bytes, as read once, are proven inert (the
// `disarm --copy-other` rule, engine/classify.hpp); the bytes classified are the bytes served.
Status build_other(const std::string& tmp, const Input& in, const BuildOptions& o, Entry& e, FileReport& r) {
  if (in.size > kMaxInertBytes) {
    refuse(e, r, Rule::serve_too_large, o.name + " is not a model file and larger than " + std::to_string(kMaxInertBytes) +
                                        " bytes: not served");
    return ok_status();
  }
  std::vector<uint8_t> bytes(in.size);
  for (uint64_t at = 0; at < in.size;) {
    ssize_t n = ::pread(in.fd, bytes.data() + at, in.size - at, off_t(at));
    if (n <= 0) return make_error(Rule::io_read, "cannot read " + o.shown);
    at += uint64_t(n);
  }
  auto c = engine::classify_bytes(o.name, bytes);
  e.format = engine::kind_name(c.kind);
  r.format = e.format;
  if (o.to) {
    MCDR_ASSIGN(bool handled, build_converted_other(tmp, bytes, c, o, e, r));
    if (handled) return ok_status();
  }
  using engine::Kind;
  switch (c.kind) {
    case Kind::text:
    case Kind::json:
    case Kind::inert_binary:
      break;
    case Kind::code:
      refuse(e, r, Rule::copy_not_inert, o.name + ": source code or a script is not inert: not served");
      return ok_status();
    case Kind::unsupported_model:
      refuse(e, r, Rule::format_unsupported, o.name + ": " + c.detail + " model: modelcdr does not rebuild this format, so it is not served");
      return ok_status();
    case Kind::model:  // cannot happen (the caller sent models to disarm); fail closed anyway
    default:
      refuse(e, r, Rule::copy_not_inert, o.name + ": not served: " + c.detail);
      return ok_status();
  }
  MCDR_TRY(write_inert(tmp, std::string_view(reinterpret_cast<const char*>(bytes.data()), bytes.size()), e));
  r.status = FileStatus::skipped;
  r.note = "not a model file: proven inert (" + c.detail + "), served as is";
  r.output = o.shown;
  return ok_status();
}

// A model file: served only as modelcdr's own rebuild, in the format its name asks for.
Status build_model(const std::string& tmp, const Input& in, const BuildOptions& o, Entry& e, FileReport& r) {
  DisarmOptions d;
  d.output_format = o.to.value_or(engine::format_for_name(o.name).value_or(OutputFormat::pt));
  std::string out = tmp + "/data";
  r = disarm_file(in.path, out, d);
  r.input = o.shown;
  e.format = r.format;
  if (r.status == FileStatus::rejected || r.status == FileStatus::error) {
    const Error err = r.error.value_or(make_error(Rule::cdr_rejected, "rejected"));
    // Failures of this machine, not verdicts on the input, are never cached.
    const std::string_view id = rule_id(err.rule);
    if (id.starts_with("io.") || id.starts_with("resource.")) return err;
    refuse(e, r, err.rule, o.name + ": " + err.describe());
    return ok_status();
  }
  if (o.to) {
    // A conversion the client asked for must not lose data: what the target format cannot
    // hold (bytes, dtypes it lacks, ...) refuses the conversion; removals of dangerous content
    // (cdr.*) are what every rebuild does and stay served.
    for (const auto& f : r.removed)
      if (f.rule == Rule::convert_dropped) {
        refuse(e, r, Rule::convert_dropped,
               o.name + ": cannot be served as " + engine::format_flag(*o.to) + " without losing data: " + f.message);
        return ok_status();
      }
  }
  if (forced_write_failure()) return make_error(Rule::io_write, "cannot write the rebuild: No space left on device (forced)");
  struct stat st{};
  int fd = ::open(out.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0 || ::fstat(fd, &st) != 0) {
    if (fd >= 0) ::close(fd);
    return make_error(Rule::io_read, "cannot read the rebuild");
  }
  // The bytes are final: a reader streaming them may finish (what follows only stores them).
  if (o.on_data_final && in.unchanged()) o.on_data_final(uint64_t(st.st_size));
  auto h = hash_fd(fd, uint64_t(st.st_size));
  ::close(fd);
  if (!h.ok()) return h.error();
  e.served = true;
  e.kind = "rebuild";
  e.verdict = r.status == FileStatus::removed ? "removed" : "clean";
  e.size = uint64_t(st.st_size);
  e.sha256 = *h;
  e.removed = r.removed.size();
  r.output = o.shown;
  if (!r.architecture.empty()) r.architecture = "(not served)";
  return ok_status();
}

}  // namespace

KeyLock::KeyLock(const std::string& path) : fd_(::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644)) {
  if (fd_ >= 0 && ::flock(fd_, LOCK_EX) != 0) {
    ::close(fd_);
    fd_ = -1;
  }
}

KeyLock::~KeyLock() {
  if (fd_ >= 0) ::close(fd_);  // releases the lock
}

bool forced_write_failure() {
  const char* v = std::getenv("MODELCDR_SERVE_FAIL_WRITES");
  return v && std::string(v) == "1";
}

Status Cache::init() {
  std::error_code ec;
  for (const char* sub : {"objects", "tmp", "locks"}) {
    fs::create_directories(fs::path(dir_) / sub, ec);
    if (ec) return make_error(Rule::io_write, "cannot create the cache folder " + dir_ + ": " + ec.message());
  }
  return ok_status();
}

std::string Cache::key_for(const std::string& input_sha256, const BuildOptions& o) {
  // What the bytes are and everything that changes what is built from them: the modelcdr
  // version and the output format (by the name's extension).
  auto fmt = engine::format_for_name(o.name);
  std::string options = std::string("modelcdr-serve/1 ") + kVersion + " format=" +
                        (fmt ? engine::format_flag(*fmt) : std::string("default")) + " name=" + o.name;
  if (o.to) options += std::string(" to=") + engine::format_flag(*o.to);  // a conversion is another entry
  return sha256_hex(options + "\n" + input_sha256);
}

std::optional<Entry> Cache::find(const std::string& key) const {
  std::string dir = dir_ + "/objects/" + key;
  std::ifstream f(dir + "/meta.json");
  if (!f) return std::nullopt;
  json m = json::parse(f, nullptr, false);
  if (m.is_discarded() || !m.is_object()) return std::nullopt;
  Entry e;
  e.key = key;
  e.dir = dir;
  e.served = m.value("served", false);
  e.kind = m.value("kind", "");
  e.verdict = m.value("verdict", "");
  e.format = m.value("format", "");
  e.size = m.value("size", uint64_t(0));
  e.sha256 = m.value("sha256", "");
  e.input_sha256 = m.value("input_sha256", "");
  e.code = m.value("code", "");
  e.message = m.value("message", "");
  e.removed = m.value("removed", uint64_t(0));
  return e;
}

Result<Entry> Cache::get_or_build(const std::string& key, const Input& in, const BuildOptions& o, bool* built) {
  if (auto e = find(key)) return *e;
  KeyLock lock(dir_ + "/locks/" + key + ".lock");
  if (!lock.ok()) return make_error(Rule::io_write, "cannot lock the cache entry");
  if (auto e = find(key)) return *e;  // built by another request while we waited
  auto e = build(key, in, o);
  if (built) *built = e.ok();
  return e;
}

Result<Entry> Cache::build(const std::string& key, const Input& in, const BuildOptions& o) {
  std::string tmp = dir_ + "/tmp/" + key + "." + random_suffix();
  std::error_code ec;
  if (!fs::create_directory(tmp, ec)) return make_error(Rule::io_write, "cannot create a cache entry: " + ec.message());
  struct Cleanup {
    std::string p;
    ~Cleanup() {
      std::error_code ec;
      if (!p.empty()) fs::remove_all(p, ec);
    }
  } cleanup{tmp};
  Entry e;
  e.key = key;
  e.input_sha256 = in.sha256;
  FileReport r;
  r.input = o.shown;
  auto cls = engine::classify(in.path);
  // Only a rebuild is streamed to a first GET (stream.cpp): an inert file is served whole from
  // its entry, with its size, ETag and verdict (streamed, it ended as a broken download whenever
  // its build outlasted the first poll).
  if (o.on_build_dir && cls.kind == engine::Kind::model) o.on_build_dir(tmp);
  Status s = cls.kind == engine::Kind::model ? build_model(tmp, in, o, e, r) : build_other(tmp, in, o, e, r);
  if (!s.ok()) return s.error();
  if (!in.unchanged()) return make_error(Rule::io_input_changed, o.shown + " changed while it was read; try again");
  MCDR_TRY(write_file(tmp + "/report.json", report::disarm_json({r})));
  MCDR_TRY(write_file(tmp + "/meta.json", meta_json(e).dump(2)));
  std::string final_dir = dir_ + "/objects/" + key;
  if (::rename(tmp.c_str(), final_dir.c_str()) != 0) {
    // Another instance committed the same key first (it holds the same bytes): use theirs.
    if (auto other = find(key)) return *other;
    return make_error(Rule::io_write, "cannot commit the cache entry");
  }
  cleanup.p.clear();
  e.dir = final_dir;
  return e;
}

Cache::Stats Cache::stats() const {
  Stats s;
  std::error_code ec;
  for (auto& d : fs::directory_iterator(dir_ + "/objects", ec)) {
    auto e = find(d.path().filename().string());
    if (!e) continue;
    ++s.entries;
    s.bytes += e->size;
    s.refused += !e->served;
  }
  return s;
}

}  // namespace modelcdr::serve
