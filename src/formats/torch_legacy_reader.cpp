// PyTorch's legacy (non-zip) format (docs/FORMATS.md §3.1): five concatenated pickles (magic
// number, protocol version, sys_info, the object, the storage key list), then for each key in
// list order an int64 element count and the raw storage bytes.
#include <unordered_map>

#include "cdr/lifter.hpp"
#include "formats/parsed_model.hpp"
#include "io/byte_cursor.hpp"

namespace modelcdr::formats {

namespace {

using pickle::Node;
using pickle::NodeKind;
using pickle::Program;

constexpr uint8_t kMagic[] = {0x6C, 0xFC, 0x9C, 0x46, 0xF9, 0x20, 0x6A, 0xA8, 0x50, 0x19};  // 0x1950a86a20f9469cfc6c LE

// Key -> dtype for every storage persistent id in the object pickle, so the data section
// (which stores element counts, not byte sizes) can be walked before lifting.
Result<std::unordered_map<std::string, model::DType>> storage_dtypes(const Program& p) {
  std::unordered_map<std::string, model::DType> out;
  for (const Node& n : p.nodes) {
    if (n.kind != NodeKind::PersId) continue;
    const Node& pid = p.at(n.items[0]);
    if (pid.kind != NodeKind::Tuple || pid.items.size() < 3) continue;
    const Node& tag = p.at(pid.items[0]);
    if (tag.text != "storage") continue;
    const Node& cls = p.at(pid.items[1]);
    const Node& key = p.at(pid.items[2]);
    auto d = model::dtype_from_storage_class(cls.name());
    if (cls.kind != NodeKind::Global || !d || (key.kind != NodeKind::Str && key.kind != NodeKind::Py2Str))
      return make_error(Rule::torch_bad_persistent_id, "storage persistent id with an unknown class or key", n.offset);
    auto [it, inserted] = out.emplace(key.text, *d);
    if (!inserted && it->second != *d)
      return make_error(Rule::cdr_storage_dtype_conflict, "storage '" + key.text + "' is used with two dtypes", n.offset);
  }
  return out;
}

Status expect_int_program(const Program& p, const char* what, uint64_t offset) {
  const Node& r = p.at(p.root);
  if (r.kind != NodeKind::Int && r.kind != NodeKind::BigInt)
    return make_error(Rule::torch_legacy_header, std::string(what) + " is not an integer", offset);
  return ok_status();
}

}  // namespace

Result<ParsedModel> read_torch_legacy(std::span<const uint8_t> file, const ReadOptions& options) {
  ParsedModel parsed;
  parsed.format = container::Format::torch_legacy;
  uint64_t pos = 0;
  auto next = [&](const char* what) -> Result<Program> {
    MCDR_ASSIGN(Program p, decode_stream(file.subspan(pos), "", pos, options, parsed.findings, true));
    if (p.root == pickle::kNoNode) return make_error(Rule::torch_legacy_header, std::string(what) + " is missing", pos);
    pos += p.end_offset;
    return p;
  };
  MCDR_ASSIGN(Program magic, next("magic number"));
  const Node& m = magic.at(magic.root);
  if (m.kind != NodeKind::BigInt || m.text != std::string(reinterpret_cast<const char*>(kMagic), sizeof kMagic))
    return make_error(Rule::torch_legacy_magic, "invalid legacy magic number", 0);
  uint64_t version_offset = pos;
  MCDR_ASSIGN(Program version, next("protocol version"));
  MCDR_TRY(expect_int_program(version, "protocol version", version_offset));
  if (version.at(version.root).i != 1001)
    return make_error(Rule::torch_legacy_version, "legacy protocol version is not 1001", version_offset);
  uint64_t sysinfo_offset = pos;
  MCDR_ASSIGN(Program sys_info, next("sys_info"));
  if (sys_info.at(sys_info.root).kind != NodeKind::Dict)
    return make_error(Rule::torch_legacy_header, "sys_info is not a dict", sysinfo_offset);
  for (auto [k, v] : sys_info.at(sys_info.root).entries())
    if (sys_info.at(k).text == "little_endian" && sys_info.at(v).kind == NodeKind::Bool && !sys_info.at(v).b)
      return make_error(Rule::cdr_unsupported, "big-endian legacy checkpoints are not supported", sysinfo_offset);
  uint64_t object_offset = pos;
  MCDR_ASSIGN(Program object, next("object pickle"));
  uint64_t keys_offset = pos;
  MCDR_ASSIGN(Program keys, next("storage key list"));
  const Node& key_list = keys.at(keys.root);
  if (key_list.kind != NodeKind::List) return make_error(Rule::torch_legacy_keys, "storage key list is not a list", keys_offset);

  MCDR_ASSIGN(auto dtypes, storage_dtypes(object));
  std::unordered_map<std::string, std::span<const uint8_t>> spans;
  io::ByteCursor cur(file);
  MCDR_TRY(cur.seek(pos));
  for (pickle::NodeId kid : key_list.items) {
    const Node& k = keys.at(kid);
    if (k.kind != NodeKind::Str && k.kind != NodeKind::Py2Str)
      return make_error(Rule::torch_legacy_keys, "storage key is not a string", keys_offset);
    auto d = dtypes.find(k.text);
    if (d == dtypes.end())
      return make_error(Rule::torch_legacy_keys, "storage '" + k.text + "' is listed but never referenced", keys_offset);
    uint64_t at = cur.abs_pos();
    MCDR_ASSIGN(int64_t count, cur.i64le());
    uint64_t elsize = model::dtype_info(d->second).element_size, nbytes = 0;
    if (count < 0 || __builtin_mul_overflow(static_cast<uint64_t>(count), elsize, &nbytes))
      return make_error(Rule::torch_legacy_storage, "storage '" + k.text + "' has an invalid element count", at);
    MCDR_ASSIGN(auto bytes, cur.take(nbytes));
    if (!spans.emplace(k.text, bytes).second)
      return make_error(Rule::torch_legacy_keys, "storage '" + k.text + "' is listed twice", keys_offset);
  }
  if (!cur.at_end())
    add_finding(parsed.findings, Severity::high, Rule::torch_trailing_data,
                std::to_string(cur.remaining()) + " bytes after the last storage", "", cur.abs_pos());

  // The container's table of the data section; lift is a pure function of it and the object.
  cdr::StorageTable table;
  table.kind = cdr::StorageTable::Kind::legacy;
  std::vector<std::span<const uint8_t>> record_bytes;
  for (const auto& [key, bytes] : spans) {
    table.add(key, cdr::StorageRecord{"storage " + key, bytes.size()});
    record_bytes.push_back(bytes);
  }
  cdr::LiftOptions lo;
  (void)object_offset;
  cdr::StorageBinding binding;
  MCDR_ASSIGN(parsed.model, cdr::lift(object, table, lo, &binding));
  for (model::StorageId sid = 0; sid < parsed.model.storages.size(); ++sid) {
    if (binding[sid] == cdr::kNoRecord) continue;
    auto bytes = record_bytes[binding[sid]];
    parsed.model.storages[sid].bytes = bytes;
    ByteRange range = input_range(bytes, file, options);
    parsed.ranges.set(sid, range);
  }
  return parsed;
}

}  // namespace modelcdr::formats
