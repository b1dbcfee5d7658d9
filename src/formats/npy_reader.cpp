// NumPy .npy and .npz inputs (docs/FORMATS.md §7.1, §7.2). Numeric arrays become tensors whose
// payload is a span of the input (byte-swapped into an owned copy for big-endian data).
// Object arrays carry a pickle after the header: it goes through the pickle machine, the
// program scan and the lifter like any pickle, so the policy is the same as for checkpoints.
// Fixed-width string arrays ('|S5' bytes, '<U3' UTF-32) are plain data: they become numpy
// arrays of that dtype (raw bytes, little-endian). Other unsupported dtypes (datetimes,
// structured, float128) are refused, not guessed.
#include <algorithm>
#include <optional>

#include "cdr/lifter.hpp"
#include "container/zip_reader.hpp"
#include "formats/npy_header.hpp"
#include "formats/parsed_model.hpp"
#include "io/byte_cursor.hpp"

namespace modelcdr::formats {

namespace {

using model::DType;

struct NpyDtype {
  bool object = false;
  DType dtype = DType::f32;
  bool big_endian = false;
  std::string text_code;  // "S5" / "U3" for a fixed-width string array (dtype is then unused)
};

// '|S<n>' / '<U<n>' / '>U<n>' (n >= 1): the code numpy's dtype pickle and our writers use.
std::optional<std::string> string_code(char order, const std::string& code) {
  if (code.size() < 2 || (code[0] != 'S' && code[0] != 'U') || code[1] == '0' || code.size() > 11) return std::nullopt;
  if (code[0] == 'S' && order != '|') return std::nullopt;
  if (code.find_first_not_of("0123456789", 1) != std::string::npos) return std::nullopt;
  return code;
}

Result<NpyDtype> map_descr(const std::string& descr, const std::string& entry) {
  auto bad = [&](const std::string& why) {
    return make_error(Rule::npy_unsupported_dtype, "dtype '" + descr + "' " + why, 0, entry);
  };
  if (descr.size() < 2) return bad("is not understood");
  char order = descr[0];
  if (order != '<' && order != '>' && order != '|' && order != '=') return bad("has no byte-order character");
  std::string code = descr.substr(1);
  NpyDtype d;
  d.big_endian = order == '>';
  if (code == "O" || code == "O8" || code == "O4") {
    d.object = true;
    return d;
  }
  if (auto text = string_code(order, code)) {
    d.text_code = *text;
    return d;
  }
  static const std::pair<const char*, DType> table[] = {
      {"b1", DType::boolean}, {"i1", DType::i8},   {"u1", DType::u8},   {"i2", DType::i16},  {"u2", DType::u16},
      {"i4", DType::i32},     {"u4", DType::u32},  {"i8", DType::i64},  {"u8", DType::u64},  {"f2", DType::f16},
      {"f4", DType::f32},     {"f8", DType::f64},  {"c8", DType::c64},  {"c16", DType::c128}};
  for (auto [c, t] : table)
    if (code == c) {
      d.dtype = t;
      if (model::dtype_info(t).element_size == 1) d.big_endian = false;
      return d;
    }
  return bad("is not a plain numeric dtype (datetimes, void and float128 are not supported)");
}

void byteswap(std::vector<uint8_t>& data, DType d) {
  uint32_t size = model::dtype_info(d).element_size;
  if (d == DType::c64 || d == DType::c128) size /= 2;
  if (size <= 1) return;
  for (size_t i = 0; i + size <= data.size(); i += size) std::reverse(data.begin() + i, data.begin() + i + size);
}

// A fixed-width string array: a numpy array value (dtype code "S5"/"U3", no dtype state, so
// little-endian) over a u8 storage of its raw bytes; '>U' data is byte-swapped per code point.
Result<model::ValueId> string_array(model::Model& m, const NpyDtype& d, const NpyHeader& h,
                                    std::span<const uint8_t> data, bool owned_copy, const std::string& entry) {
  model::Storage s;
  s.dtype = DType::u8;
  s.nbytes = data.size();
  s.source = entry.empty() ? "data" : entry;
  if (d.big_endian || owned_copy) {
    std::vector<uint8_t> owned(data.begin(), data.end());
    if (d.big_endian) byteswap(owned, DType::u32);
    s.set_owned(std::move(owned));
  } else {
    s.bytes = data;
  }
  m.storages.push_back(std::move(s));
  model::Tensor t;
  t.dtype = DType::u8;
  t.storage = static_cast<model::StorageId>(m.storages.size() - 1);
  t.shape = {static_cast<int64_t>(data.size())};
  t.stride = {1};
  m.tensors.push_back(std::move(t));
  model::Value dt;
  dt.kind = model::ValueKind::numpy_dtype;
  dt.text = d.text_code;
  model::Value v;
  v.kind = model::ValueKind::ndarray;
  v.tensor = static_cast<model::TensorId>(m.tensors.size() - 1);
  v.state = m.add(std::move(dt));
  for (uint64_t dim : h.shape) v.array_shape.push_back(static_cast<int64_t>(dim));
  v.fortran_order = h.fortran_order;
  return m.add(std::move(v));
}

// One .npy (a bare file or an npz member) lifted into `m`; returns its value.
// `owned_copy` is set for npz members whose bytes live in a scratch buffer.
Result<model::ValueId> read_one(std::span<const uint8_t> bytes, const std::string& entry, bool owned_copy,
                                const ReadOptions& options, model::Model& m, Findings& findings) {
  MCDR_ASSIGN(NpyHeader h, parse_npy_header(bytes, entry, findings));
  MCDR_ASSIGN(NpyDtype d, map_descr(h.descr, entry));
  io::ByteCursor c(bytes, entry);
  MCDR_TRY(c.seek(h.data_offset));
  if (d.object) {
    auto payload = bytes.subspan(h.data_offset);
    add_finding(findings, Severity::medium, Rule::npy_object_array,
                "object array: its data is a pickle (np.load refuses it without allow_pickle=True)", entry, h.data_offset);
    MCDR_ASSIGN(pickle::Program program, decode_stream(payload, entry, h.data_offset, options, findings, false));
    cdr::StorageTable no_storages;  // no storage records: a storage pid is cdr.no-storage
    no_storages.what = "an object array's pickle";
    cdr::LiftOptions lo;
    lo.entry = entry;
    MCDR_ASSIGN(model::Model sub, cdr::lift(program, no_storages, lo));
    return cdr::graft(m, std::move(sub));
  }
  uint64_t esize = model::dtype_info(d.dtype).element_size;
  if (!d.text_code.empty()) esize = std::stoull(d.text_code.substr(1)) * (d.text_code[0] == 'U' ? 4 : 1);
  uint64_t numel = 1;
  for (uint64_t dim : h.shape) {
    if (dim != 0 && numel > UINT64_MAX / dim) return c.err(Rule::npy_bad_shape, "shape overflows 64 bits");
    numel *= dim;
  }
  if (numel > UINT64_MAX / esize || h.shape.size() > 64) return c.err(Rule::npy_bad_shape, "array size overflows 64 bits");
  for (uint64_t dim : h.shape)
    if (dim > static_cast<uint64_t>(INT64_MAX)) return c.err(Rule::npy_bad_shape, "dimension too large");
  uint64_t nbytes = numel * esize;
  if (nbytes > c.remaining())
    return c.err(Rule::npy_truncated, "array data needs " + std::to_string(nbytes) + " bytes, " +
                                      std::to_string(c.remaining()) + " follow the header");
  MCDR_ASSIGN(auto data, c.take(nbytes));
  if (!c.at_end())
    add_finding(findings, Severity::medium, Rule::npy_trailing_data,
                std::to_string(c.remaining()) + " bytes after the array data (dropped)", entry, c.abs_pos());
  if (!d.text_code.empty()) return string_array(m, d, h, data, owned_copy, entry);
  model::Storage s;
  s.dtype = d.dtype;
  s.nbytes = nbytes;
  s.source = entry.empty() ? "data" : entry;
  if (d.big_endian || owned_copy) {
    std::vector<uint8_t> owned(data.begin(), data.end());
    if (d.big_endian) byteswap(owned, d.dtype);
    s.set_owned(std::move(owned));
  } else {
    s.bytes = data;
  }
  if (d.big_endian)
    add_finding(findings, Severity::info, Rule::npy_big_endian, "big-endian array converted to little-endian", entry, 0);
  m.storages.push_back(std::move(s));
  model::Tensor t;
  t.dtype = d.dtype;
  t.storage = static_cast<model::StorageId>(m.storages.size() - 1);
  for (uint64_t dim : h.shape) t.shape.push_back(static_cast<int64_t>(dim));
  t.stride.assign(t.shape.size(), 1);
  int64_t acc = 1;
  if (h.fortran_order) {
    for (size_t i = 0; i < t.shape.size(); ++i) t.stride[i] = acc, acc *= std::max<int64_t>(t.shape[i], 1);
  } else {
    for (size_t i = t.shape.size(); i-- > 0;) t.stride[i] = acc, acc *= std::max<int64_t>(t.shape[i], 1);
  }
  m.tensors.push_back(std::move(t));
  model::Value v;
  v.kind = model::ValueKind::tensor;
  v.tensor = static_cast<model::TensorId>(m.tensors.size() - 1);
  return m.add(std::move(v));
}

}  // namespace

Result<ParsedModel> read_npy(std::span<const uint8_t> file, const ReadOptions& options) {
  ParsedModel parsed;
  parsed.format = container::Format::npy;
  MCDR_ASSIGN(parsed.model.root, read_one(file, "", false, options, parsed.model, parsed.findings));
  return parsed;
}

Result<ParsedModel> read_npz(std::span<const uint8_t> file, const container::ZipArchive& zip, Findings findings,
                             const ReadOptions& options) {
  ParsedModel parsed;
  parsed.format = container::Format::npz;
  parsed.findings = std::move(findings);
  model::Value root;
  root.kind = model::ValueKind::dict;
  std::vector<std::pair<model::ValueId, model::ValueId>> entries;
  for (const auto& e : zip.entries) {
    if (e.name.size() < 5 || e.name.compare(e.name.size() - 4, 4, ".npy") != 0)
      return make_error(Rule::npz_bad_member, "member '" + e.name + "' is not a .npy file", e.local_header_offset, e.name);
    std::vector<uint8_t> scratch;
    MCDR_ASSIGN(auto bytes, container::entry_bytes(zip, file, e, scratch));
    MCDR_ASSIGN(model::ValueId v, read_one(bytes, e.name, !scratch.empty() || e.method != 0, options, parsed.model,
                                           parsed.findings));
    model::Value key;
    key.kind = model::ValueKind::string;
    key.text = e.name.substr(0, e.name.size() - 4);
    entries.emplace_back(parsed.model.add(std::move(key)), v);
  }
  root.entries = std::move(entries);
  parsed.model.root = parsed.model.add(std::move(root));
  return parsed;
}

}  // namespace modelcdr::formats
