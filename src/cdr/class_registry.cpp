#include "cdr/class_registry.hpp"

#include "modelcdr/api.hpp"

#include <cctype>
#include <fstream>
#include <mutex>
#include <nlohmann/json.hpp>
#include <sstream>

namespace modelcdr::cdr {

namespace {

struct Entry {
  const char* module;
  const char* name;
  Construct construct;
  const char* why;
  bool tuple_state = false;
};

// Every entry is documented in docs/REGISTRY.md. Criteria: the class's pickled state (its
// __getstate__ / __dict__) is hyper-parameters (numbers, strings, None, bools, tuples, dicts),
// fitted numpy arrays and numpy scalars, and other registry objects; its __setstate__ (if any)
// only checks and stores that state; instantiating it runs no user-supplied code.
constexpr const char* kEst = "scikit-learn estimator: hyper-parameters and fitted numpy arrays in __dict__";
constexpr const char* kLoss = "scikit-learn loss: its Cython loss object (a row below), link, interval, numbers in __dict__";
const Entry kDefaults[] = {
#define MCDR_GLOBAL(module, name, roles)
#define MCDR_CLASS(module, name, construct, why) {module, name, Construct::construct, why},
#define MCDR_CLASS_TUPLE(module, name, construct, why) {module, name, Construct::construct, why, true},
#include "pickle/globals.def"
};

bool identifier(std::string_view s) {
  if (s.empty() || std::isdigit(static_cast<unsigned char>(s[0]))) return false;
  for (char c : s)
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '_')) return false;
  return true;
}

}  // namespace

ClassRegistry ClassRegistry::defaults() {
  ClassRegistry r;
  for (const auto& e : kDefaults) r.classes_.push_back(RegistryClass{e.module, e.name, e.construct, e.why, false, e.tuple_state});
  return r;
}

ClassRegistry& ClassRegistry::active() {
  static ClassRegistry r = defaults();
  return r;
}

std::optional<uint32_t> ClassRegistry::find(std::string_view module, std::string_view name) const {
  for (size_t i = 0; i < classes_.size(); ++i)
    if (classes_[i].module == module && classes_[i].name == name) return static_cast<uint32_t>(i);
  return std::nullopt;
}

Status ClassRegistry::allow(const std::string& dotted, Construct construct) {
  auto dot = dotted.rfind('.');
  if (dot == std::string::npos || dot == 0 || dot + 1 == dotted.size())
    return make_error(Rule::policy_bad_class, "'" + dotted + "' is not 'module.Class'");
  std::string module = dotted.substr(0, dot), name = dotted.substr(dot + 1);
  std::string_view rest = module;
  while (true) {
    auto d = rest.find('.');
    if (!identifier(rest.substr(0, d)))
      return make_error(Rule::policy_bad_class, "'" + dotted + "' is not a dotted Python name (wildcards are not accepted)");
    if (d == std::string_view::npos) break;
    rest = rest.substr(d + 1);
  }
  if (!identifier(name))
    return make_error(Rule::policy_bad_class, "'" + dotted + "' is not a dotted Python name (wildcards are not accepted)");
  if (find(module, name)) return ok_status();
  classes_.push_back(RegistryClass{module, name, construct, "allowed by the user's policy file", true});
  return ok_status();
}

Status ClassRegistry::load_policy_file(const std::string& path) {
  std::ifstream in(path);
  if (!in) return make_error(Rule::policy_unreadable, "cannot read policy file '" + path + "'");
  std::stringstream ss;
  ss << in.rdbuf();
  nlohmann::json doc = nlohmann::json::parse(ss.str(), nullptr, false);
  if (doc.is_discarded() || !doc.is_object()) return make_error(Rule::policy_bad_json, "policy file is not a JSON object");
  for (const char* key : {"allow_classes", "allow_reduce"}) {
    if (!doc.contains(key)) continue;
    const auto& list = doc[key];
    if (!list.is_array()) return make_error(Rule::policy_bad_json, std::string("'") + key + "' is not a list of strings");
    for (const auto& item : list) {
      if (!item.is_string()) return make_error(Rule::policy_bad_json, std::string("'") + key + "' holds a non-string");
      MCDR_TRY(allow(item.get<std::string>(), std::string(key) == "allow_reduce" ? Construct::reduce : Construct::newobj));
    }
  }
  return ok_status();
}

std::optional<NumpyCode> parse_numpy_code(std::string_view code) {
  if (code.size() < 2) return std::nullopt;
  NumpyCode c;
  c.kind = code[0];
  uint64_t n = 0;
  for (char d : code.substr(1)) {
    if (d < '0' || d > '9' || n > (1u << 30)) return std::nullopt;
    n = n * 10 + static_cast<uint64_t>(d - '0');
  }
  using model::DType;
  switch (c.kind) {
    case 'b':
      if (n != 1) return std::nullopt;
      c.dtype = DType::boolean;
      break;
    case 'i':
      if (n == 1) c.dtype = DType::i8; else if (n == 2) c.dtype = DType::i16;
      else if (n == 4) c.dtype = DType::i32; else if (n == 8) c.dtype = DType::i64;
      else return std::nullopt;
      break;
    case 'u':
      if (n == 1) c.dtype = DType::u8; else if (n == 2) c.dtype = DType::u16;
      else if (n == 4) c.dtype = DType::u32; else if (n == 8) c.dtype = DType::u64;
      else return std::nullopt;
      break;
    case 'f':
      if (n == 2) c.dtype = DType::f16; else if (n == 4) c.dtype = DType::f32;
      else if (n == 8) c.dtype = DType::f64;
      else return std::nullopt;
      break;
    case 'c':
      if (n == 8) c.dtype = DType::c64; else if (n == 16) c.dtype = DType::c128;
      else return std::nullopt;
      break;
    case 'O':
      if (n != 8) return std::nullopt;
      break;
    case 'V':
    case 'S':
      if (n == 0) return std::nullopt;
      break;
    case 'U':
      if (n == 0) return std::nullopt;
      n *= 4;
      break;
    default: return std::nullopt;
  }
  c.itemsize = n;
  return c;
}

}  // namespace modelcdr::cdr

namespace modelcdr {
Status load_class_policy(const std::string& path) { return cdr::ClassRegistry::active().load_policy_file(path); }
}  // namespace modelcdr
