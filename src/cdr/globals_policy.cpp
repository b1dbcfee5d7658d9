#include "cdr/globals_policy.hpp"

#include <array>
#include <string_view>

#include "modelcdr/model.hpp"
#include "pickle/globals.hpp"

namespace modelcdr::cdr {

namespace {
constexpr std::array<std::string_view, 40> kDangerousModules{{
    "os", "posix", "nt", "subprocess", "sys", "socket", "shutil", "pty", "runpy", "importlib",
    "pickle", "_pickle", "cPickle", "marshal", "types", "ctypes", "webbrowser", "requests", "urllib",
    "urllib2", "urllib.request", "http", "http.client", "httplib", "code", "commands", "platform",
    "asyncio", "multiprocessing", "signal", "tempfile", "pip", "setuptools", "ftplib", "smtplib",
    "telnetlib", "bdb", "pdb", "dill", "torch.hub"}};

bool is_dangerous_module(std::string_view m) {
  for (auto d : kDangerousModules) {
    if (m == d) return true;
    if (m.size() > d.size() && m.substr(0, d.size()) == d && m[d.size()] == '.') return true;
  }
  return false;
}
}  // namespace

bool is_torch_dtype(const std::string& module, const std::string& name) {
  return module == "torch" && model::dtype_from_name(name).has_value();
}

bool is_known_global(const std::string& module, const std::string& name) {
  if (pickle::has_role(module, name, pickle::kGKnown)) return true;  // pickle/globals.def
  if (is_torch_dtype(module, name)) return true;
  if ((module == "torch" || module == "torch.cuda") && name.size() > 7 &&
      name.compare(name.size() - 7, 7, "Storage") == 0)
    return model::dtype_from_storage_class(name).has_value();
  return false;
}

Severity unknown_global_severity(const std::string& module, const std::string& name) {
  if (is_dangerous_module(module)) return Severity::critical;
  if (module == "builtins" || module == "__builtin__" || module == "__builtins__") {
    if (pickle::has_role("builtins", name, pickle::kGDanger)) return Severity::critical;
  }
  if (name.find("system") != std::string::npos || name.find("exec") != std::string::npos ||
      name.find("eval") != std::string::npos || name.find("popen") != std::string::npos ||
      name.find("Popen") != std::string::npos)
    return Severity::critical;
  return Severity::high;
}

}  // namespace modelcdr::cdr
