#include "formats/registry.hpp"

#include <algorithm>
#include <cstring>

#include "formats/pickle_writer.hpp"
#include "formats/safetensors_writer.hpp"
#include "formats/torch_zip_writer.hpp"

namespace modelcdr::formats {

namespace {

using container::Format;

bool starts_with(std::span<const uint8_t> b, const void* magic, size_t n) {
  return b.size() >= n && std::memcmp(b.data(), magic, n) == 0;
}

bool ends_with(std::string_view s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// ---- Sniff bids. The scores only order the bids: the first of torch.load's checks that
// matches wins (a zip local header at 0, then tar, the legacy magic, ...), and pickle, whose
// first byte is an ordinary letter in protocols 0/1, bids last.

constexpr uint8_t kLegacyMagic[] = {0x80, 0x02, 0x8A, 0x0A, 0x6C, 0xFC, 0x9C, 0x46,
                                    0xF9, 0x20, 0x6A, 0xA8, 0x50, 0x19, 0x2E};

int bid_empty(std::span<const uint8_t>, uint64_t size) { return size == 0 ? 1000 : 0; }
int bid_zip(std::span<const uint8_t> b, uint64_t) { return starts_with(b, "PK\x03\x04", 4) ? 100 : 0; }

// torch.load tries tarfile first (for real files), and Python's tarfile accepts any 512-byte
// block whose checksum field matches (signed or unsigned sum), with or without the ustar magic.
bool tar_header_checksum_ok(std::span<const uint8_t> b) {
  if (b.size() < 512) return false;
  bool all_zero = true;
  for (size_t i = 0; i < 512 && all_zero; ++i) all_zero = b[i] == 0;
  if (all_zero) return false;
  uint64_t stored = 0;
  bool digits = false;
  for (size_t i = 148; i < 156; ++i) {
    uint8_t c = b[i];
    if (c >= '0' && c <= '7') {
      stored = stored * 8 + (c - '0');
      digits = true;
    } else if (c == ' ' || c == 0) {
      if (digits) break;
    } else {
      return false;
    }
  }
  if (!digits) return false;
  int64_t unsigned_sum = 0, signed_sum = 0;
  for (size_t i = 0; i < 512; ++i) {
    uint8_t c = (i >= 148 && i < 156) ? ' ' : b[i];
    unsigned_sum += c;
    signed_sum += static_cast<int8_t>(c);
  }
  return static_cast<int64_t>(stored) == unsigned_sum || static_cast<int64_t>(stored) == signed_sum;
}
int bid_tar(std::span<const uint8_t> b, uint64_t) { return tar_header_checksum_ok(b) ? 95 : 0; }
int bid_legacy(std::span<const uint8_t> b, uint64_t) { return starts_with(b, kLegacyMagic, sizeof kLegacyMagic) ? 90 : 0; }
int bid_npy(std::span<const uint8_t> b, uint64_t) { return starts_with(b, "\x93NUMPY", 6) ? 85 : 0; }
int bid_7z(std::span<const uint8_t> b, uint64_t) { return starts_with(b, "7z\xBC\xAF\x27\x1C", 6) ? 80 : 0; }
int bid_gzip(std::span<const uint8_t> b, uint64_t) { return starts_with(b, "\x1F\x8B", 2) ? 75 : 0; }
int bid_bzip2(std::span<const uint8_t> b, uint64_t) { return starts_with(b, "BZh", 3) ? 70 : 0; }
int bid_xz(std::span<const uint8_t> b, uint64_t) { return starts_with(b, "\xFD" "7zXZ", 5) ? 65 : 0; }
int bid_lz4(std::span<const uint8_t> b, uint64_t) { return starts_with(b, "\x04\x22\x4D\x18", 4) ? 60 : 0; }
int bid_zlib(std::span<const uint8_t> b, uint64_t) {
  if (b.size() >= 2 && b[0] == 0x78 && (b[1] == 0x01 || b[1] == 0x5E || b[1] == 0x9C || b[1] == 0xDA)) return 55;
  return starts_with(b, "ZF0x", 4) ? 55 : 0;  // joblib < 0.10: "ZF" + hex length + zlib
}
// lzma-alone (props 0x5D): not a pickle, since 0x00 is no opcode.
int bid_lzma(std::span<const uint8_t> b, uint64_t) { return starts_with(b, "\x5D\x00\x00", 3) ? 50 : 0; }

int bid_safetensors(std::span<const uint8_t> b, uint64_t file_size) {
  if (b.size() < 9) return 0;
  uint64_t n = 0;
  for (int i = 0; i < 8; ++i) n |= static_cast<uint64_t>(b[i]) << (8 * i);
  if (n <= 1 || n > 100'000'000 || n + 8 > file_size) return 0;
  // JSON may start with whitespace (the reference reader accepts it): skip it within the header.
  size_t i = 8;
  while (i < b.size() && i < 8 + n && std::strchr(" \t\r\n", b[i]) && b[i] != 0) ++i;
  return i < b.size() && b[i] == '{' ? 40 : 0;
}

// The first byte of a pickle stream: PROTO, or one of the opcodes that start a protocol 0/1
// stream writing a container or scalar.
int bid_pickle(std::span<const uint8_t> b, uint64_t) {
  if (b.empty()) return 0;
  uint8_t c = b[0];
  if (c == 0x80) return b.size() >= 2 && b[1] <= 5 ? 30 : 0;
  return std::strchr("(}]cdlNIJKLMFGSTUVXBC)\x8c\x95", c) != nullptr && c != 0 ? 30 : 0;
}

// ---- Writers: each adapts one writer to the WriteRequest and names what its format cannot hold.

void report_metadata_dropped(const WriteRequest& q, const char* why) {
  if (q.model.file_metadata.empty()) return;
  add_finding(q.report.findings, Severity::low, Rule::convert_metadata_dropped,
              std::to_string(q.model.file_metadata.size()) + " file metadata entries not written: " + why);
}

Status write_pt(const WriteRequest& q, io::AtomicOutput& out) {
  TorchWriteOptions wo;
  wo.compat = q.options.compat == CompatTarget::torch1_13 ? Compat::torch1_13 : Compat::torch2;
  wo.reflink = q.options.reflink;
  wo.shared_bytes = &q.report.shared_bytes;
  wo.ranges = q.ranges;
  for (const auto& t : q.options.transforms)  // the pipeline allows at most one record stage
    if (t && t->has_record_stage()) wo.records = t.get();
  MCDR_TRY(write_torch_zip(q.model, wo, out));
  // Content the output lacks is content removed: it counts (exit 1, listed as removed).
  report_metadata_dropped(q, "a PyTorch checkpoint has no place for them (use --to safetensors)");
  return ok_status();
}

Status write_pickle_file(const WriteRequest& q, io::AtomicOutput& out, bool joblib) {
  PickleWriteOptions po;
  po.joblib = joblib;
  po.registry = q.registry;  // class ids index the registry the reader used
  MCDR_TRY(write_pickle(q.model, po, out));
  report_metadata_dropped(q, "a pickle has no place for them");
  return ok_status();
}
Status write_plain_pickle(const WriteRequest& q, io::AtomicOutput& out) { return write_pickle_file(q, out, false); }
Status write_joblib(const WriteRequest& q, io::AtomicOutput& out) { return write_pickle_file(q, out, true); }
Status write_st(const WriteRequest& q, io::AtomicOutput& out) { return write_safetensors(q.model, out, q.report.findings); }
Status write_npz_file(const WriteRequest& q, io::AtomicOutput& out) { return write_npz(q.model, out, q.report.findings); }
Status write_npy_file(const WriteRequest& q, io::AtomicOutput& out) { return write_npy(q.model, out, q.report.findings); }

constexpr const char* kSevenZip =
    "a 7z container: torch.load cannot read it and modelcdr does not unpack it";
constexpr const char* kUnknown = "not a pickle, PyTorch, NumPy or safetensors file";

// joblib's compressed files: decompressed with a capped output size and read as joblib; any
// other content is rejected (read_compressed).
#define CODEC_ROW(fmt, text, bidfn, suffix1, suffix2, seed)                                                        \
  {Format::fmt, text, bidfn, read_compressed, Rule::format_unknown, nullptr, std::nullopt, nullptr, nullptr, {},       \
   {suffix1, suffix2}, nullptr, nullptr, "codecs", seed}

// One row per container::Format, in the enum's order (format_row indexes by it).
constexpr FormatRow kTable[] = {
    {Format::torch_zip, "torch-zip", bid_zip, read_torch_zip, Rule::format_unknown, nullptr, OutputFormat::pt, "pt",
     write_pt, {".pt", ".pth", ".bin", ".ckpt"}, {}, nullptr, nullptr, "zip_reader", "torch.pt"},
    {Format::torchscript, "torchscript", nullptr, nullptr, Rule::format_unknown, nullptr, std::nullopt, nullptr,
     nullptr, {}, {}, nullptr, nullptr, "torchscript", "linear_script.pt"},
    {Format::npz, "npz", nullptr, nullptr, Rule::format_unknown, nullptr, OutputFormat::npz, "npz", write_npz_file,
     {".npz"}, {}, nullptr, nullptr, "npz", "plain.npz"},
    {Format::torch_legacy, "torch-legacy", bid_legacy, read_torch_legacy, Rule::format_unknown, nullptr,
     std::nullopt, nullptr, nullptr, {}, {}, nullptr, nullptr, "torch_legacy", "state_dict.pt"},
    {Format::torch_tar, "torch-tar", bid_tar, read_torch_tar, Rule::format_unknown, nullptr, std::nullopt, nullptr,
     nullptr, {".tar"}, {}, nullptr, nullptr, "tar", "state_dict.tar"},
    // Plain pickles are read by the joblib reader too: it finds inline joblib arrays.
    {Format::pickle, "pickle", bid_pickle, read_joblib, Rule::format_unknown, nullptr, OutputFormat::pickle,
     "pickle", write_plain_pickle, {".pkl", ".pickle"}, {}, nullptr, nullptr, "joblib", "plain_p2.pkl"},
    {Format::npy, "npy", bid_npy, read_npy, Rule::format_unknown, nullptr, OutputFormat::npy, "npy",
     write_npy_file, {".npy"}, {}, nullptr, nullptr, "npy", "f4.npy"},
    {Format::safetensors, "safetensors", bid_safetensors, read_safetensors, Rule::format_unknown, nullptr,
     OutputFormat::safetensors, "safetensors", write_st, {".safetensors"}, {}, "pytorch_model", "model",
     "safetensors", "tensors.safetensors"},
    // Named for messages only: torch.load does not read a zip that does not start at 0.
    {Format::zip_not_at_start, "zip-with-prefix", nullptr, nullptr, Rule::format_unknown, kUnknown, std::nullopt,
     nullptr, nullptr, {}, {}, nullptr, nullptr, nullptr, nullptr},
    {Format::seven_zip, "7z", bid_7z, nullptr, Rule::format_compressed, kSevenZip, std::nullopt, nullptr, nullptr,
     {}, {}, nullptr, nullptr, nullptr, nullptr},
    CODEC_ROW(gzip, "gzip", bid_gzip, ".gz", nullptr, "dict.gzip"),
    CODEC_ROW(bzip2, "bzip2", bid_bzip2, ".bz2", nullptr, "dict.bz2"),
    CODEC_ROW(xz, "xz", bid_xz, ".xz", nullptr, "dict.xz"),
    CODEC_ROW(zlib, "zlib", bid_zlib, ".z", ".zlib", "dict.zlib"),
    CODEC_ROW(lz4, "lz4", bid_lz4, ".lz4", nullptr, "dict.lz4"),
    {Format::empty, "empty", bid_empty, nullptr, Rule::format_empty, "file is empty", std::nullopt, nullptr, nullptr,
     {}, {}, nullptr, nullptr, nullptr, nullptr},
    {Format::unknown, "unknown", nullptr, nullptr, Rule::format_unknown, kUnknown, std::nullopt, nullptr, nullptr, {},
     {}, nullptr, nullptr, nullptr, nullptr},
    {Format::joblib, "joblib", nullptr, nullptr, Rule::format_unknown, nullptr, OutputFormat::joblib, "joblib",
     write_joblib, {".joblib"}, {}, nullptr, nullptr, "joblib", "dict.joblib"},
    CODEC_ROW(lzma, "lzma", bid_lzma, ".lzma", nullptr, "dict.lzma"),
};
#undef CODEC_ROW

constexpr bool table_in_enum_order() {
  for (size_t i = 0; i < std::size(kTable); ++i)
    if (static_cast<size_t>(kTable[i].format) != i) return false;
  return true;
}
static_assert(table_in_enum_order(), "kTable rows follow container::Format's order");

}  // namespace

std::span<const FormatRow> format_table() { return kTable; }

const FormatRow& format_row(Format f) {
  size_t i = static_cast<size_t>(f);
  return i < std::size(kTable) ? kTable[i] : kTable[static_cast<size_t>(Format::unknown)];
}

const char* format_name(Format f) { return format_row(f).name; }

const FormatRow& output_row(OutputFormat f) {
  for (const auto& row : kTable)
    if (row.output == f) return row;
  return kTable[static_cast<size_t>(Format::torch_zip)];  // unreachable: every OutputFormat has a row
}

const FormatRow* row_for_flag(std::string_view to_flag) {
  for (const auto& row : kTable)
    if (row.to_flag && to_flag == row.to_flag) return &row;
  return nullptr;
}

std::vector<std::string> output_flags() {
  std::vector<std::string> flags;
  for (const auto& row : kTable)
    if (row.to_flag) flags.emplace_back(row.to_flag);
  return flags;
}

Format sniff(std::span<const uint8_t> file) {
  auto head = file.subspan(0, std::min(file.size(), kSniffBytes));
  Format best = Format::unknown;
  int best_bid = 0;
  for (const auto& row : kTable) {
    if (!row.bid) continue;
    if (int b = row.bid(head, file.size()); b > best_bid) {
      best_bid = b;
      best = row.format;
    }
  }
  return best;
}

Result<ParsedModel> open(Format sniffed, std::span<const uint8_t> file, const ReadOptions& options) {
  const FormatRow& row = format_row(sniffed);
  if (row.open) return row.open(file, options);
  return make_error(row.refusal_rule, row.refusal ? row.refusal : kUnknown);
}

Status write(OutputFormat f, const WriteRequest& request, io::AtomicOutput& out) {
  return output_row(f).write(request, out);
}

std::string strip_compression(const std::string& name) {
  for (const auto& row : kTable)
    for (const char* e : row.wrapper_suffixes)
      if (e && ends_with(name, e) && name.size() > std::strlen(e)) return name.substr(0, name.size() - std::strlen(e));
  return name;
}

std::optional<std::string> model_stem(const std::string& name) {
  for (const auto& row : kTable)
    for (const char* e : row.extensions)
      if (e && ends_with(name, e) && name.size() > std::strlen(e)) return name.substr(0, name.size() - std::strlen(e));
  return std::nullopt;
}

std::optional<OutputFormat> output_for_name(const std::string& name) {
  std::string n = strip_compression(name);
  for (const auto& row : kTable) {
    if (!row.output) continue;
    for (const char* e : row.extensions)
      if (e && ends_with(n, e)) return row.output;
  }
  return std::nullopt;
}

}  // namespace modelcdr::formats
