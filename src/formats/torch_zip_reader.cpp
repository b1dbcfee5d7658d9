// PyTorch zip checkpoints (docs/FORMATS.md §2): archive/data.pkl + archive/data/<key> records.
// TorchScript archives (a constants.pkl record, as torch.load decides) go to
// torchscript_reader.cpp, which extracts their tensors. NumPy .npz archives are recognised by their member names.
#include <algorithm>
#include <unordered_set>

#include "cdr/lifter.hpp"
#include "container/zip_reader.hpp"
#include "container/zip_writer.hpp"
#include "formats/parsed_model.hpp"
#include "io/mapped_file.hpp"

namespace modelcdr::formats {

namespace {

using container::ZipArchive;
using container::ZipEntry;

bool ends_with(const std::string& s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// Byte-swaps each element in place (big-endian checkpoints); complex types swap each half.
void byteswap(std::vector<uint8_t>& data, model::DType d) {
  uint32_t size = model::dtype_info(d).element_size;
  if (d == model::DType::c64 || d == model::DType::c128 || d == model::DType::c32) size /= 2;
  if (size <= 1) return;
  for (size_t i = 0; i + size <= data.size(); i += size) std::reverse(data.begin() + i, data.begin() + i + size);
}

// Storage records (<folder>/data/<key>, stored) whose CRC the torch writer checks while copying
// them, when the caller defers it. Every other member is checked by read_zip as for scan, so
// that scan and disarm agree on every byte they accept: bookkeeping records (.format_version,
// .storage_alignment, .data/serialization_id) are not written back, but a bad CRC there is
// still a zip that is not what it claims to be.
bool deferrable_storage(const ZipEntry& e) {
  auto slash = e.name.find('/');
  return e.method == 0 && slash != std::string::npos && slash > 0 && e.name.compare(slash + 1, 5, "data/") == 0;
}

struct ArchiveView {
  std::span<const uint8_t> file;
  const ZipArchive* zip;
  std::string prefix;
  bool crc_checked = true;  // read_zip verified every entry's CRC, storage records included
  Result<std::span<const uint8_t>> read(const ZipEntry& e, std::vector<uint8_t>& scratch) const {
    MCDR_ASSIGN(auto bytes, container::entry_bytes(*zip, file, e, scratch));
    if (!crc_checked && deferrable_storage(e) && container::ZipWriter::crc32(bytes) != e.crc32)
      return make_error(Rule::zip_bad_crc, "CRC-32 of the record does not match the zip directory", e.data_offset, e.name);
    return bytes;
  }
};

// Which entries data.pkl references, by entry index (one bit an entry; a set of names cost a
// copy of every storage's name). A duplicate name counts as used when its first entry is, as
// a lookup by name sees them.
struct UsedRecords {
  const ZipArchive& zip;
  std::vector<bool> by_index = std::vector<bool>(zip.entries.size());
  void mark(const ZipEntry* e) { by_index[static_cast<size_t>(e - zip.entries.data())] = true; }
  bool has(const ZipEntry& e) const {
    if (by_index[static_cast<size_t>(&e - zip.entries.data())]) return true;  // marked: a first entry
    const ZipEntry* first = zip.find(e.name);
    return first && by_index[static_cast<size_t>(first - zip.entries.data())];
  }
};

// Deferred mode: the storage records no tensor uses are dropped, not copied, so the writer
// never sees their CRC; check them here (scan reports a bad one too).
Status check_unused_storage_crcs(const ArchiveView& a, const UsedRecords& used, bool release, Findings& findings) {
  if (a.crc_checked) return ok_status();
  container::ZipLimits limits;
  limits.release_pages = release;
  for (const auto& e : a.zip->entries)
    if (deferrable_storage(e) && !used.has(e)) MCDR_TRY(container::check_entry_crc(*a.zip, a.file, e, findings, limits));
  return ok_status();
}

void report_records(const ZipArchive& zip, const std::string& prefix, const UsedRecords& used, Findings& findings) {
  static constexpr std::string_view bookkeeping[] = {
      "data.pkl", "version", ".data/version", "byteorder", ".format_version", ".storage_alignment", ".data/serialization_id"};
  for (const auto& e : zip.entries) {
    const std::string_view name = e.name;
    if (name.size() <= prefix.size() || name.compare(0, prefix.size(), prefix) != 0 || name[prefix.size()] != '/') {
      add_finding(findings, Severity::high, Rule::torch_entry_outside_prefix,
                  "entry '" + e.name + "' is not under the archive folder '" + prefix + "/'", e.name, e.local_header_offset);
      continue;
    }
    const std::string_view rel = name.substr(prefix.size() + 1);
    if (std::find(std::begin(bookkeeping), std::end(bookkeeping), rel) != std::end(bookkeeping) || used.has(e)) continue;
    if (rel.compare(0, 5, "data/") == 0) {
      add_finding(findings, Severity::low, Rule::torch_unreferenced_record,
                  "storage record '" + e.name + "' is not referenced by data.pkl (dropped)", e.name, e.local_header_offset);
    } else {
      add_finding(findings, Severity::medium, Rule::torch_unknown_record,
                  "record '" + e.name + "' is not part of a checkpoint (dropped)", e.name, e.local_header_offset);
    }
  }
}

Status check_version(const ArchiveView& a, Findings& findings) {
  const ZipEntry* v = a.zip->find(a.prefix + "/.data/version");
  if (!v) v = a.zip->find(a.prefix + "/version");
  if (!v) {
    add_finding(findings, Severity::medium, Rule::torch_missing_version, "no version record (torch.load would refuse the file)",
                a.prefix + "/version", 0);
    return ok_status();
  }
  std::vector<uint8_t> scratch;
  MCDR_ASSIGN(auto bytes, a.read(*v, scratch));
  std::string text(bytes.begin(), bytes.end());
  while (!text.empty() && (text.back() == '\n' || text.back() == '\r')) text.pop_back();
  bool digits = !text.empty() && text.size() < 8 && std::all_of(text.begin(), text.end(), ::isdigit);
  long value = digits ? std::stol(text) : -1;
  if (value < 1 || value > 10)
    add_finding(findings, Severity::medium, Rule::torch_bad_version,
                "version record '" + text.substr(0, 16) + "' is outside 1..10 (torch.load would refuse the file)", v->name,
                v->data_offset);
  return ok_status();
}

Result<bool> big_endian(const ArchiveView& a) {
  const ZipEntry* b = a.zip->find(a.prefix + "/byteorder");
  if (!b) return false;
  std::vector<uint8_t> scratch;
  MCDR_ASSIGN(auto bytes, a.read(*b, scratch));
  std::string text(bytes.begin(), bytes.end());
  if (text == "little") return false;
  if (text == "big") return true;
  return make_error(Rule::torch_bad_byteorder, "byteorder record is neither 'little' nor 'big'", b->data_offset, b->name);
}

}  // namespace

StorageRecords zip_storage_records(const container::ZipArchive& zip, const std::string& prefix) {
  StorageRecords out;
  out.table.kind = cdr::StorageTable::Kind::zip;
  out.table.key_prefix = prefix + "/data/";
  const std::string& dir = out.table.key_prefix;
  out.table.reserve(zip.entries.size());
  out.entries.reserve(zip.entries.size());
  for (const auto& e : zip.entries) {
    if (e.name.size() <= dir.size() || e.name.compare(0, dir.size(), dir) != 0) continue;
    const std::string_view key = std::string_view(e.name).substr(dir.size());
    // Views: the archive outlives the table. The first of duplicates, as find() does.
    if (out.table.add_view(key, e.name, e.uncompressed_size)) out.entries.push_back(&e);
  }
  return out;
}

Result<ParsedModel> read_torch_zip(std::span<const uint8_t> file, const ReadOptions& options) {
  ParsedModel parsed;
  parsed.format = container::Format::torch_zip;
  container::ZipLimits zip_limits;
  zip_limits.release_pages = options.input_is_mapped;
  container::CrcDeferred deferred;
  if (options.defer_storage_crc) deferred = deferrable_storage;
  MCDR_ASSIGN(ZipArchive zip, container::read_zip(file, parsed.findings, zip_limits, true, deferred));
  // The directory walk read every local header: in a checkpoint of small tensors that is every
  // page of the file. Drop them from this process's resident set (they stay in the page cache;
  // a later read faults them back) instead of holding the whole file while the pickle is decoded
  // and lifted (issue 14: about 350 bytes a tensor at 16 floats each). Only when the records
  // are small on average: in a file of large tensors the walk touched few pages, and dropping
  // pages the CRC pass or MTD's readers then fault back cost protect/restore of 1 GiB 0.7-1.1 s
  // of CPU (bench_mtd.sh).
  constexpr uint64_t kSmallRecords = 64 * 1024;  // mean bytes a zip entry
  if (options.input_is_mapped && file.size() < zip.entries.size() * kSmallRecords) io::release_mapped_pages(file);
  if (zip.entries.empty()) return make_error(Rule::torch_empty_archive, "zip archive has no entries");
  const std::string first = zip.entries.front().name;
  auto slash = first.find('/');
  std::string prefix = slash == std::string::npos ? std::string() : first.substr(0, slash);
  bool npz = std::all_of(zip.entries.begin(), zip.entries.end(), [](const ZipEntry& e) { return ends_with(e.name, ".npy"); });
  // torch.load hands archives with constants.pkl to torch.jit.load; older TorchScript
  // archives (model.json, attributes.pkl) and any archive with code/ are programs too.
  bool script = !prefix.empty() && (zip.find(prefix + "/constants.pkl") || zip.find(prefix + "/model.json") ||
                                    zip.find(prefix + "/attributes.pkl") ||
                                    std::any_of(zip.entries.begin(), zip.entries.end(), [&](const ZipEntry& e) {
                                      return e.name.rfind(prefix + "/code/", 0) == 0;
                                    }));
  // Only plain checkpoints leave the storage CRCs to the writer; npz and TorchScript readers
  // read their records themselves, so for them every CRC is checked now.
  bool crc_checked = !options.defer_storage_crc;
  if ((npz || script) && !crc_checked) {
    parsed.findings.clear();
    MCDR_ASSIGN(zip, container::read_zip(file, parsed.findings, zip_limits, true));
    crc_checked = true;
  }
  if (npz) {
    return read_npz(file, zip, std::move(parsed.findings), options);
  }
  if (slash == std::string::npos || slash == 0)
    return make_error(Rule::torch_no_archive_folder, "first zip entry '" + first + "' is not in a folder (not a torch checkpoint)");
  ArchiveView a{file, &zip, prefix};
  a.crc_checked = crc_checked;
  if (script) {
    MCDR_TRY(read_torchscript_archive(file, zip, a.prefix, options, parsed));
    return parsed;
  }
  const ZipEntry* pkl = zip.find(a.prefix + "/data.pkl");
  if (!pkl) return make_error(Rule::torch_no_data_pkl, "no '" + a.prefix + "/data.pkl' record");
  MCDR_TRY(check_version(a, parsed.findings));
  MCDR_ASSIGN(bool swap, big_endian(a));

  std::vector<uint8_t> pkl_scratch;
  MCDR_ASSIGN(auto pkl_bytes, a.read(*pkl, pkl_scratch));
  MCDR_ASSIGN(pickle::Program program, decode_stream(pkl_bytes, pkl->name, 0, options, parsed.findings, false));
  // The program keeps its own copy of every text: the stream's pages (about 100 bytes a tensor)
  // need not stay resident while it is lifted.
  if (options.input_is_mapped && pkl->method == 0) io::release_mapped_pages(pkl_bytes);

  // Container: the table of storage records. Lift: a pure function of the program and it.
  StorageRecords records = zip_storage_records(zip, a.prefix);
  cdr::LiftOptions lo;
  lo.entry = pkl->name;
  cdr::StorageBinding binding;
  // Consumed: freed as it is lifted (and whole once lifted), not held while the storages are bound.
  MCDR_ASSIGN(parsed.model, cdr::lift_consuming(std::move(program), records.table, lo, &binding));
  // Container again: each lifted storage gets its record's bytes. A stored record's CRC is
  // either checked now or, deferred, left in its ByteRange for the one copy that reads it.
  UsedRecords used{zip};
  parsed.ranges.reserve(parsed.model.storages.size());
  for (model::StorageId sid = 0; sid < parsed.model.storages.size(); ++sid) {
    if (binding[sid] == cdr::kNoRecord) continue;
    const ZipEntry& e = *records.entries[binding[sid]];
    model::Storage& s = parsed.model.storages[sid];
    used.mark(&e);
    std::vector<uint8_t> scratch;
    bool defer = !a.crc_checked && e.method == 0 && !swap;
    MCDR_ASSIGN(auto bytes, defer ? container::entry_bytes(zip, file, e, scratch) : a.read(e, scratch));
    if (swap || e.method != 0) {
      std::vector<uint8_t> owned(bytes.begin(), bytes.end());
      if (swap) byteswap(owned, s.dtype);
      s.set_owned(std::move(owned));
      continue;
    }
    s.bytes = bytes;
    ByteRange range = input_range(bytes, file, options);
    if (defer) range.expected_crc = e.crc32;
    parsed.ranges.set(sid, range);
  }
  if (swap) add_finding(parsed.findings, Severity::info, Rule::torch_big_endian, "big-endian storages converted to little-endian");
  report_records(zip, a.prefix, used, parsed.findings);
  MCDR_TRY(check_unused_storage_crcs(a, used, options.input_is_mapped, parsed.findings));
  return parsed;
}

}  // namespace modelcdr::formats
