// PyTorch's pre-0.1.10 tar format (docs/FORMATS.md §3.3): a POSIX tar with members sys_info (a
// pickle dict), storages (count pickle; per storage a (key, location, storage class) pickle,
// int64 element count and raw bytes; then a pickle list of views), tensors (count pickle; per
// tensor a (key, storage key, tensor class) pickle, int32 ndim, 4 pad bytes, ndim int64 sizes,
// ndim int64 strides, int64 storage offset) and pickle (the object, whose persistent ids are
// tensor keys or (class, source file, source) tuples).
#include <unordered_map>

#include "cdr/lifter.hpp"
#include "container/tar_reader.hpp"
#include "formats/parsed_model.hpp"
#include "io/byte_cursor.hpp"

namespace modelcdr::formats {

namespace {

using pickle::Node;
using pickle::NodeKind;
using pickle::Program;

std::optional<std::string> key_text(const Program& p, pickle::NodeId id) {
  const Node& n = p.at(id);
  if (n.kind == NodeKind::Int) return std::to_string(n.i);
  if (n.kind == NodeKind::Str || n.kind == NodeKind::Py2Str) return n.text;
  return std::nullopt;
}

Result<Program> next_pickle(io::ByteCursor& cur, const std::string& entry, uint64_t base, const ReadOptions& options,
                            Findings& findings) {
  MCDR_ASSIGN(Program p, decode_stream(cur.data().subspan(cur.pos()), entry, base + cur.pos(), options, findings, true));
  if (p.root == pickle::kNoNode) return make_error(Rule::torch_tar_member, "empty pickle", cur.abs_pos(), entry);
  MCDR_TRY(cur.skip(p.end_offset));
  return p;
}

Result<int64_t> count_of(const Program& p, const char* what, const std::string& entry) {
  const Node& r = p.at(p.root);
  if (r.kind != NodeKind::Int || r.i < 0 || r.i > 10'000'000)
    return make_error(Rule::torch_tar_member, std::string(what) + " count is not a small non-negative integer", 0, entry);
  return r.i;
}

}  // namespace

Result<ParsedModel> read_torch_tar(std::span<const uint8_t> file, const ReadOptions& options) {
  ParsedModel parsed;
  parsed.format = container::Format::torch_tar;
  MCDR_ASSIGN(container::TarArchive tar, container::read_tar(file, parsed.findings));
  auto member = [&](const char* name) -> Result<std::span<const uint8_t>> {
    const container::TarMember* m = tar.find(name);
    if (!m || m->typeflag != '0') return make_error(Rule::torch_tar_member, std::string("tar member '") + name + "' is missing");
    return container::tar_member_bytes(file, *m);
  };
  for (const auto& m : tar.members)
    if (m.name != "sys_info" && m.name != "pickle" && m.name != "storages" && m.name != "tensors")
      add_finding(parsed.findings, Severity::medium, Rule::torch_unknown_record,
                  "tar member '" + m.name + "' is not part of a checkpoint (dropped)", m.name, m.data_offset);

  // sys_info
  MCDR_ASSIGN(auto sys_bytes, member("sys_info"));
  const uint64_t sys_base = tar.find("sys_info")->data_offset;
  MCDR_ASSIGN(Program sys, decode_stream(sys_bytes, "sys_info", sys_base, options, parsed.findings, false));
  if (sys.at(sys.root).kind != NodeKind::Dict) return make_error(Rule::torch_legacy_header, "sys_info is not a dict", 0, "sys_info");
  for (auto [k, v] : sys.at(sys.root).entries())
    if (sys.at(k).text == "little_endian" && sys.at(v).kind == NodeKind::Bool && !sys.at(v).b)
      return make_error(Rule::cdr_unsupported, "big-endian tar checkpoints are not supported", 0, "sys_info");

  // storages
  MCDR_ASSIGN(auto st_bytes, member("storages"));
  const uint64_t st_base = tar.find("storages")->data_offset;
  io::ByteCursor sc(st_bytes, "storages", st_base);
  MCDR_ASSIGN(Program st_count, next_pickle(sc, "storages", st_base, options, parsed.findings));
  MCDR_ASSIGN(int64_t nstorages, count_of(st_count, "storage", "storages"));
  struct StorageRec {
    model::DType dtype;
    std::span<const uint8_t> bytes;
  };
  std::unordered_map<std::string, StorageRec> storages;
  for (int64_t i = 0; i < nstorages; ++i) {
    uint64_t at = sc.abs_pos();
    MCDR_ASSIGN(Program rec, next_pickle(sc, "storages", st_base, options, parsed.findings));
    const Node& t = rec.at(rec.root);
    if (t.kind != NodeKind::Tuple || t.items.size() != 3)
      return make_error(Rule::torch_tar_storage, "storage record is not (key, location, type)", at, "storages");
    auto key = key_text(rec, t.items[0]);
    const Node& cls = rec.at(t.items[2]);
    std::optional<model::DType> dtype;
    if (cls.kind == NodeKind::Global && cls.text == "torch") dtype = model::dtype_from_storage_class(cls.name());
    if (!key || !dtype) return make_error(Rule::torch_tar_storage, "storage record has an unknown key or storage class", at, "storages");
    MCDR_ASSIGN(int64_t count, sc.i64le());
    uint64_t nbytes = 0;
    if (count < 0 || __builtin_mul_overflow(static_cast<uint64_t>(count), model::dtype_info(*dtype).element_size, &nbytes))
      return make_error(Rule::torch_tar_storage, "storage '" + *key + "' has an invalid element count", at, "storages");
    MCDR_ASSIGN(auto data, sc.take(nbytes));
    if (!storages.emplace(*key, StorageRec{*dtype, data}).second)
      return make_error(Rule::torch_tar_storage, "storage '" + *key + "' appears twice", at, "storages");
  }
  uint64_t views_at = sc.abs_pos();
  MCDR_ASSIGN(Program views, next_pickle(sc, "storages", st_base, options, parsed.findings));
  const Node& vl = views.at(views.root);
  if (vl.kind != NodeKind::List) return make_error(Rule::torch_tar_storage, "storage view list is not a list", views_at, "storages");
  if (!vl.items.empty()) return make_error(Rule::cdr_unsupported, "storage views of the tar format are not supported", views_at, "storages");
  if (!sc.at_end())
    add_finding(parsed.findings, Severity::high, Rule::torch_trailing_data, std::to_string(sc.remaining()) + " bytes after the storages",
                "storages", sc.abs_pos());

  // tensors
  MCDR_ASSIGN(auto te_bytes, member("tensors"));
  const uint64_t te_base = tar.find("tensors")->data_offset;
  io::ByteCursor tc(te_bytes, "tensors", te_base);
  MCDR_ASSIGN(Program te_count, next_pickle(tc, "tensors", te_base, options, parsed.findings));
  MCDR_ASSIGN(int64_t ntensors, count_of(te_count, "tensor", "tensors"));
  std::unordered_map<std::string, cdr::TarTensor> tensors;
  for (int64_t i = 0; i < ntensors; ++i) {
    uint64_t at = tc.abs_pos();
    MCDR_ASSIGN(Program rec, next_pickle(tc, "tensors", te_base, options, parsed.findings));
    const Node& t = rec.at(rec.root);
    if (t.kind != NodeKind::Tuple || t.items.size() != 3)
      return make_error(Rule::torch_tar_tensor, "tensor record is not (key, storage key, type)", at, "tensors");
    auto key = key_text(rec, t.items[0]);
    auto skey = key_text(rec, t.items[1]);
    if (!key || !skey) return make_error(Rule::torch_tar_tensor, "tensor record keys are not integers or strings", at, "tensors");
    auto s = storages.find(*skey);
    if (s == storages.end()) return make_error(Rule::torch_missing_storage, "tensor '" + *key + "' names a missing storage", at, "tensors");
    MCDR_ASSIGN(int32_t ndim, tc.i32le());
    if (ndim < 0 || ndim > 64) return make_error(Rule::torch_tar_tensor, "tensor has an invalid number of dimensions", at, "tensors");
    MCDR_TRY(tc.skip(4));
    cdr::TarTensor tt;
    tt.storage_key = *skey;
    tt.dtype = s->second.dtype;
    tt.storage_nbytes = s->second.bytes.size();
    for (int32_t d = 0; d < ndim; ++d) {
      MCDR_ASSIGN(int64_t v, tc.i64le());
      tt.shape.push_back(v);
    }
    for (int32_t d = 0; d < ndim; ++d) {
      MCDR_ASSIGN(int64_t v, tc.i64le());
      tt.stride.push_back(v);
    }
    MCDR_ASSIGN(tt.storage_offset, tc.i64le());
    for (size_t d = 0; d < tt.shape.size(); ++d)
      if (tt.shape[d] < 0 || tt.stride[d] < 0)
        return make_error(Rule::torch_tar_tensor, "tensor has a negative size or stride", at, "tensors");
    if (tt.storage_offset < 0) return make_error(Rule::torch_tar_tensor, "tensor has a negative storage offset", at, "tensors");
    if (!tensors.emplace(*key, std::move(tt)).second)
      return make_error(Rule::torch_tar_tensor, "tensor '" + *key + "' appears twice", at, "tensors");
  }
  if (!tc.at_end())
    add_finding(parsed.findings, Severity::high, Rule::torch_trailing_data, std::to_string(tc.remaining()) + " bytes after the tensors",
                "tensors", tc.abs_pos());

  // the object
  MCDR_ASSIGN(auto pk_bytes, member("pickle"));
  const uint64_t pk_base = tar.find("pickle")->data_offset;
  MCDR_ASSIGN(Program object, decode_stream(pk_bytes, "pickle", pk_base, options, parsed.findings, false));
  // The container's table of the storages member; lift is a pure function of it and the object.
  cdr::StorageTable table;
  table.kind = cdr::StorageTable::Kind::tar;
  std::vector<std::span<const uint8_t>> record_bytes;
  for (const auto& [key, rec] : storages) {
    table.add(key, cdr::StorageRecord{"storages/" + key, rec.bytes.size()});
    record_bytes.push_back(rec.bytes);
  }
  cdr::LiftOptions lo;
  lo.entry = "pickle";
  lo.tar_tensors = &tensors;
  cdr::StorageBinding binding;
  MCDR_ASSIGN(parsed.model, cdr::lift(object, table, lo, &binding));
  for (model::StorageId sid = 0; sid < parsed.model.storages.size(); ++sid)
    if (binding[sid] != cdr::kNoRecord) parsed.model.storages[sid].bytes = record_bytes[binding[sid]];
  return parsed;
}

}  // namespace modelcdr::formats
