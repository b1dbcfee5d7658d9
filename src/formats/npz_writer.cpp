// NumPy .npz writer (docs/FORMATS.md §7.1-7.2): one stored `<name>.npy` member per tensor, each a
// version 1.0 .npy with a header numpy itself would write (the three keys, padded with spaces
// and a newline to a 64-byte boundary), data in C order. Only numeric dtypes numpy has; no
// object arrays (they would need pickle), so non-tensor data is reported as dropped.
#include <algorithm>
#include <functional>
#include <set>

#include "container/zip_writer.hpp"
#include "formats/safetensors_writer.hpp"

namespace modelcdr::formats {

namespace {

const char* npy_descr(model::DType d) {
  using model::DType;
  switch (d) {
    case DType::boolean: return "|b1";
    case DType::u8: return "|u1";
    case DType::i8: return "|i1";
    case DType::i16: return "<i2";
    case DType::u16: return "<u2";
    case DType::i32: return "<i4";
    case DType::u32: return "<u4";
    case DType::i64: return "<i8";
    case DType::u64: return "<u8";
    case DType::f16: return "<f2";
    case DType::f32: return "<f4";
    case DType::f64: return "<f8";
    case DType::c64: return "<c8";
    case DType::c128: return "<c16";
    default: return nullptr;
  }
}

bool safe_member_name(const std::string& n) {
  if (n.empty() || n.size() > 1000 || n[0] == '/' || n.find('\\') != std::string::npos) return false;
  for (char c : n)
    if (static_cast<unsigned char>(c) < 0x20) return false;
  size_t start = 0;
  while (start <= n.size()) {
    size_t end = n.find('/', start);
    if (end == std::string::npos) end = n.size();
    std::string part = n.substr(start, end - start);
    if (part.empty() || part == "." || part == "..") return false;
    start = end + 1;
  }
  return true;
}

}  // namespace

std::string npy_header_text(const char* descr, const std::vector<int64_t>& shape, bool fortran_order) {
  std::string s = std::string("{'descr': '") + descr + "', 'fortran_order': " + (fortran_order ? "True" : "False") +
                  ", 'shape': (";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i) s += ", ";
    s += std::to_string(shape[i]);
  }
  if (shape.size() == 1) s += ",";
  s += "), }";
  size_t total = 10 + s.size() + 1;
  s.append((64 - total % 64) % 64, ' ');
  s += '\n';
  return s;
}

namespace {
// Magic, version 1.0, header length and header of one .npy.
Result<std::string> npy_prefix(const char* descr, const std::vector<int64_t>& shape, bool fortran_order = false) {
  std::string header = npy_header_text(descr, shape, fortran_order);
  if (header.size() > 0xffff) return make_error(Rule::convert_npy_header, "npy header too long for version 1.0");
  std::string prefix = std::string("\x93NUMPY\x01\x00", 8);
  prefix.push_back(static_cast<char>(header.size() & 0xff));
  prefix.push_back(static_cast<char>(header.size() >> 8));
  return prefix + header;
}

// The prefix, then the tensor's elements in C order.
Status write_npy_body(const model::Model& m, const model::Tensor& t, const std::string& name, const std::string& prefix,
                      const std::function<Status(std::span<const uint8_t>)>& sink) {
  MCDR_TRY(sink(std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(prefix.data()), prefix.size())));
  uint64_t written = 0;
  MCDR_TRY(stream_tensor(m, t, [&](std::span<const uint8_t> chunk) {
    written += chunk.size();
    return sink(chunk);
  }));
  if (written != tensor_nbytes(t)) return make_error(Rule::convert_bad_view, "tensor '" + name + "' streamed a wrong byte count");
  return ok_status();
}
// The .npy prefix of a flattened array: a numeric tensor (C order) or a fixed-width string
// array, whose raw bytes are written as they are (in their own C or Fortran order).
Result<std::string> member_prefix(const model::Tensor& t, const NamedTensor& nt) {
  if (!nt.text_descr.empty()) return npy_prefix(nt.text_descr.c_str(), nt.array_shape, nt.fortran_order);
  const char* descr = npy_descr(t.dtype);
  if (!descr)
    return make_error(Rule::convert_npy_dtype, std::string("dtype ") + model::dtype_info(t.dtype).name + " has no NumPy form");
  return npy_prefix(descr, t.shape);
}

// NumPy files hold arrays only: every non-tensor value and the file metadata are reported as dropped.
void report_dropped_data(const model::Model& m, const FlatModel& flat, const std::string& why, const std::string& fmt,
                         Findings& findings) {
  for (const auto& [k, v] : flat.extra)
    add_finding(findings, Severity::low, Rule::convert_dropped, "'" + k + "' dropped: " + why + " (non-tensor data)");
  if (!m.file_metadata.empty())
    add_finding(findings, Severity::low, Rule::convert_dropped, "file metadata dropped: " + fmt + " has no metadata");
}
}  // namespace

Status write_npy(const model::Model& m, io::AtomicOutput& out, Findings& findings) {
  MCDR_ASSIGN(FlatModel flat, flatten_model(m, "npy", findings));
  report_dropped_data(m, flat, "npy holds one array only", "npy", findings);
  if (flat.tensors.size() != 1)
    return make_error(Rule::convert_npy_arrays, "an .npy file holds exactly one array; this model has " +
                                                std::to_string(flat.tensors.size()) + " (write .npz instead)");
  const auto& nt = flat.tensors.front();
  const model::Tensor& t = m.tensors[nt.tensor];
  MCDR_ASSIGN(std::string prefix, member_prefix(t, nt));
  if (!is_c_contiguous(t))
    add_finding(findings, Severity::info, Rule::convert_made_contiguous, "the array was not contiguous; written in C order");
  return write_npy_body(m, t, nt.name, prefix, [&](std::span<const uint8_t> b) { return out.write(b); });
}

Status write_npz(const model::Model& m, io::AtomicOutput& out, Findings& findings) {
  MCDR_ASSIGN(FlatModel flat, flatten_model(m, "npz", findings));
  report_dropped_data(m, flat, "npz holds arrays only", "npz", findings);
  container::ZipWriter zip(out);
  std::set<std::string> members;
  for (const auto& nt : flat.tensors) {
    const model::Tensor& t = m.tensors[nt.tensor];
    if (nt.text_descr.empty() && !npy_descr(t.dtype)) {
      add_finding(findings, Severity::low, Rule::convert_dropped,
                  "tensor '" + nt.name + "' dropped: dtype " + model::dtype_info(t.dtype).name + " has no NumPy form");
      continue;
    }
    std::string member = nt.name + ".npy";
    if (!safe_member_name(member) || !members.insert(member).second) {
      add_finding(findings, Severity::low, Rule::convert_dropped, "tensor '" + nt.name + "' dropped: not usable as an npz member name");
      continue;
    }
    if (!is_c_contiguous(t))
      add_finding(findings, Severity::info, Rule::convert_made_contiguous, "tensor '" + nt.name + "' was not contiguous; written in C order");
    MCDR_ASSIGN(std::string prefix, member_prefix(t, nt));
    uint64_t nbytes = tensor_nbytes(t);
    MCDR_TRY(zip.begin_entry(member, prefix.size() + nbytes));
    MCDR_TRY(write_npy_body(m, t, nt.name, prefix, [&](std::span<const uint8_t> b) { return zip.write_payload(b); }));
    MCDR_TRY(zip.end_entry());
  }
  // numpy sniffs an npz by its first local header: an archive without members is not one.
  if (members.empty())
    return make_error(Rule::convert_nothing_to_write, "no array can be written as npz (nothing numeric is left)");
  return zip.finish();
}

}  // namespace modelcdr::formats
