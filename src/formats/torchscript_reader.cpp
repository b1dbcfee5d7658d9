// TorchScript archives (docs/FORMATS.md §4): a program, never reproduced. What is kept is data:
// data.pkl's module tree (`__torch__.<path>.<Class>` NEWOBJ + BUILD dict of attributes) is
// walked for tensors, which become a state dict in nn.Module.state_dict() order (per module:
// parameters, buffers, then submodules), plus the module classes as architecture data. Which
// attributes are parameters/buffers is read from the `__parameters__ = [...]` /
// `__buffers__ = [...]` declaration lines of code/ (read as text, never run); without them,
// tensors with requires_grad are parameters and other tensors buffers. code/, constants.pkl
// (decoded and scanned), constants/, extra/ and debug records are dropped and reported.
// Archives of the old format (torch 1.0-1.3: model.json / attributes.pkl / tensors/) keep their weights (OldArchive).
#include <algorithm>
#include <map>
#include <unordered_map>
#include <unordered_set>

#include "cdr/lifter.hpp"
#include "container/zip_reader.hpp"
#include "formats/parsed_model.hpp"
#include <nlohmann/json.hpp>

namespace modelcdr::formats {

namespace {

using pickle::kNoNode;
using pickle::Node;
using pickle::NodeId;
using pickle::NodeKind;
using pickle::Program;

bool ends_with(const std::string& s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

struct Declared {
  std::vector<std::string> parameters, buffers;
  bool found = false;
};

// `["a", "b", ]` -> {a, b}; names are identifiers or digits.
std::vector<std::string> name_list(std::string_view s) {
  std::vector<std::string> out;
  size_t i = 0;
  while ((i = s.find('"', i)) != std::string_view::npos) {
    size_t j = s.find('"', i + 1);
    if (j == std::string_view::npos) break;
    out.emplace_back(s.substr(i + 1, j - i - 1));
    i = j + 1;
  }
  return out;
}

// Finds `class <name>(` in TorchScript source text and its __parameters__/__buffers__ lines.
Declared declarations(std::string_view code, const std::string& name) {
  Declared d;
  std::string head = "class " + name + "(";
  size_t pos = 0;
  while ((pos = code.find(head, pos)) != std::string_view::npos) {
    if (pos == 0 || code[pos - 1] == '\n') break;
    pos += head.size();
  }
  if (pos == std::string_view::npos) return d;
  size_t line = code.find('\n', pos);
  while (line != std::string_view::npos) {
    size_t next = code.find('\n', line + 1);
    std::string_view l = code.substr(line + 1, next == std::string_view::npos ? std::string_view::npos : next - line - 1);
    if (l.empty() || (l[0] != ' ')) break;  // end of the class body
    auto strip = l.find_first_not_of(' ');
    std::string_view t = strip == std::string_view::npos ? std::string_view() : l.substr(strip);
    if (t.rfind("__parameters__ = [", 0) == 0) {
      d.parameters = name_list(t);
      d.found = true;
    } else if (t.rfind("__buffers__ = [", 0) == 0) {
      d.buffers = name_list(t);
      d.found = true;
    } else if (t.rfind("def ", 0) == 0) {
      break;
    }
    line = next;
  }
  return d;
}

bool is_torch_class(const Program& p, const Node& n) {
  if (n.kind != NodeKind::NewObj || n.items.empty()) return false;
  const Node& c = p.at(n.items[0]);
  return c.kind == NodeKind::Global && (c.text == "__torch__" || c.text.rfind("__torch__.", 0) == 0);
}

bool is_tensor_call(const Program& p, const Node& n) {
  if (n.kind != NodeKind::Call) return false;
  const Node& c = p.at(n.items[0]);
  return c.kind == NodeKind::Global && c.text == "torch._utils" && c.name().rfind("_rebuild_", 0) == 0;
}

class Walker {
 public:
  Walker(Program& p, const container::ZipArchive& zip, std::span<const uint8_t> file, const std::string& prefix,
         Findings& findings)
      : p_(p), zip_(zip), file_(file), prefix_(prefix), findings_(findings) {}

  // Appends the state-dict entries of module node `id` under `path` to `entries`.
  Status module(NodeId id, const std::string& path, std::vector<std::pair<std::string, NodeId>>& entries,
                std::vector<model::ModuleInfo>& arch, int depth) {
    if (depth > static_cast<int>(limits::kMaxDepth)) return limits::too_deep("TorchScript modules");
    // A submodule shared by two parents is walked under both paths (as state_dict() does);
    // the budget keeps a DAG of shared modules from costing one walk per path.
    if (!budget_.spend(1) || path.size() > kMaxModulePath) return limits::too_much_expansion("TorchScript module tree");
    const Node& n = p_.at(id);
    const Node& cls = p_.at(n.items[0]);
    model::ModuleInfo info;
    info.path = path.empty() ? "" : path.substr(0, path.size() - 1);
    info.class_module = cls.text;
    info.class_name = cls.name();
    if (n.build_states().size() != 1 || p_.at(n.build_states().back()).kind != NodeKind::Dict) {
      add_finding(findings_, Severity::high, Rule::torchscript_setstate,
                  "module '" + info.path + "' (" + cls.text + "." + cls.name() +
                      ") is restored by a TorchScript __setstate__; its state was dropped",
                  "", n.offset);
      arch.push_back(info);
      return ok_status();
    }
    const Node& st = p_.at(n.build_states().back());
    Declared decl = declared(cls);
    std::vector<std::pair<std::string, NodeId>> params, buffers, children;
    for (auto [k, v] : last_value_wins(st)) {
      const Node& kn = p_.at(k);
      const Node& vn = p_.at(v);
      if (is_torch_class(p_, vn)) {
        children.emplace_back(kn.text, v);
      } else if (is_tensor_call(p_, vn)) {
        bool is_param = false, is_buffer = false;
        if (decl.found) {
          is_param = std::count(decl.parameters.begin(), decl.parameters.end(), kn.text) > 0;
          is_buffer = std::count(decl.buffers.begin(), decl.buffers.end(), kn.text) > 0;
        } else {
          is_param = requires_grad(vn);
          is_buffer = !is_param;
        }
        if (is_param) params.emplace_back(kn.text, v);
        else if (is_buffer) buffers.emplace_back(kn.text, v);
        else
          add_finding(findings_, Severity::low, Rule::torchscript_attribute,
                      "tensor attribute '" + path + kn.text + "' is neither a parameter nor a buffer (dropped)", "", kn.offset);
      }
    }
    if (!budget_.spend(params.size() + buffers.size())) return limits::too_much_expansion("TorchScript module tree");
    for (auto& [name, v] : params) {
      entries.emplace_back(path + name, v);
      info.parameters.push_back(name);
    }
    for (auto& [name, v] : buffers) {
      entries.emplace_back(path + name, v);
      info.buffers.push_back(name);
    }
    arch.push_back(info);
    for (auto& [name, v] : children) MCDR_TRY(module(v, path + name + ".", entries, arch, depth + 1));
    return ok_status();
  }

 private:
  // The str-keyed entries of a state dict as the unpickler leaves them: a repeated attribute
  // keeps its first position and its last value.
  std::vector<std::pair<NodeId, NodeId>> last_value_wins(const Node& st) const {
    std::vector<std::pair<NodeId, NodeId>> out;
    std::unordered_map<std::string, size_t> seen;
    for (auto [k, v] : st.entries()) {
      const Node& kn = p_.at(k);
      if (kn.kind != NodeKind::Str) continue;
      auto [it, fresh] = seen.emplace(kn.text, out.size());
      if (fresh) out.emplace_back(k, v);
      else out[it->second].second = v;
    }
    return out;
  }

  bool requires_grad(const Node& call) const {
    const Node& args = p_.at(call.items[1]);
    if (args.kind != NodeKind::Tuple || args.items.size() < 5) return false;
    const Node& rg = p_.at(args.items[4]);
    return rg.kind == NodeKind::Bool && rg.b;
  }

  // Memoised per class: a module class shared by many modules is looked up once. The source
  // bytes searched are budgeted too (many class names pointing into one large code file);
  // past the budget a class counts as undeclared (tensors classified by requires_grad).
  Declared declared(const Node& cls) {
    auto key = std::make_pair(pickle::Text(cls.text), cls.name());
    if (auto it = declared_.find(key); it != declared_.end()) return it->second;
    Declared d = declared_uncached(cls);
    declared_.emplace(std::move(key), d);
    return d;
  }

  Declared declared_uncached(const Node& cls) {
    // __torch__.a.b.C -> code/__torch__/a/b.py ; __torch__ C -> code/__torch__.py
    std::string rel = cls.text;
    std::replace(rel.begin(), rel.end(), '.', '/');
    const container::ZipEntry* e = zip_.find(prefix_ + "/code/" + rel + ".py");
    if (!e || e->uncompressed_size > (64u << 20) || !code_budget_.spend(e->uncompressed_size)) return {};
    std::vector<uint8_t> scratch;
    auto bytes = container::entry_bytes(zip_, file_, *e, scratch);
    if (!bytes.ok()) return {};
    std::string_view text(reinterpret_cast<const char*>(bytes->data()), bytes->size());
    return declarations(text, cls.name());
  }

  static constexpr size_t kMaxModulePath = 64 * 1024;  // bytes of a dotted module path
  Program& p_;
  limits::Budget budget_{limits::expansion_budget(p_.nodes.size(), limits::kModuleBudgetFloor)};
  const container::ZipArchive& zip_;
  std::span<const uint8_t> file_;
  std::string prefix_;
  Findings& findings_;
  std::map<std::pair<std::string, std::string>, Declared> declared_;
  limits::Budget code_budget_{limits::expansion_budget(file_.size())};
};

// ---- torch 1.0-1.3 archives: model.json + tensors/ --------------------------------------------
// model.json is a protobuf ModelDef written as JSON: "tensors" lists every tensor (dims, strides
// and offset as decimal strings, dataType, data.key = "tensors/<n>", a raw storage record), and
// "mainModule" the module tree, each module's "parameters" naming (name, tensorId, isBuffer).
// Only those numbers, names and records are read; code/ and attributes.pkl are dropped.
constexpr uint64_t kMaxModelJson = 64ull << 20;
constexpr uint32_t kMaxOldModuleDepth = 64;

Error old_bad(const std::string& entry, const std::string& what) {
  return make_error(Rule::cdr_bad_tensor, "old TorchScript model.json: " + what, 0, entry);
}

std::optional<int64_t> json_int(const nlohmann::json& j) {
  if (j.is_number_integer()) return j.get<int64_t>();
  if (!j.is_string()) return std::nullopt;
  const std::string& t = j.get_ref<const std::string&>();
  if (t.empty() || t.size() > 18 || !std::all_of(t.begin(), t.end(), [](char c) { return c >= '0' && c <= '9'; }))
    return std::nullopt;
  return std::stoll(t);
}

std::optional<model::DType> old_dtype(const std::string& name) {
  using model::DType;
  static const std::pair<const char*, DType> kTable[] = {
      {"FLOAT", DType::f32}, {"DOUBLE", DType::f64}, {"FLOAT16", DType::f16}, {"INT64", DType::i64},
      {"INT32", DType::i32}, {"INT16", DType::i16},  {"INT8", DType::i8},     {"UINT8", DType::u8},
      {"BOOL", DType::boolean}};
  for (auto [n, d] : kTable)
    if (name == n) return d;
  return std::nullopt;
}

class OldArchive {
 public:
  OldArchive(const container::ZipArchive& zip, std::span<const uint8_t> file, std::string prefix, ParsedModel& parsed)
      : zip_(zip), file_(file), prefix_(std::move(prefix)), entry_(prefix_ + "/model.json"), parsed_(parsed) {}

  Status run() {
    const container::ZipEntry* e = zip_.find(entry_);
    if (!e || e->uncompressed_size > kMaxModelJson) return old_bad(entry_, "missing or larger than 64 MiB");
    std::vector<uint8_t> scratch;
    MCDR_ASSIGN(auto bytes, container::entry_bytes(zip_, file_, *e, scratch));
    doc_ = nlohmann::json::parse(bytes.begin(), bytes.end(), nullptr, false);
    if (doc_.is_discarded() || !doc_.is_object() || !doc_.contains("tensors") || !doc_["tensors"].is_array() ||
        !doc_.contains("mainModule") || !doc_["mainModule"].is_object())
      return old_bad(entry_, "not a JSON object with 'tensors' and 'mainModule'");
    root_.kind = model::ValueKind::ordered_dict;
    MCDR_TRY(module(doc_["mainModule"], "", 0));
    m().root = m().add(std::move(root_));
    add_finding(parsed_.findings, Severity::medium, Rule::torchscript_converted,
                "old TorchScript archive (torch 1.0-1.3, model.json) converted to a state dict of " +
                    std::to_string(count_) + " tensors (code/ and attributes.pkl removed)",
                entry_, 0);
    return ok_status();
  }

 private:
  model::Model& m() { return parsed_.model; }

  Status module(const nlohmann::json& mod, const std::string& path, uint32_t depth) {
    if (depth > kMaxOldModuleDepth) return old_bad(entry_, "modules nested deeper than 64 levels");
    // state_dict() order: parameters (and buffers) in their listed order, then submodules.
    if (mod.contains("parameters")) {
      if (!mod["parameters"].is_array()) return old_bad(entry_, "'parameters' is not a list");
      for (const auto& p : mod["parameters"]) MCDR_TRY(parameter(p, path));
    }
    if (mod.contains("submodules")) {
      if (!mod["submodules"].is_array()) return old_bad(entry_, "'submodules' is not a list");
      for (const auto& sub : mod["submodules"]) {
        if (!sub.is_object() || !sub.contains("name") || !sub["name"].is_string())
          return old_bad(entry_, "a submodule without a name");
        MCDR_TRY(module(sub, path + sub["name"].get<std::string>() + ".", depth + 1));
      }
    }
    return ok_status();
  }

  Status parameter(const nlohmann::json& p, const std::string& path) {
    if (!p.is_object() || !p.contains("name") || !p["name"].is_string() || !p.contains("tensorId"))
      return old_bad(entry_, "a parameter without name or tensorId");
    auto id = json_int(p["tensorId"]);
    const auto& tensors = doc_["tensors"];
    if (!id || *id < 0 || static_cast<uint64_t>(*id) >= tensors.size()) return old_bad(entry_, "tensorId out of range");
    MCDR_ASSIGN(model::TensorId tid, tensor(tensors[static_cast<size_t>(*id)]));
    model::Value key;
    key.kind = model::ValueKind::string;
    key.text = path + p["name"].get<std::string>();
    model::Value tv;
    tv.kind = model::ValueKind::tensor;
    tv.tensor = tid;
    root_.entries.emplace_back(m().add(std::move(key)), m().add(std::move(tv)));
    ++count_;
    return ok_status();
  }

  Result<std::vector<int64_t>> ints(const nlohmann::json& t, const char* field) {
    std::vector<int64_t> out;
    if (!t.contains(field) || !t[field].is_array() || t[field].size() > 64)
      return old_bad(entry_, std::string("tensor '") + field + "' is not a list of at most 64 integers");
    for (const auto& d : t[field]) {
      auto v = json_int(d);
      if (!v) return old_bad(entry_, std::string("tensor '") + field + "' holds a non-integer");
      out.push_back(*v);
    }
    return out;
  }

  Result<model::TensorId> tensor(const nlohmann::json& t) {
    if (!t.is_object() || !t.contains("dataType") || !t["dataType"].is_string() || !t.contains("data") ||
        !t["data"].is_object() || !t["data"].contains("key") || !t["data"]["key"].is_string())
      return old_bad(entry_, "a tensor without dataType or data.key");
    auto dtype = old_dtype(t["dataType"].get<std::string>());
    if (!dtype) return old_bad(entry_, "unsupported dataType '" + t["dataType"].get<std::string>().substr(0, 16) + "'");
    model::Tensor x;
    x.dtype = *dtype;
    MCDR_ASSIGN(x.shape, ints(t, "dims"));
    MCDR_ASSIGN(x.stride, ints(t, "strides"));
    auto off = t.contains("offset") ? json_int(t["offset"]) : std::optional<int64_t>(0);
    if (!off || x.shape.size() != x.stride.size()) return old_bad(entry_, "tensor offset/strides do not match its dims");
    x.storage_offset = *off;
    MCDR_ASSIGN(x.storage, storage(t["data"]["key"].get<std::string>(), *dtype));
    MCDR_TRY(check_view(x));
    m().tensors.push_back(std::move(x));
    return static_cast<model::TensorId>(m().tensors.size() - 1);
  }

  // Every element the view reaches lies inside its storage record.
  Status check_view(const model::Tensor& x) {
    uint64_t esize = model::dtype_info(x.dtype).element_size;
    uint64_t numel = m().storages[x.storage].nbytes / esize, last = static_cast<uint64_t>(x.storage_offset);
    for (size_t i = 0; i < x.shape.size(); ++i) {
      if (x.shape[i] < 0 || x.stride[i] < 0 || x.shape[i] > (int64_t{1} << 48) || x.stride[i] > (int64_t{1} << 48))
        return old_bad(entry_, "negative or huge dims/strides");
      if (x.shape[i] == 0) return ok_status();
      last += static_cast<uint64_t>(x.shape[i] - 1) * static_cast<uint64_t>(x.stride[i]);
    }
    if (x.storage_offset < 0 || last >= numel) return old_bad(entry_, "a tensor reaches past the end of its record");
    return ok_status();
  }

  Result<model::StorageId> storage(const std::string& key, model::DType dtype) {
    if (auto it = storages_.find(key); it != storages_.end()) {
      if (m().storages[it->second].dtype != dtype) return old_bad(entry_, "record '" + key + "' is read with two dtypes");
      return it->second;
    }
    if (key.rfind("tensors/", 0) != 0) return old_bad(entry_, "data key '" + key.substr(0, 64) + "' is not under tensors/");
    std::string name = prefix_ + "/" + key;
    const container::ZipEntry* e = zip_.find(name);
    if (!e) return old_bad(entry_, "record '" + name + "' is missing");
    std::vector<uint8_t> scratch;
    MCDR_ASSIGN(auto bytes, container::entry_bytes(zip_, file_, *e, scratch));
    model::Storage s;
    s.dtype = dtype;
    s.source = name;
    s.nbytes = bytes.size() - bytes.size() % model::dtype_info(dtype).element_size;
    if (e->method != 0) s.set_owned(std::vector<uint8_t>(bytes.begin(), bytes.begin() + static_cast<ptrdiff_t>(s.nbytes)));
    else s.bytes = bytes.subspan(0, s.nbytes);
    m().storages.push_back(std::move(s));
    auto sid = static_cast<model::StorageId>(m().storages.size() - 1);
    storages_[key] = sid;
    return sid;
  }

  const container::ZipArchive& zip_;
  std::span<const uint8_t> file_;
  std::string prefix_, entry_;
  ParsedModel& parsed_;
  nlohmann::json doc_;
  model::Value root_;
  size_t count_ = 0;
  std::unordered_map<std::string, model::StorageId> storages_;
};

}  // namespace

Status read_torchscript_archive(std::span<const uint8_t> file, const container::ZipArchive& zip, const std::string& prefix,
                                const ReadOptions& options, ParsedModel& parsed) {
  parsed.format = container::Format::torchscript;
  const container::ZipEntry* pkl = zip.find(prefix + "/data.pkl");
  bool old_format = zip.find(prefix + "/model.json") != nullptr;
  if (!pkl && !old_format) parsed.not_disarmable = "TorchScript archive without data.pkl or model.json";
  std::unordered_set<std::string> used;
  for (const auto& e : zip.entries) {
    std::string rel = e.name.substr(std::min(e.name.size(), prefix.size() + 1));
    if (rel.compare(0, 5, "code/") == 0 && ends_with(rel, ".py"))
      add_finding(parsed.findings, Severity::high, Rule::torchscript_code,
                  "TorchScript code '" + rel + "' removed (it runs when the model is loaded or used)", e.name,
                  e.local_header_offset);
    else if (rel.compare(0, 10, "constants/") == 0)
      add_finding(parsed.findings, Severity::low, Rule::torchscript_constant, "code constant '" + rel + "' removed", e.name,
                  e.local_header_offset);
    else if (rel.compare(0, 6, "extra/") == 0 || rel == "bytecode.pkl" || (ends_with(rel, ".json") && rel != "model.json"))
      add_finding(parsed.findings, Severity::medium, Rule::torchscript_extra, "record '" + rel + "' removed", e.name,
                  e.local_header_offset);
    // Every pickle is decoded and scanned (constants.pkl calls, __setstate__ state), except
    // source-range debug info, which the loaders skip.
    if (ends_with(rel, ".pkl") && rel.find("debug_pkl") == std::string::npos && rel != "data.pkl") {
      std::vector<uint8_t> scratch;
      MCDR_ASSIGN(auto bytes, container::entry_bytes(zip, file, e, scratch));
      auto program = decode_stream(bytes, e.name, 0, options, parsed.findings, false);
      if (!program.ok()) return program.error();
      if (rel == "constants.pkl" && program->root != kNoNode && !program->at(program->root).items.empty())
        add_finding(parsed.findings, Severity::medium, Rule::torchscript_constants,
                    "constants.pkl (" + std::to_string(program->at(program->root).items.size()) +
                        " constants used by the code) removed",
                    e.name, 0);
    }
  }
  if (parsed.not_disarmable) return ok_status();
  if (old_format) return OldArchive(zip, file, prefix, parsed).run();

  std::vector<uint8_t> pkl_scratch;
  MCDR_ASSIGN(auto pkl_bytes, container::entry_bytes(zip, file, *pkl, pkl_scratch));
  MCDR_ASSIGN(Program program, decode_stream(pkl_bytes, pkl->name, 0, options, parsed.findings, false));
  const Node& root = program.at(program.root);
  if (!is_torch_class(program, root)) {
    parsed.not_disarmable = "TorchScript data.pkl root is not a scripted module";
    return ok_status();
  }
  std::vector<std::pair<std::string, NodeId>> entries;
  std::vector<model::ModuleInfo> arch;
  Walker w(program, zip, file, prefix, parsed.findings);
  MCDR_TRY(w.module(program.root, "", entries, arch, 0));

  // A synthetic root: OrderedDict() with SETITEMs of (path, tensor node), so the ordinary lifter
  // (and its checks) turns the tensors into the IR.
  auto add = [&](Node n) {
    program.nodes.push_back(std::move(n));
    return static_cast<NodeId>(program.nodes.size() - 1);
  };
  Node g;
  program.set_global(g, "collections", "OrderedDict");
  NodeId gid = add(g);
  Node empty;
  empty.kind = NodeKind::Tuple;
  NodeId eid = add(empty);
  Node od;
  od.kind = NodeKind::Call;
  od.items.assign(*program.arena, {gid, eid});
  for (auto& [path, v] : entries) {
    Node k;
    program.set_text(k, NodeKind::Str, path);
    NodeId kid = add(k);
    od.mutations(*program.arena).entries.push_back(*program.arena, {kid, v});
  }
  program.root = add(od);

  StorageRecords records = zip_storage_records(zip, prefix);
  cdr::LiftOptions lo;
  lo.entry = pkl->name;
  cdr::StorageBinding binding;
  MCDR_ASSIGN(parsed.model, cdr::lift(program, records.table, lo, &binding));
  for (model::StorageId sid = 0; sid < parsed.model.storages.size(); ++sid) {
    if (binding[sid] == cdr::kNoRecord) continue;
    const container::ZipEntry& e = *records.entries[binding[sid]];
    model::Storage& s = parsed.model.storages[sid];
    std::vector<uint8_t> scratch;
    MCDR_ASSIGN(auto bytes, container::entry_bytes(zip, file, e, scratch));
    if (e.method != 0) s.set_owned(std::vector<uint8_t>(bytes.begin(), bytes.end()));
    else s.bytes = bytes;
  }
  for (auto& info : arch) cdr::vet_architecture(info, parsed.findings, pkl->name, 0);
  parsed.model.architecture = std::move(arch);
  add_finding(parsed.findings, Severity::medium, Rule::torchscript_converted,
              "TorchScript module converted to a state dict of " + std::to_string(entries.size()) +
                  " tensors (code removed; module classes kept as data)",
              pkl->name, 0);
  return ok_status();
}

}  // namespace modelcdr::formats
