#include "cdr/globals_policy.hpp"

#include <array>
#include <string_view>

#include "modelcdr/model.hpp"

namespace modelcdr::cdr {

namespace {
struct Name {
  std::string_view module, name;
};

constexpr std::array<Name, 47> kKnown{{
    {"collections", "OrderedDict"},
    {"collections", "Counter"},
    {"collections", "defaultdict"},
    {"torch._utils", "_rebuild_tensor"},
    {"torch._utils", "_rebuild_tensor_v2"},
    {"torch._utils", "_rebuild_tensor_v3"},
    {"torch._utils", "_rebuild_parameter"},
    {"torch._utils", "_rebuild_parameter_with_state"},
    {"torch._utils", "_rebuild_qtensor"},
    {"torch._utils", "_rebuild_sparse_tensor"},
    {"torch._utils", "_rebuild_sparse_csr_tensor"},  // torch 1.10-1.13's CSR pickles
    {"torch._tensor", "_rebuild_from_type_v2"},
    {"torch.serialization", "_get_layout"},
    {"torch", "Size"},
    {"torch", "Tensor"},
    {"torch", "device"},
    {"torch", "per_tensor_affine"},
    {"torch", "per_channel_affine"},
    {"torch", "per_tensor_symmetric"},
    {"torch", "per_channel_symmetric"},
    {"torch", "per_channel_affine_float_qparams"},
    {"torch.nn.parameter", "Parameter"},
    {"torch.storage", "UntypedStorage"},
    {"torch.storage", "TypedStorage"},
    {"_codecs", "encode"},
    {"builtins", "set"},
    {"builtins", "frozenset"},
    {"builtins", "bytearray"},
    {"builtins", "complex"},
    {"builtins", "bytes"},
    {"builtins", "list"},
    {"builtins", "dict"},
    {"builtins", "tuple"},
    {"builtins", "int"},
    {"builtins", "float"},
    {"builtins", "str"},
    {"builtins", "slice"},
    {"builtins", "range"},
    {"numpy.core.multiarray", "scalar"},
    {"numpy._core.multiarray", "scalar"},
    {"numpy", "dtype"},
    {"argparse", "Namespace"},
    {"types", "SimpleNamespace"},
    {"pathlib", "PosixPath"},
    {"pathlib", "WindowsPath"},
    {"pathlib", "Path"},
    {"torch.nn.modules.module", "Module"},
}};

constexpr std::array<std::string_view, 40> kDangerousModules{{
    "os", "posix", "nt", "subprocess", "sys", "socket", "shutil", "pty", "runpy", "importlib",
    "pickle", "_pickle", "cPickle", "marshal", "types", "ctypes", "webbrowser", "requests", "urllib",
    "urllib2", "urllib.request", "http", "http.client", "httplib", "code", "commands", "platform",
    "asyncio", "multiprocessing", "signal", "tempfile", "pip", "setuptools", "ftplib", "smtplib",
    "telnetlib", "bdb", "pdb", "dill", "torch.hub"}};

constexpr std::array<std::string_view, 16> kDangerousBuiltins{{
    "eval", "exec", "compile", "open", "__import__", "getattr", "setattr", "delattr", "globals",
    "locals", "vars", "input", "breakpoint", "execfile", "apply", "memoryview"}};

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
  for (const auto& k : kKnown)
    if (k.module == module && k.name == name) return true;
  if (is_torch_dtype(module, name)) return true;
  if ((module == "torch" || module == "torch.cuda") && name.size() > 7 &&
      name.compare(name.size() - 7, 7, "Storage") == 0)
    return model::dtype_from_storage_class(name).has_value();
  return false;
}

Severity unknown_global_severity(const std::string& module, const std::string& name) {
  if (is_dangerous_module(module)) return Severity::critical;
  if (module == "builtins" || module == "__builtin__" || module == "__builtins__") {
    for (auto b : kDangerousBuiltins)
      if (name == b) return Severity::critical;
  }
  if (name.find("system") != std::string::npos || name.find("exec") != std::string::npos ||
      name.find("eval") != std::string::npos || name.find("popen") != std::string::npos ||
      name.find("Popen") != std::string::npos)
    return Severity::critical;
  return Severity::high;
}

}  // namespace modelcdr::cdr
