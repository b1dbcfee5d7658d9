#include "mtd/mtd.hpp"

#include <libdeflate.h>
#include <zlib.h>
#include <sodium.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <ctime>
#include <atomic>
#include <chrono>
#include <cstring>
#include <functional>
#include <future>
#include <map>
#include <optional>
#include <system_error>
#include <nlohmann/json.hpp>
#include <set>
#include <thread>
#include <unordered_set>

#include "engine/run.hpp"
#include "engine/sink_access.hpp"
#include "formats/torch_zip_writer.hpp"
#include "io/atomic_output.hpp"
#include "io/mapped_file.hpp"
#include "mtd/cipher.hpp"
#include "mtd/digest.hpp"
#include "mtd/permute.hpp"
#include "mtd/pipeline.hpp"
#include "modelcdr/transform.hpp"

namespace modelcdr::mtd {

namespace {

using json = nlohmann::ordered_json;
using model::Model;
using model::StorageId;
using model::ValueId;
using model::ValueKind;

constexpr const char* kMapSchema = "modelcdr.mtd-map/3";
// Record digests: TreeDigest (mtd/digest.hpp) with one-permutation-block leaves. New maps are
// format 5, whose digests are all BLAKE3; format 4 maps (SHA-256) are still read.
constexpr HashScheme kWriteScheme = HashScheme::blake3;
static_assert(kMapFormatVersion == 5, "kWriteScheme is format 5's hash");

// Storages are streamed in chunks of this size: a multiple of a leaf for every element size
// (4096 elements x 16 bytes = 64 KiB), small enough that the ring (kRing x 256 KiB = 1 MiB) stays
// in L2 (1 MiB a core on the 2-core build VM, lscpu) between the gather, the hash and the writer's
// CRC: with 1 MiB chunks the gather's stores missed the cache and took 0.6 s of CPU per GiB (perf
// on protect).
constexpr size_t kStreamChunk = 256 << 10;
// Chunk buffers in flight between the helper thread and this one (RecordPipeline).
constexpr size_t kRing = 4;

Digest hash_bytes(HashScheme scheme, std::span<const uint8_t> b) { return hash_of(scheme, b); }

// `s` with invalid UTF-8 replaced by U+FFFD, as the JSON map stores it.
std::string utf8_safe(const std::string& s) {
  return json::parse(json(s).dump(-1, ' ', false, json::error_handler_t::replace)).get<std::string>();
}
std::string hex(const Digest& d) { return to_hex(d.data(), d.size()); }

size_t leaf_of(const model::Storage& s) { return tree_leaf_bytes(model::dtype_info(s.dtype).element_size); }

// Tree digest and, where the reader deferred it, the zip CRC-32 of one record, in one pass.
// One record as read: its storage and where its bytes lie in the input (the container's
// ByteRange beside the IR; nullptr when owned or unknown), whose deferred CRC the reader checks.
struct Record {
  const model::Storage* s = nullptr;
  const ByteRange* in = nullptr;
};

struct RecordSum {
  Digest digest;
  bool crc_ok = true;
};

// Reads a mapped record with pread into `buf` rather than through the mapping: in this
// whole-file pass, faulting pages in and unmapping them again (to bound RSS) cost the two
// threads page faults and TLB-shootdown interrupts (restore of 2.5 GiB: 9.7 s of CPU against
// 6.9 s for protect of the same file).
RecordSum sum_record(const Record& rec, HashScheme scheme, std::vector<uint8_t>& buf) {
  const model::Storage& s = *rec.s;
  const ByteRange* in = rec.in;
  const std::optional<uint32_t> expected_crc = in ? in->expected_crc : std::nullopt;
  RecordSum r;
  TreeDigest h(s.bytes.size(), leaf_of(s), scheme);
  uint32_t crc = 0;
  buf.resize(kStreamChunk);
  for (size_t off = 0; off < s.bytes.size(); off += kStreamChunk) {
    auto chunk = s.bytes.subspan(off, std::min(kStreamChunk, s.bytes.size() - off));
    bool copied = false;
    if (in && in->in_file()) {
      ssize_t got;
      do got = ::pread(in->fd, buf.data(), chunk.size(), static_cast<off_t>(in->offset + off));
      while (got < 0 && errno == EINTR);
      copied = got == static_cast<ssize_t>(chunk.size());
      // else: read through the mapping, which holds the same bytes
    }
    // A caller's memory may change while we read it: the digest and the CRC are computed from
    // one private copy of the chunk, never from two reads of the caller's bytes.
    if (!copied) std::memcpy(buf.data(), chunk.data(), chunk.size());
    chunk = std::span<const uint8_t>(buf.data(), chunk.size());
    h.add(off, chunk);
    if (expected_crc) crc = libdeflate_crc32(crc, chunk.data(), chunk.size());
  }
  r.digest = h.finish();
  r.crc_ok = !expected_crc || crc == *expected_crc;
  return r;
}

// Sums many records with up to 4 threads (the verification pass over a whole file).
std::vector<RecordSum> sum_all(const std::vector<Record>& records, HashScheme scheme) {
  std::vector<RecordSum> out(records.size());
  std::atomic<size_t> next{0};
  auto worker = [&] {
    std::vector<uint8_t> buf;
    for (size_t i; (i = next++) < records.size();) out[i] = sum_record(records[i], scheme, buf);
  };
  unsigned n = std::clamp(std::thread::hardware_concurrency(), 1u, 4u);
  std::vector<std::thread> pool;
  for (unsigned t = 1; t < n; ++t) pool.emplace_back(worker);
  worker();
  for (auto& t : pool) t.join();
  return out;
}

// ---- the file's layout ------------------------------------------------------------------------

// Where each record's payload sits in a file: offset and size, by record key.
using Ranges = std::vector<std::pair<uint64_t, uint64_t>>;

// The hash (the map's: BLAKE3 or SHA-256) of a file's layout: its size, the record ranges, and
// every byte outside the records (zip headers, data.pkl, the small members, the central
// directory), read by `read(off, len, buf)`. A re-zipped file or one with an extra or renamed member has another layout even where
// every record and the canonical data.pkl still match. Empty when the ranges are not disjoint.
std::optional<Digest> layout_digest(HashScheme scheme, uint64_t file_size, const Ranges& ranges,
                                    const std::function<bool(uint64_t, size_t, uint8_t*)>& read) {
  Hasher h(scheme);
  auto put64 = [&](uint64_t v) {
    uint8_t b[8];
    for (int i = 0; i < 8; ++i) b[i] = uint8_t(v >> (8 * i));
    h.update(std::span<const uint8_t>(b, 8));
  };
  put64(file_size);
  put64(ranges.size());
  for (const auto& [off, len] : ranges) put64(off), put64(len);
  Ranges sorted = ranges;
  std::sort(sorted.begin(), sorted.end());
  std::vector<uint8_t> buf(kStreamChunk);
  uint64_t pos = 0;
  sorted.emplace_back(file_size, 0);
  for (const auto& [off, len] : sorted) {
    if (off < pos || off > file_size || len > file_size - off) return std::nullopt;
    for (uint64_t at = pos; at < off;) {
      const size_t n = static_cast<size_t>(std::min<uint64_t>(buf.size(), off - at));
      if (!read(at, n, buf.data())) return std::nullopt;
      h.update(std::span<const uint8_t>(buf.data(), n));
      at += n;
    }
    pos = off + len;
  }
  return h.finish();
}

// The layout digest of the input as parsed (a file or a memory source): every record must be
// a stored span of it. The bytes outside the records are read into the digest's private
// buffer: from a file by pread on the descriptor that was mapped (never the path again: it may
// name another file by now), at its size now; from memory by one copy of each chunk.
std::optional<Digest> input_layout(const LoadedModel& loaded, const std::vector<Record>& records, HashScheme scheme) {
  const engine::InputView input = engine::input_of(loaded);
  const uint8_t* base = input.bytes.data();
  Ranges ranges;
  for (const auto& r : records) {
    // Where the record lies in the input (for a mapped file, its file offset): a record not
    // stored in place (decompressed, owned) has no layout.
    const auto at = reinterpret_cast<uintptr_t>(r.in ? r.in->view.data() : nullptr);
    const auto from = reinterpret_cast<uintptr_t>(base);
    const size_t n = r.s->bytes.size();
    if (!at || at < from || n > input.bytes.size() || at - from > input.bytes.size() - n) return std::nullopt;
    ranges.emplace_back(static_cast<uint64_t>(at - from), n);
  }
  if (input.fd < 0)
    return layout_digest(scheme, input.bytes.size(), ranges, [&](uint64_t off, size_t n, uint8_t* buf) {
      if (off > input.bytes.size() || n > input.bytes.size() - off) return false;
      std::memcpy(buf, base + off, n);
      return true;
    });
  struct stat st{};
  if (::fstat(input.fd, &st) != 0) return std::nullopt;
  return layout_digest(scheme, static_cast<uint64_t>(st.st_size), ranges, [&](uint64_t off, size_t n, uint8_t* buf) {
    return ::pread(input.fd, buf, n, static_cast<off_t>(off)) == static_cast<ssize_t>(n);
  });
}

// ---- names and structure --------------------------------------------------------------------

// Name of each storage: the state-dict path of the first tensor that views it ("layer1.0.conv1.weight").
std::vector<std::string> storage_names(const Model& m) {
  std::vector<std::string> names(m.storages.size());
  std::vector<bool> seen(m.values.size(), false);
  std::function<void(model::TensorId, const std::string&)> tensor = [&](model::TensorId tid, const std::string& path) {
    if (tid >= m.tensors.size()) return;
    const auto& t = m.tensors[tid];
    switch (t.kind) {
      case model::TensorKind::dense:
      case model::TensorKind::quantized_per_tensor:
        if (t.storage < names.size() && names[t.storage].empty()) names[t.storage] = path;
        break;
      case model::TensorKind::quantized_per_channel:
        if (t.storage < names.size() && names[t.storage].empty()) names[t.storage] = path;
        tensor(t.q_scales, path + ".q_scales");
        tensor(t.q_zero_points, path + ".q_zero_points");
        break;
      case model::TensorKind::sparse_coo:
        tensor(t.sparse_indices, path + ".indices");
        tensor(t.sparse_values, path + ".values");
        break;
      case model::TensorKind::sparse_csr:
      case model::TensorKind::sparse_csc:
      case model::TensorKind::sparse_bsr:
      case model::TensorKind::sparse_bsc:
        tensor(t.sparse_indices, path + ".compressed_indices");
        tensor(t.sparse_plain, path + ".plain_indices");
        tensor(t.sparse_values, path + ".values");
        break;
    }
  };
  auto join = [](const std::string& a, const std::string& b) { return a.empty() ? b : a + "." + b; };
  std::function<void(ValueId, const std::string&)> walk = [&](ValueId id, const std::string& path) {
    if (id == model::kNoValue || id >= m.values.size() || seen[id]) return;
    seen[id] = true;
    const auto& v = m.values[id];
    if (v.kind == ValueKind::tensor) {
      tensor(v.tensor, path);
      return;
    }
    for (size_t i = 0; i < v.entries.size(); ++i) {
      const auto& k = m.values[v.entries[i].first];
      std::string part = k.kind == ValueKind::string    ? k.text
                         : k.kind == ValueKind::integer ? std::to_string(k.i)
                                                        : "[" + std::to_string(i) + "]";
      walk(v.entries[i].second, join(path, part));
    }
    for (size_t i = 0; i < v.items.size(); ++i) walk(v.items[i], join(path, std::to_string(i)));
  };
  walk(m.root, "");
  return names;
}

bool is_float_storage(const model::Storage& s) {
  const auto& info = model::dtype_info(s.dtype);
  return info.is_float && (info.element_size == 1 || info.element_size == 2 || info.element_size == 4 ||
                           info.element_size == 8) &&
         s.nbytes % info.element_size == 0;
}

// Storages that may trade places: float, viewed by exactly one dense tensor that covers it
// exactly (offset 0, contiguous). Grouped by dtype and shape.
std::map<std::string, std::vector<StorageId>> swap_groups(const Model& m, const std::vector<std::string>& names) {
  std::vector<int> users(m.storages.size(), 0);
  std::vector<int64_t> user(m.storages.size(), -1);
  for (size_t t = 0; t < m.tensors.size(); ++t) {
    const auto& x = m.tensors[t];
    if (model::is_sparse(x.kind)) continue;
    if (x.storage >= m.storages.size()) continue;
    users[x.storage]++;
    user[x.storage] = static_cast<int64_t>(t);
  }
  std::map<std::string, std::vector<StorageId>> groups;
  for (StorageId s = 0; s < m.storages.size(); ++s) {
    if (users[s] != 1 || names[s].empty() || !is_float_storage(m.storages[s])) continue;
    const auto& t = m.tensors[static_cast<size_t>(user[s])];
    if (t.kind != model::TensorKind::dense || t.storage_offset != 0 || t.dtype != m.storages[s].dtype) continue;
    int64_t expect = 1;
    bool contiguous = t.stride.size() == t.shape.size();
    for (size_t d = t.shape.size(); contiguous && d-- > 0;) {
      if (t.shape[d] != 1 && t.stride[d] != expect) contiguous = false;
      expect *= t.shape[d];
    }
    if (!contiguous || uint64_t(expect) * model::dtype_info(t.dtype).element_size != m.storages[s].nbytes) continue;
    std::string k = model::dtype_info(t.dtype).name;
    for (auto d : t.shape) k += "," + std::to_string(d);
    groups[k].push_back(s);
  }
  return groups;
}

formats::TorchWriteOptions write_options(CompatTarget c) {
  formats::TorchWriteOptions wo;
  wo.compat = c == CompatTarget::torch1_13 ? formats::Compat::torch1_13 : formats::Compat::torch2;
  return wo;
}

std::string compat_name(CompatTarget c) { return c == CompatTarget::torch1_13 ? "torch1.13" : "torch2"; }

json architecture_json(const Model& m) {
  if (m.architecture.empty()) return nullptr;
  json modules = json::array();
  for (const auto& info : m.architecture)
    modules.push_back({{"path", info.path},
                       {"class", info.class_module + "." + info.class_name},
                       {"parameters", info.parameters},
                       {"buffers", info.buffers}});
  return {{"schema", "modelcdr.architecture/1"},
          {"note", "module classes recorded as data; nothing here is imported"},
          {"modules", modules}};
}

Status write_text(const std::string& path, const std::string& text, io::AtomicOutput& out) {
  MCDR_ASSIGN(out, io::AtomicOutput::create(path));
  return out.write(text);
}

// The written records of a model, in key order, as the writer will emit them.
struct Layout {
  std::vector<uint8_t> pkl;
  std::vector<StorageId> order;
  std::vector<model::Storage> extra;
  const ByteRanges* ranges = nullptr;  // the loaded input's (byte_ranges_of)
  const model::Storage& at(const Model& m, size_t key) const {
    StorageId sid = order[key];
    return sid < formats::kNewStorageBase ? m.storages[sid] : extra[sid - formats::kNewStorageBase];
  }
  // Where record `key`'s bytes lie in the input; nullptr for writer-created or owned ones.
  const ByteRange* range(const Model& m, size_t key) const {
    StorageId sid = order[key];
    return ranges && sid < formats::kNewStorageBase ? ranges->of(m, sid) : nullptr;
  }
  Record record(const Model& m, size_t key) const { return Record{&at(m, key), range(m, key)}; }
};

Result<Layout> layout_of(const Model& m, CompatTarget c) {
  Layout l;
  auto wo = write_options(c);
  MCDR_ASSIGN(l.pkl, formats::emit_data_pkl(m, wo, l.order, l.extra));
  return l;
}

Result<Key32> parse_key32(const json& j) {
  if (!j.is_string()) return make_error(Rule::map_payload, "bad key field");
  MCDR_ASSIGN(auto b, from_base64(j.get<std::string>()));
  if (b.size() != 32) return make_error(Rule::map_payload, "bad key length");
  Key32 k;
  std::memcpy(k.data(), b.data(), 32);
  sodium_memzero(b.data(), b.size());
  return k;
}

bool map_integrity_error(const Error& e) {
  return rule_id(e.rule).starts_with("map.");  // every map-parser rule (rules.def)
}

// Report codes (docs/MTD.md §6): one per diagnosis, so scripts need not parse messages.
std::string code_of_map_error(const Error& e) {
  if (e.rule == Rule::map_no_key) return "wrong-key";
  if (e.rule == Rule::map_corrupt) return "map-modified";
  if (e.rule == Rule::map_signature) return "bad-signature";
  if (e.rule == Rule::map_untrusted) return "untrusted-map";
  if (e.rule == Rule::map_version) return "unsupported-map";
  if (e.rule == Rule::map_not_a_map) return "map-is-model";
  if (e.rule == Rule::mtd_rollback) return "rollback";
  if (e.rule == Rule::mtd_expired) return "expired";
  return "bad-map";
}

struct MapEntry {
  uint32_t key;
  std::string name, dtype;
  uint64_t nbytes;
  bool permuted;
  uint32_t source;
  std::string after;  // tree digest of the record as protected (format 4 keeps no before-digest)
};

// The map's payload, validated field by field: a hostile (but validly sealed) map gets an
// error naming the field, never an exception, a trap or a huge allocation.
struct MapDoc {
  std::vector<MapEntry> entries;
  CompatTarget compat = CompatTarget::torch2;
  HashScheme scheme = kWriteScheme;  // of every digest below: the map format's (4: SHA-256, 5: BLAKE3)
  Key32 secret{};
  bool encrypted = false;
  std::string nt;            // digest of the canonical data.pkl (protect does not change it)
  std::string layout_after;  // layout digest of the protected file
  json architecture;
  // From the clear info (authenticated once the map opened): publisher version and expiry.
  std::optional<uint64_t> version;
  std::optional<int64_t> expires_unix;
  ~MapDoc() { sodium_memzero(secret.data(), secret.size()); }
};

constexpr size_t kMaxMapRecords = 1u << 20;
constexpr size_t kMaxNameBytes = 4096;

Error bad_field(const std::string& what) { return make_error(Rule::map_payload, "malformed map payload: " + what); }

bool is_hex_digest(const json& j) {
  if (!j.is_string()) return false;
  const auto& s = j.get_ref<const std::string&>();
  return s.size() == 64 && std::all_of(s.begin(), s.end(), [](char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'); });
}

const json* field(const json& o, const char* name, json::value_t type) {
  auto it = o.find(name);
  if (it == o.end()) return nullptr;
  if (type == json::value_t::number_unsigned) return it->is_number_unsigned() ? &*it : nullptr;
  return it->type() == type ? &*it : nullptr;
}

Result<std::string> string_field(const json& o, const char* name, size_t max = kMaxNameBytes) {
  const json* j = field(o, name, json::value_t::string);
  if (!j || j->get_ref<const std::string&>().size() > max) return bad_field(std::string("'") + name + "' missing or not a string");
  return j->get<std::string>();
}

Result<uint64_t> uint_field(const json& o, const char* name, uint64_t max) {
  const json* j = field(o, name, json::value_t::number_unsigned);
  if (!j || j->get<uint64_t>() > max) return bad_field(std::string("'") + name + "' missing, not an unsigned integer or too large");
  return j->get<uint64_t>();
}

Result<MapEntry> entry_of(const json& e, size_t index) {
  if (!e.is_object()) return bad_field("storages[" + std::to_string(index) + "] is not an object");
  MapEntry m;
  MCDR_ASSIGN(uint64_t key, uint_field(e, "key", kMaxMapRecords));
  MCDR_ASSIGN(uint64_t source, uint_field(e, "source", kMaxMapRecords));
  MCDR_ASSIGN(m.nbytes, uint_field(e, "nbytes", uint64_t(1) << 50));
  MCDR_ASSIGN(m.name, string_field(e, "name"));
  MCDR_ASSIGN(m.dtype, string_field(e, "dtype", 64));
  const json* permuted = field(e, "permuted", json::value_t::boolean);
  if (!permuted) return bad_field("storages[" + std::to_string(index) + "].permuted missing or not a boolean");
  if (!is_hex_digest(e.value("after", json())))
    return bad_field("storages[" + std::to_string(index) + "].after is not a 256-bit hex digest");
  if (key != index) return bad_field("storages out of order");
  m.key = static_cast<uint32_t>(key);
  m.source = static_cast<uint32_t>(source);
  m.permuted = permuted->get<bool>();
  m.after = e["after"].get<std::string>();
  return m;
}

// The payload's hash must be its format's (format 0: not known, either is accepted): a format 5
// map naming SHA-256, or the reverse, was not made by modelcdr.
Result<HashScheme> check_scheme(const json& doc, uint16_t format) {
  MCDR_ASSIGN(std::string hash, string_field(doc, "hash", 64));
  const json* perm = field(doc, "permutation", json::value_t::object);
  if (!perm) return bad_field("'permutation' missing");
  MCDR_ASSIGN(std::string scheme, string_field(*perm, "scheme", 64));
  std::optional<HashScheme> h;
  for (HashScheme x : {HashScheme::sha256, HashScheme::blake3})
    if (hash == tree_hash_name(x) && (format == 0 || map_hash_scheme(format) == x)) h = x;
  if (!h || scheme != kPermScheme)
    return make_error(Rule::map_unsupported, "the map uses a hash or permutation scheme this modelcdr does not know"
                                             " (or not the one of its format version)");
  return *h;
}

Result<std::unique_ptr<MapDoc>> parse_map_doc(const std::string& text, uint16_t format) {
  json doc = json::parse(text, nullptr, false);
  if (doc.is_discarded() || !doc.is_object()) return bad_field("not a JSON object");
  const json* schema = field(doc, "schema", json::value_t::string);
  if (!schema || schema->get<std::string>() != kMapSchema)
    return make_error(Rule::map_payload, "the map's payload is not a " + std::string(kMapSchema) + " document");
  auto d = std::make_unique<MapDoc>();
  MCDR_ASSIGN(d->scheme, check_scheme(doc, format));
  MCDR_ASSIGN(std::string compat, string_field(doc, "compat", 16));
  if (compat != "torch2" && compat != "torch1.13") return bad_field("'compat' must be torch2 or torch1.13");
  d->compat = compat == "torch1.13" ? CompatTarget::torch1_13 : CompatTarget::torch2;
  if (!doc.contains("secret")) return bad_field("'secret' missing");
  MCDR_ASSIGN(d->secret, parse_key32(doc["secret"]));
  const json* enc = field(doc, "encryption", json::value_t::object);
  if (enc) {
    MCDR_ASSIGN(std::string cipher, string_field(*enc, "cipher", 64));
    if (cipher != kRecordCipher) return make_error(Rule::map_unsupported, "the map uses a record cipher this modelcdr does not know");
    d->encrypted = true;
  } else if (!doc.contains("encryption") || !doc["encryption"].is_null()) {
    return bad_field("'encryption' must be null or an object");
  }
  const json* nt = field(doc, "non_tensor", json::value_t::object);
  if (!nt || !is_hex_digest(nt->value("digest", json()))) return bad_field("'non_tensor' digest missing");
  const json* layout = field(doc, "layout", json::value_t::object);
  if (!layout || !is_hex_digest(layout->value("after", json()))) return bad_field("'layout' missing");
  d->layout_after = (*layout)["after"].get<std::string>();
  d->nt = (*nt)["digest"].get<std::string>();
  d->architecture = doc.value("architecture", json());
  if (!d->architecture.is_null() && !d->architecture.is_object()) return bad_field("'architecture' must be null or an object");
  const json* st = field(doc, "storages", json::value_t::array);
  if (!st || st->size() > kMaxMapRecords) return bad_field("'storages' missing, not a list or too long");
  d->entries.reserve(st->size());
  for (size_t i = 0; i < st->size(); ++i) {
    MCDR_ASSIGN(MapEntry e, entry_of((*st)[i], i));
    d->entries.push_back(std::move(e));
  }
  // `source` must be a permutation of the keys, and only between records of equal size.
  std::vector<bool> used(d->entries.size(), false);
  for (const auto& e : d->entries) {
    if (e.source >= d->entries.size() || used[e.source]) return bad_field("swap table is not a permutation");
    if (d->entries[e.source].nbytes != e.nbytes || d->entries[e.source].dtype != e.dtype)
      return bad_field("swap between records of different size or dtype");
    used[e.source] = true;
  }
  sodium_memzero(doc["secret"].get_ref<std::string&>().data(), doc["secret"].get_ref<std::string&>().size());
  return d;
}

// The release fields of the clear info: "version" (unsigned or null) and "expires_unix"
// (integer or null); absent in maps protected without --version / --expires.
Status parse_release(const std::string& info_text, MapDoc& d) {
  json info = json::parse(info_text, nullptr, false);
  if (!info.is_object()) return ok_status();  // a map sealed without clear info (tests, tools)
  if (auto it = info.find("version"); it != info.end() && !it->is_null()) {
    if (!it->is_number_unsigned()) return bad_field("clear info 'version' is not an unsigned integer");
    d.version = it->get<uint64_t>();
  }
  if (auto it = info.find("expires_unix"); it != info.end() && !it->is_null()) {
    if (!it->is_number_integer()) return bad_field("clear info 'expires_unix' is not an integer");
    d.expires_unix = it->get<int64_t>();
  }
  return ok_status();
}

std::string utc_text(int64_t t) {
  std::time_t tt = static_cast<std::time_t>(t);
  std::tm tm{};
  char buf[32] = "?";
  if (gmtime_r(&tt, &tm)) std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

int64_t now_unix() {
  return std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
}

// Rollback and expiry (docs/MTD.md §4a), checked once the map is authenticated and before the
// model is read.
Status check_release(const MapDoc& d, const RestoreOptions& o) {
  if (o.min_version) {
    if (!d.version)
      return make_error(Rule::mtd_rollback, "the map names no publisher version, and --min-version " +
                                            std::to_string(*o.min_version) + " requires one (an older release?)");
    if (*d.version < *o.min_version)
      return make_error(Rule::mtd_rollback, "the map is for version " + std::to_string(*d.version) + ", older than --min-version " +
                                            std::to_string(*o.min_version) + " (rollback to an older release?)");
  }
  if (o.check_expiry && d.expires_unix && now_unix() >= *d.expires_unix)
    return make_error(Rule::mtd_expired, "the map expired at " + utc_text(*d.expires_unix) + ": ask the publisher for a current one");
  return ok_status();
}

// A map's sealed bytes from a file (bounded read) or from memory (one private copy, bounded
// alike), so that a map given as bytes meets every check a map file does.
Result<std::string> read_map_bytes(const Source& map) {
  if (!map.is_memory()) return read_small_file(map.name(), kMaxMapBytes);
  if (map.bytes().size() > kMaxMapBytes) return make_error(Rule::io_too_large, map.name() + " is too large");
  return std::string(reinterpret_cast<const char*>(map.bytes().data()), map.bytes().size());
}

// Opens and decodes a map; fills signer info.
Result<std::unique_ptr<MapDoc>> open_and_parse(const Source& map, const OpenOptions& o, MtdResult& r) {
  const std::string& map_path = map.name();
  auto sealed = read_map_bytes(map);
  if (!sealed.ok()) {
    if (sealed.error().rule == Rule::io_too_large)
      return make_error(Rule::map_format, map_path + " is larger than a map can be (" + std::to_string(kMaxMapBytes >> 20) + " MiB)");
    return sealed.error();
  }
  if (!looks_like_map(*sealed)) {
    const bool model = sealed->rfind("PK\x03\x04", 0) == 0 || (!sealed->empty() && uint8_t((*sealed)[0]) == 0x80);
    return make_error(model ? Rule::map_not_a_map : Rule::map_format,
                      model ? map_path + " is a model, not a map (arguments swapped?)" : map_path + " is not a modelcdr map");
  }
  MCDR_ASSIGN(OpenedMap opened, open_map(*sealed, o));
  MCDR_ASSIGN(auto doc, parse_map_doc(opened.payload, opened.format));
  // open_map checked the MAC (and the signature) over the clear info too: now it is trusted
  // as much as the payload.
  MCDR_ASSIGN(MapHeader header, read_map_header(*sealed));
  MCDR_TRY(parse_release(header.info, *doc));
  if (opened.signed_) {
    r.signer = fingerprint(opened.signer.data(), 32);
    r.signer_trusted = opened.signature_checked_against_trusted;
  }
  return doc;
}

// The digest of protected record k as it would be if the file were the restored original:
// the forward transform (permutation, then encryption) of original record source[k], tree-
// hashed. Verifying a restored file this way needs no second set of hashes in the map.
RecordSum restored_sum(const Record& rec, const MapDoc& doc, uint32_t k, std::vector<uint8_t>& buf) {
  const model::Storage& original = *rec.s;
  const MapEntry& e = doc.entries[k];
  const std::span<const uint8_t> in = original.bytes;
  const size_t esize = model::dtype_info(original.dtype).element_size;
  std::optional<Permuter> perm;
  if (e.permuted) {
    Key32 pk = derive_storage_key(doc.secret, e.name, k);
    perm.emplace(pk.data(), in.size() / esize, esize, false);
    sodium_memzero(pk.data(), pk.size());
  }
  std::optional<RecordCipher> cipher;
  if (doc.encrypted) {
    Key32 ck = derive_record_cipher_key(doc.secret, k);
    cipher.emplace(ck);
    sodium_memzero(ck.data(), ck.size());
  }
  TreeDigest h(in.size(), leaf_of(original), doc.scheme);
  buf.resize(kStreamChunk);
  io::populate_mapped_pages(in);  // the gather reads anywhere in it
  for (size_t off = 0; off < in.size(); off += kStreamChunk) {
    const size_t len = std::min(kStreamChunk, in.size() - off);
    if (perm) perm->produce(in.data(), buf.data(), off / esize, len / esize);
    else std::memcpy(buf.data(), in.data() + off, len);
    if (cipher) cipher->apply(buf.data(), buf.data(), len, off);
    h.add(off, std::span<const uint8_t>(buf.data(), len));
  }
  RecordSum r;
  r.digest = h.finish();
  if (rec.in && rec.in->expected_crc) r.crc_ok = libdeflate_crc32(0, in.data(), in.size()) == *rec.in->expected_crc;
  if (rec.in && rec.in->mapped) io::release_mapped_pages(in);
  return r;
}

// Whether record `from` of the file can be what protected record k was made from.
bool fits_entry(const model::Storage& s, const MapEntry& e) {
  return s.bytes.size() == e.nbytes && model::dtype_info(s.dtype).name == e.dtype && (!e.permuted || is_float_storage(s));
}

// The file's records checked against the map in one state: as the protected file (each
// record's digest against `after`, plus the zip layout) or as the restored original (each
// record transformed forward again, then against `after`).
struct StateCheck {
  std::vector<Mismatch> mismatches;
  size_t matching_records = 0;  // records that match
  bool nt_differs = false;
};

StateCheck check_state(const LoadedModel& input, const Model& m, const Layout& l, const MapDoc& doc,
                       const std::vector<std::string>& names_now, bool as_protected) {
  StateCheck c;
  const std::string against = as_protected ? "protected" : "restored";
  const auto& entries = doc.entries;
  const std::string pkl_hash = hex(hash_bytes(doc.scheme, l.pkl));
  if (pkl_hash != doc.nt) {
    c.nt_differs = true;
    Mismatch x;
    x.what = "non-tensor";
    x.name = "data.pkl";
    x.against = against;
    x.expected = doc.nt;
    x.actual = pkl_hash;
    x.detail = "the non-tensor data (state-dict keys, shapes, dtypes, metadata) differs from the map";
    c.mismatches.push_back(x);
  }
  if (l.order.size() != entries.size()) {
    Mismatch x;
    x.what = "structure";
    x.expected = std::to_string(entries.size());
    x.actual = std::to_string(l.order.size());
    x.detail = "the file has " + x.actual + " tensor records, the map " + x.expected;
    c.mismatches.push_back(x);
  }
  const size_t n = std::min(l.order.size(), entries.size());
  std::vector<Record> records(n);
  for (size_t k = 0; k < n; ++k) records[k] = l.record(m, k);
  if (as_protected && l.order.size() == entries.size()) {
    auto now = input_layout(input, records, doc.scheme);
    if (!now || hex(*now) != doc.layout_after) {
      Mismatch x;
      x.what = "layout";
      x.against = "protected";
      x.expected = doc.layout_after;
      x.actual = now ? hex(*now) : "";
      x.detail = "the zip layout differs from the protected file's (re-zipped, or members added, renamed or moved)";
      c.mismatches.push_back(x);
    }
  }
  // In the restored state protected record k is made from original record source[k]; a
  // mismatch there names that original.
  std::vector<uint32_t> from(n);
  std::vector<bool> fits(n, true);
  for (size_t k = 0; k < n; ++k) {
    from[k] = as_protected ? static_cast<uint32_t>(k) : entries[k].source;
    if (from[k] >= n) from[k] = static_cast<uint32_t>(k), fits[k] = false;
    fits[k] = fits[k] && fits_entry(*records[from[k]].s, entries[k]);
  }
  std::vector<RecordSum> sums;
  if (as_protected) {
    sums = sum_all(records, doc.scheme);
  } else {
    sums.resize(n);
    std::atomic<size_t> next{0};
    auto worker = [&] {
      std::vector<uint8_t> buf;
      for (size_t k; (k = next++) < n;)
        if (fits[k]) sums[k] = restored_sum(records[from[k]], doc, static_cast<uint32_t>(k), buf);
    };
    unsigned threads = std::clamp(std::thread::hardware_concurrency(), 1u, 4u);
    std::vector<std::thread> pool;
    for (unsigned t = 1; t < threads; ++t) pool.emplace_back(worker);
    worker();
    for (auto& t : pool) t.join();
  }
  for (size_t k = 0; k < n; ++k) {
    const uint32_t j = from[k];
    const auto& e = entries[j];  // the record as named in this state
    const auto size = records[j].s->bytes.size();
    const std::string h = fits[k] ? hex(sums[k].digest) : std::string();
    if (fits[k] && h == entries[k].after && sums[k].crc_ok) {
      ++c.matching_records;
      continue;
    }
    if (fits[k] && h == entries[k].after) ++c.matching_records;  // bytes right, zip directory edited
    Mismatch x;
    x.what = "tensor";
    x.name = e.name;
    x.key = static_cast<int64_t>(j);
    x.against = against;
    x.expected = entries[k].after;
    x.actual = h;
    if (size != e.nbytes)
      x.detail = "size " + std::to_string(size) + " bytes, map says " + std::to_string(e.nbytes);
    else if (!fits[k])
      x.detail = "dtype " + std::string(model::dtype_info(records[j].s->dtype).name) + ", map says " + e.dtype;
    else if (!sums[k].crc_ok)
      x.detail = "tensor bytes changed (the record's CRC-32 no longer matches the zip directory)";
    else if (j < names_now.size() && !names_now[j].empty() && names_now[j] != e.name)
      x.detail = "record now belongs to '" + names_now[j] + "'";
    else
      x.detail = "tensor bytes changed";
    c.mismatches.push_back(x);
  }
  return c;
}

// Not one record matches in either state (and, for a one-record map, neither does the
// non-tensor data): this is not the file the map was made for, which one message says better
// than a line per tensor.
bool is_wrong_file(const MapDoc& doc, const StateCheck& a, const StateCheck& b) {
  return !doc.entries.empty() && a.matching_records == 0 && b.matching_records == 0 &&
         (a.nt_differs || doc.entries.size() >= 2);
}
// Names by record key for the model as it is now.
std::vector<std::string> names_by_key(const Model& m, const Layout& l) {
  auto by_sid = storage_names(m);
  std::vector<std::string> out(l.order.size());
  for (size_t k = 0; k < l.order.size(); ++k)
    if (l.order[k] < by_sid.size()) out[k] = by_sid[l.order[k]];
  return out;
}

MtdResult fail(MtdResult r, Error e) {
  r.outcome = Outcome::error;
  r.error = std::move(e);
  return r;
}

MtdResult mismatch_file(MtdResult r, const Error& e) {
  Mismatch x;
  x.what = "file";
  x.detail = "the file cannot be read as a model: " + e.describe();
  r.code = "unreadable-file";
  r.mismatches.push_back(x);
  r.outcome = Outcome::mismatch;
  return r;
}

}  // namespace

Status check_map_payload(const std::string& text) {
  MCDR_TRY(parse_map_doc(text, 0));
  return ok_status();
}

Key32 derive_storage_key(const Key32& secret, const std::string& name, uint32_t key) {
  return derive_subkey(secret, {"modelcdr/mtd/v1/perm", name, std::to_string(key)});
}

namespace {

// The input, loaded and disarmed once for every copy protect makes of it.
struct LoadedInput {
  LoadedModelPtr loaded;
  Layout layout;
  std::vector<std::string> by_sid, names;
  std::vector<int64_t> key_of_sid;
  FileReport file;
  // The first copy checks the CRCs the reader deferred; later copies of the same input need not.
  bool crc_checked = false;
};

std::optional<Error> load_source(const Source& input, const ProtectOptions& options, LoadedInput& src) {
  DisarmOptions dopt;
  dopt.compat = options.compat;
  dopt.allow_trailing_data = options.allow_trailing_data;
  // CRCs are checked as the payloads stream through (one read of each byte, not two).
  auto loaded = engine::run_load(input, dopt, src.file, /*defer_storage_crc=*/true,
                                 options.context ? *options.context : engine::process_context());
  if (!loaded.ok()) return loaded.error();
  src.loaded = std::move(*loaded);
  Model& m = model_of(*src.loaded);
  auto layout = layout_of(m, options.compat);
  if (!layout.ok()) return layout.error();
  src.layout = std::move(*layout);
  src.layout.ranges = &byte_ranges_of(*src.loaded);
  const Layout& l = src.layout;
  src.by_sid = storage_names(m);
  const size_t n = l.order.size();
  src.names.assign(n, "");
  src.key_of_sid.assign(m.storages.size(), -1);
  for (size_t k = 0; k < n; ++k) {
    StorageId sid = l.order[k];
    if (sid < m.storages.size()) {
      src.key_of_sid[sid] = static_cast<int64_t>(k);
      src.names[k] = src.by_sid[sid];
    }
    if (src.names[k].empty()) src.names[k] = "data/" + std::to_string(k);
    // The map is JSON: a name that is not UTF-8 is stored (and its key derived) in the
    // replaced form, so that restore derives the same key from what it reads.
    src.names[k] = utf8_safe(src.names[k]);
  }
  return std::nullopt;
}

// The protected file's digest for the clear info: the map's hash over the layout digest (every byte
// outside the records, and where the records are) and each record's tree digest, in key order.
// It names the whole file without hashing its bytes a second time.
Digest protected_digest(HashScheme scheme, const Digest& layout, const std::vector<Digest>& after) {
  Hasher h(scheme);
  static const char kLabel[] = "modelcdr-mtd protected file";
  h.update(std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(kLabel), sizeof kLabel));
  h.update(layout);
  for (const auto& d : after) h.update(d);
  return h.finish();
}

// Where protect's and restore's record stages read a record from: into private memory (the
// staging buffer), with pread from the input file or copied out of the mapping. Protect reads
// by pread: its input is usually a file read from disk, whose page cache is large folios either
// way, and pread keeps the record from ever being resident. Restore copies out of the mapping,
// populated first (MADV_POPULATE_READ, io::populate_mapped_pages): its input is usually the
// protected file just written, whose page cache is the small folios of 256 KiB write() calls, and
// pread looked each up again for every 16 KiB source block (filemap_get_read_batch, xas_load:
// about 3% of restore's samples in perf); one populate call maps them all at once. Restore of
// 1 GiB, pread against the mapping (bench/README.md, 2026-12-03): 10 alternating rounds, 1.01 ->
// 0.98 CPU-s (sys 0.61 -> 0.41, the copy moves to user space); bench_mtd.sh 0.62 -> 0.55 s of
// wall. Protect read by mapping showed no gain. (Without populating, the faults of a gather that
// reads anywhere in the record cost more: 1.33 CPU-s.) Used on the helper thread only; `failed`
// is read once the pipeline has stopped.
struct SourceRead {
  std::span<const uint8_t> in;
  int fd = -1;
  uint64_t offset = 0;  // of the record in the file
  bool failed = false;
  // Records under this size stay on the mapping: in a checkpoint of many small tensors a pread
  // each would be a system call a tensor (bench/bench_tensor_count.sh), where mapped pages come
  // back many at a time.
  static constexpr size_t kPreadMin = 64 << 10;
  enum class From { pread, mapping };
  SourceRead(std::span<const uint8_t> bytes, const ByteRange* r, From from) : in(bytes) {
    if (r && r->in_file()) offset = r->offset;
    if (from == From::pread && r && r->in_file() && r->view.data() == bytes.data() && bytes.size() >= kPreadMin)
      fd = r->fd;
  }
  // Copies n bytes at byte `at` of the record to dst; on a short read dst is zeroed (the record
  // digest then fails too) and `failed` set.
  void copy(uint8_t* dst, size_t at, size_t n) {
    if (fd < 0) return (void)std::memcpy(dst, in.data() + at, n);
    for (size_t done = 0; done < n;) {
      const ssize_t got = ::pread(fd, dst + done, n - done, static_cast<off_t>(offset + at + done));
      if (got < 0 && errno == EINTR) continue;
      if (got <= 0) {
        std::memset(dst, 0, n);
        failed = true;
        return;
      }
      done += static_cast<size_t>(got);
    }
  }
};

// What a record's stage needs before its first byte (its permutation, drawn from the key
// stream, and its cipher), built for the record after this one on a third thread while this one
// streams. Built in line, it left one core idle between records: restore of 1 GiB (16 x 64 MiB
// float32) spent 2.9 ms a record building its inverse permutation and 3.2 ms mapping it, against
// 39 ms streaming it (steady_clock around each step); built ahead, taking it costs 0.07 ms. The
// writer takes records in key order, so the guess is key + 1; any other key is built when asked.
// Only records of kAheadMin bytes and more are built ahead: for a checkpoint of many small
// tensors a thread each would cost more than it saves.
template <class T>
class NextRecord {
 public:
  using Make = std::function<std::unique_ptr<T>(uint32_t key)>;
  using Size = std::function<uint64_t(uint32_t key)>;
  static constexpr uint64_t kAheadMin = 4 << 20;
  NextRecord(Make make, Size size) : make_(std::move(make)), size_(std::move(size)) {}
  NextRecord(const NextRecord&) = delete;
  NextRecord& operator=(const NextRecord&) = delete;
  ~NextRecord() {
    if (next_.valid()) next_.wait();
  }
  // Record `key`'s: the one built ahead when it was this key, else built now; then starts on
  // key + 1 (below `count`).
  std::unique_ptr<T> take(uint32_t key, size_t count) {
    std::unique_ptr<T> t;
    if (next_.valid()) {
      std::unique_ptr<T> got = next_.get();
      if (next_key_ == key) t = std::move(got);
    }
    if (!t) t = make_(key);
    if (size_t(key) + 1 < count && size_(key + 1) >= kAheadMin) {
      try {
        next_ = std::async(std::launch::async, make_, key + 1);
        next_key_ = key + 1;
      } catch (const std::system_error&) {  // no thread to be had: it is built when asked
      }
    }
    return t;
  }

 private:
  Make make_;
  Size size_;
  uint32_t next_key_ = 0;
  std::future<std::unique_ptr<T>> next_;
};

// Protect's per-record state from the key (NextRecord): its permutation and its record cipher.
struct ProtectPlan {
  size_t bytes = 0, esize = 0;  // of the record it was built for
  std::optional<Permuter> perm;
  std::optional<RecordCipher> cipher;
};

// MTD permute as a Transform's record stage (modelcdr/transform.hpp): the pipeline's torch
// writer calls copy_record for each record, which writes the record's protected bytes (the
// swapped-in source record, permuted, optionally encrypted) and keeps their tree digest.
// Per record, one pipeline over two cores (mtd/pipeline.hpp): the helper reads the input in
// order and gathers the permuted (and encrypted) chunk into a ring slot; both cores hash its
// leaves; this thread hands it to the writer. Each byte is read once and hashed once.
class ProtectRecords final : public Transform {
 public:
  ProtectRecords(const Model& m, const Layout& l, const std::vector<std::string>& names, const std::vector<uint32_t>& source,
                 const std::vector<bool>& permuted, const Key32& secret, bool encrypt, bool crc_checked)
      : after(l.order.size()), m_(m), l_(l), names_(names), source_(source), permuted_(permuted), secret_(secret),
        encrypt_(encrypt), crc_checked_(crc_checked), written_(l.order.size()), pipe_(kStreamChunk, kRing, kWriteScheme),
        plans_([this](uint32_t key) { return plan(key); },
               [this](uint32_t key) { return uint64_t(l_.at(m_, source_[key]).bytes.size()); }) {}
  const char* name() const override { return "mtd-permute"; }
  bool has_record_stage() const override { return true; }
  Status copy_record(const RecordCopy& rec, const PayloadSink& sink) override;
  // The layout digest of the output as written, then `seal` (the map: sealed and committed).
  Status finish(const WrittenOutput& out, FileReport&) override {
    auto d = layout_digest(kWriteScheme, out.size, written_, [&](uint64_t off, size_t n, uint8_t* buf) {
      return out.read(off, std::span<uint8_t>(buf, n)).ok();
    });
    if (!d) return make_error(Rule::mtd_internal, "the written records overlap");
    return seal ? seal(*d) : ok_status();
  }
  void after_commit(bool ok) override {
    if (committed) committed(ok);
  }

  std::vector<Digest> after;  // each record's tree digest as protected, by key
  std::function<Status(const Digest& layout_after)> seal;
  std::function<void(bool)> committed;

 private:
  const Model& m_;
  const Layout& l_;
  const std::vector<std::string>& names_;
  const std::vector<uint32_t>& source_;
  const std::vector<bool>& permuted_;
  const Key32& secret_;
  const bool encrypt_;
  // The first copy of an input checks the CRCs the reader deferred; later copies need not.
  const bool crc_checked_;
  Ranges written_;  // where each record's payload lands in the output (for the layout digest)
  RecordPipeline pipe_;
  std::unique_ptr<ProtectPlan> plan(uint32_t key) const;
  NextRecord<ProtectPlan> plans_;  // last: its destructor waits for a plan still being built
};

std::unique_ptr<ProtectPlan> ProtectRecords::plan(uint32_t key) const {
  auto p = std::make_unique<ProtectPlan>();
  const model::Storage& src = l_.at(m_, source_[key]);
  const size_t esize = model::dtype_info(src.dtype).element_size;
  p->bytes = src.bytes.size();
  p->esize = esize;
  if (permuted_[key]) {
    Key32 pk = derive_storage_key(secret_, names_[key], key);
    p->perm.emplace(pk.data(), src.bytes.size() / esize, esize, false);
    sodium_memzero(pk.data(), pk.size());
  }
  if (encrypt_) {  // encrypt after permuting: the keystream runs over the output in order
    Key32 ck = derive_record_cipher_key(secret_, key);
    p->cipher.emplace(ck);
    sodium_memzero(ck.data(), ck.size());
  }
  return p;
}

Status ProtectRecords::copy_record(const RecordCopy& rec, const PayloadSink& sink) {
  const size_t n = l_.order.size();
  const uint32_t key = rec.key;
  const model::Storage& s = *rec.storage;
  if (key >= n) return make_error(Rule::mtd_internal, "writer and layout disagree on the records");
  written_[key] = {rec.output_offset, s.bytes.size()};
  const model::Storage& src = source_[key] == key ? s : l_.at(m_, source_[key]);
  const ByteRange* src_range = source_[key] == key ? rec.range : l_.range(m_, source_[key]);
  if (src.bytes.size() != s.bytes.size()) return make_error(Rule::mtd_internal, "swap between different sizes");
  const std::span<const uint8_t> in = src.bytes;
  const size_t esize = model::dtype_info(src.dtype).element_size;
  const std::unique_ptr<ProtectPlan> plan = plans_.take(key, n);
  if (plan->bytes != in.size() || plan->esize != esize) return make_error(Rule::mtd_internal, "writer and layout disagree on a record");
  std::optional<Permuter>& perm = plan->perm;
  std::optional<RecordCipher>& cipher = plan->cipher;
  const size_t leaf = leaf_of(src);
  TreeDigest after_sum(in.size(), leaf, kWriteScheme);
  uint32_t crc = 0;
  const bool check_crc = !crc_checked_ && src_range && src_range->expected_crc.has_value();
  SourceRead read(in, src_range, SourceRead::From::pread);
  if (perm && in.size() % esize != 0) read.fd = -1;  // (never: storages hold whole elements) keep the mapped path
  // A permuted record read by pread: the gather reads its source blocks out of order, each once
  // (SourceLoad), so the CRC the reader deferred is taken per block, on the copy just read, and
  // combined in file order at the end (zlib's crc32_combine_op: the same CRC-32 as libdeflate's).
  const size_t block_bytes = size_t(kPermBlock) * esize;
  std::vector<uint32_t> block_crc;
  Permuter::SourceLoad load;
  if (perm && read.fd >= 0) {
    block_crc.assign(perm->blocks() + 1, 0);  // + the tail
    load = [&](const uint8_t*, uint8_t* dst, size_t nbytes, size_t at) {
      read.copy(dst, at, nbytes);
      if (check_crc) block_crc[at / block_bytes] = libdeflate_crc32(0, dst, nbytes);
    };
  }
  // Helper thread, in order: the protected chunk into the slot (read once, into private memory
  // where pread can), whose leaves are then hashed by either core, and the CRC the reader
  // deferred over the input as read.
  auto prepare = [&](size_t off, size_t len, ChunkSlot& slot) {
    uint8_t* o = slot.out.data();
    if (perm && read.fd >= 0) {
      perm->produce(in.data(), o, off / esize, len / esize, &load);
    } else if (perm) {
      if (check_crc) crc = libdeflate_crc32(crc, in.data() + off, len);
      perm->produce(in.data(), o, off / esize, len / esize);
    } else {
      read.copy(o, off, len);  // hashed, checked and written from one private copy
      slot.crc = libdeflate_crc32(0, o, len);
      if (check_crc) crc = static_cast<uint32_t>(crc32_combine64(crc, slot.crc, static_cast<z_off64_t>(len)));
    }
    if (cipher) cipher->apply(o, o, len, off);
    // The zip directory's CRC of the chunk as written, taken here while it is in this core's
    // cache (the writer would otherwise read it again from memory). A chunk written unchanged
    // has the input's CRC, just taken.
    if (perm || cipher) slot.crc = libdeflate_crc32(0, o, len);
    for (size_t at = 0; at < len; at += leaf) slot.leaves.push_back({(off + at) / leaf, o + at, std::min(leaf, len - at)});
  };
  auto consume = [&](const ChunkSlot& slot) {
    for (size_t i = 0; i < slot.leaves.size(); ++i) after_sum.put(slot.leaves[i].index, slot.digests[i]);
    return sink(std::span<const uint8_t>(slot.out.data(), slot.length), slot.crc);
  };
  if (read.fd < 0) io::populate_mapped_pages(in);  // both threads read it (the gather anywhere in it)
  Status streamed = pipe_.run(in.size(), prepare, consume);
  if (src_range && src_range->mapped) io::release_mapped_pages(in);  // never heap memory: DONTNEED would zero it
  MCDR_TRY(streamed);
  if (read.failed)
    return make_error(Rule::io_read, "cannot read the input (changed while being protected?)", read.offset, src.source);
  if (check_crc && !block_crc.empty()) {
    const uLong op = crc32_combine_gen(static_cast<z_off_t>(block_bytes));
    uLong c = 0;
    for (size_t j = 0; j < perm->blocks(); ++j) c = crc32_combine_op(c, block_crc[j], op);
    const size_t tail = in.size() - perm->blocks() * block_bytes;
    if (tail) c = crc32_combine(c, block_crc.back(), static_cast<z_off_t>(tail));
    crc = static_cast<uint32_t>(c);
  }
  if (check_crc && crc != *src_range->expected_crc)
    return make_error(Rule::zip_bad_crc, "CRC-32 of the storage record does not match the zip directory", 0, src.source);
  after[key] = after_sum.finish();
  return ok_status();
}

// One protected copy of `src`, with its own fresh secret and swaps, and its own map.
MtdResult protect_copy(LoadedInput& src, Sink& output, Sink& map, const SealOptions& seal,
                       const ProtectOptions& options, const CopyInfo& copy) {
  MtdResult r;
  r.file = src.file;
  LoadedInput& cached = src;
  const std::string& map_path = map.name();
  // Memory sinks hold nothing until both outputs are good (engine.hpp's Sink contract).
  if (output.is_memory()) SinkAccess::clear(output);
  if (map.is_memory()) SinkAccess::clear(map);
  Model& m = model_of(*src.loaded);
  const Layout& l = src.layout;
  const auto& by_sid = src.by_sid;
  const auto& names = src.names;
  const auto& key_of_sid = src.key_of_sid;
  const size_t n = l.order.size();

  // Fresh secret for this copy; swaps drawn with randombytes_uniform (unbiased).
  Key32 secret;
  randombytes_buf(secret.data(), secret.size());
  std::vector<uint32_t> source(n);
  for (size_t k = 0; k < n; ++k) source[k] = static_cast<uint32_t>(k);
  for (auto& [shape, members] : swap_groups(m, by_sid)) {
    std::vector<uint32_t> keys;
    for (auto sid : members)
      if (key_of_sid[sid] >= 0) keys.push_back(static_cast<uint32_t>(key_of_sid[sid]));
    if (keys.size() < 2) continue;
    std::vector<uint32_t> perm = keys;
    for (size_t i = perm.size(); i > 1; --i) std::swap(perm[i - 1], perm[randombytes_uniform(static_cast<uint32_t>(i))]);
    for (size_t i = 0; i < keys.size(); ++i) source[keys[i]] = perm[i];
  }

  std::vector<bool> permuted(n, false);
  for (size_t k = 0; k < n; ++k) permuted[k] = is_float_storage(l.at(m, k));
  // The record stage of the pipeline's torch writer (ProtectRecords): each byte is read once
  // and hashed once. The map is sealed and committed in its finish(), before the output.
  auto records = std::make_shared<ProtectRecords>(m, l, names, source, permuted, secret, options.encrypt, cached.crc_checked);
  io::AtomicOutput map_out;
  bool map_committed = false;
  std::vector<uint8_t> sealed_map;  // a memory map's bytes, handed over once the output is committed
  records->seal = [&](const Digest& layout_after) -> Status {
    std::string pkl_hash = hex(hash_bytes(kWriteScheme, l.pkl));
    json storages = json::array();
    json swaps = json::array();
    for (size_t k = 0; k < n; ++k) {
      const auto& s = l.at(m, k);
      storages.push_back({{"key", k},
                          {"name", names[k]},
                          {"dtype", model::dtype_info(s.dtype).name},
                          {"nbytes", s.bytes.size()},
                          {"permuted", bool(permuted[k])},
                          {"source", source[k]},
                          {"after", hex(records->after[k])}});
      if (source[k] != k) {
        swaps.push_back({{"at", names[k]}, {"holds", names[source[k]]}});
        ++r.swapped;
      }
      if (permuted[k]) ++r.permuted;
    }
    r.storages = n;
    json payload = {
        {"schema", kMapSchema},
        {"tool", std::string("modelcdr ") + kVersion},
        {"created_unix", static_cast<int64_t>(std::chrono::duration_cast<std::chrono::seconds>(
                             std::chrono::system_clock::now().time_since_epoch()).count())},
        {"secret", to_base64(secret.data(), secret.size())},
        {"permutation",
         {{"scheme", kPermScheme},
          {"block_elements", kPermBlock},
          {"tables", kPermTables},
          {"key_derivation", "BLAKE2b-256 keyed by secret over 'modelcdr/mtd/v1/perm' 0 name 0 key"},
          {"stream", "ChaCha20 (crypto_stream_chacha20), nonce 0"}}},
        {"encryption", options.encrypt ? json{{"cipher", kRecordCipher},
                                             {"key_derivation", "BLAKE2b-256 keyed by secret over 'modelcdr/mtd/v2/enc' 0 key"},
                                             {"counter", "starts at 0 in every record; applied after the permutation"}}
                                       : json(nullptr)},
        {"hash", tree_hash_name(kWriteScheme)},
        {"compat", compat_name(options.compat)},
        {"layout", {{"what", "BLAKE3 of the file size, the record ranges and every byte outside the records"},
                    {"after", hex(layout_after)}}},
        {"non_tensor", {{"what", "archive/data.pkl as emitted by modelcdr from the IR (no tensor payloads)"},
                        {"digest", pkl_hash}}},
        {"signer", seal.signer ? json(to_base64(seal.signer->ed25519_public.data(), 32)) : json(nullptr)},
        {"architecture", architecture_json(m)},
        {"storages", storages},
        {"swaps", swaps},
  };
    std::string text = payload.dump(-1, ' ', false, json::error_handler_t::replace);
    sodium_memzero(secret.data(), secret.size());
    // Readable without a key (`modelcdr map info`), bound to the MAC and the signature: nothing
    // secret (the protected file's hash is anyone's to compute; the copy name is the publisher's).
    SealOptions so = seal;
    so.info = json{{"schema", "modelcdr.mtd-map-info/1"},
                   {"tool", std::string("modelcdr ") + kVersion},
                   {"created_unix", payload["created_unix"]},
                   {"model_id", copy.model_id},
                   {"copy", copy.name.empty() ? json(nullptr) : json(utf8_safe(copy.name))},
                   {"protected_digest", hex(protected_digest(kWriteScheme, layout_after, records->after))},
                   {"records", n},
                   {"encrypted", options.encrypt},
                   {"version", options.version ? json(*options.version) : json(nullptr)},
                   {"expires_unix", options.expires_unix ? json(*options.expires_unix) : json(nullptr)}}
                  .dump(-1, ' ', false, json::error_handler_t::replace);
    if (so.info.size() > kMaxMapInfo) return make_error(Rule::map_info, "copy name too long for the map's clear info");
    auto sealed = seal_map(text, so);
    sodium_memzero(text.data(), text.size());
    if (!sealed.ok()) return sealed.error();
    if (seal.signer) r.signer = fingerprint(seal.signer->ed25519_public.data(), 32);
    if (map.is_memory()) {
      sealed_map.assign(sealed->begin(), sealed->end());
      return ok_status();
    }
    MCDR_TRY(write_text(map_path, *sealed, map_out));
    // Commit the map first: a protected model without its map would be lost.
    MCDR_TRY(map_out.commit());
    map_committed = true;
    return ok_status();
  };
  records->committed = [&](bool ok) {
    if (!ok && map_committed) ::unlink(map_path.c_str());
    if (ok && map.is_memory()) SinkAccess::fill(map, std::move(sealed_map), {});
  };
  DisarmOptions dopt;
  dopt.compat = options.compat;
  dopt.transforms = {records};
  const engine::RunContext& ctx = options.context ? *options.context : engine::process_context();
  // The write's own notes (conversions the writer reports) stay out of protect's report, as
  // before the write went through the pipeline; only where it wrote is taken.
  FileReport written;
  if (auto s = engine::run_write(m, output, dopt, written, src.loaded.get(), ctx); !s.ok()) return fail(r, s.error());
  r.file.architecture = written.architecture;
  cached.crc_checked = true;
  r.output = output.name();
  r.file.output = output.name();
  for (const auto& f : r.file.findings)
    if (f.severity >= Severity::low) r.file.removed.push_back(f);
  r.outcome = Outcome::ok;
  return r;
}

// (still in the unnamed namespace opened above protect_impl)

struct Prepared {
  LoadedModelPtr loaded;
  std::unique_ptr<MapDoc> doc;
  Layout layout;
  std::vector<std::string> names_now;
};

MtdResult map_failure(MtdResult& r, const std::string& map_path, const Error& e) {
  r.code = code_of_map_error(e);
  // A swapped argument or a missing trust decision is a usage problem, not an integrity one.
  if (e.rule == Rule::map_not_a_map || e.rule == Rule::map_untrusted) return fail(r, e);
  Mismatch x;
  x.what = "map";
  x.name = map_path;
  x.detail = e.message + " [" + std::string(rule_id(e.rule)) + "]";
  r.mismatches.push_back(x);
  r.outcome = Outcome::mismatch;
  return r;
}

// A model file given where the map belongs, or a map given as the model, is named as such.
bool file_is_map(const Source& input) {
  if (input.is_memory()) {
    const auto b = input.bytes().first(std::min<size_t>(8, input.bytes().size()));
    return looks_like_map(std::string(reinterpret_cast<const char*>(b.data()), b.size()));
  }
  auto head = read_small_file_prefix(input.name(), 8);
  return head.ok() && looks_like_map(*head);
}

// The map's claims about each record must fit the record they describe: only float records of
// the dtype the map names are permuted (a hostile map marking a complex128 record `permuted`
// is refused here instead of reaching the permutation).
Status check_entries_fit(const Model& m, const Layout& l, const MapDoc& doc) {
  for (size_t k = 0; k < doc.entries.size() && k < l.order.size(); ++k) {
    const auto& e = doc.entries[k];
    const auto& s = l.at(m, k);
    if (e.nbytes != s.bytes.size() || e.dtype != model::dtype_info(s.dtype).name)
      return make_error(Rule::map_payload, "the map describes archive/data/" + std::to_string(k) + " as " + e.dtype + " of " +
                                           std::to_string(e.nbytes) + " bytes, the file holds " +
                                           model::dtype_info(s.dtype).name + " of " + std::to_string(s.bytes.size()));
    if (e.permuted && !is_float_storage(s))
      return make_error(Rule::map_payload, "the map marks archive/data/" + std::to_string(k) + " (" + e.dtype +
                                           ") as permuted, but only float records are");
  }
  return ok_status();
}

// Shared first half of restore and verify: open the map, parse the input, compare hashes.
std::optional<MtdResult> prepare(const Source& input, const Source& map, const RestoreOptions& o,
                                 MtdResult& r, Prepared& p) {
  const std::string& map_path = map.name();
  if (sodium_init() < 0) return fail(r, make_error(Rule::crypto_init, "libsodium failed to initialise"));
  if (file_is_map(input)) {
    r.code = "input-is-map";
    return fail(r, make_error(Rule::mtd_input_is_map, input.name() + " is a map, not a model (arguments swapped?)"));
  }
  auto doc = open_and_parse(map, o.open, r);
  if (!doc.ok()) {
    if (map_integrity_error(doc.error())) return map_failure(r, map_path, doc.error());
    return fail(r, doc.error());
  }
  p.doc = std::move(*doc);
  if (auto rel = check_release(*p.doc, o); !rel.ok()) return map_failure(r, map_path, rel.error());
  if (!input.is_memory() && ::access(input.name().c_str(), R_OK) != 0)
    return fail(r, make_error(Rule::io_open, "cannot open " + input.name()));
  DisarmOptions dopt;
  dopt.compat = p.doc->compat;
  // CRCs are checked in the hashing pass (compare), so each byte is read once there.
  auto loaded = engine::run_load(input, dopt, r.file, /*defer_storage_crc=*/true,
                                 o.context ? *o.context : engine::process_context());
  if (!loaded.ok()) return mismatch_file(r, loaded.error());
  p.loaded = std::move(*loaded);
  Model& m = model_of(*p.loaded);
  auto layout = layout_of(m, p.doc->compat);
  if (!layout.ok()) return mismatch_file(r, layout.error());
  p.layout = std::move(*layout);
  p.layout.ranges = &byte_ranges_of(*p.loaded);
  p.names_now = names_by_key(m, p.layout);
  r.storages = p.doc->entries.size();
  return std::nullopt;
}

MtdResult wrong_file(MtdResult& r, const std::string& input, const Prepared& p) {
  Mismatch x;
  x.what = "wrong-file";
  x.name = input;
  x.detail = "this map does not belong to this file: none of its " + std::to_string(p.doc->entries.size()) +
             " records matches the file's " + std::to_string(p.layout.order.size());
  r.mismatches = {x};
  r.code = "wrong-file";
  r.outcome = Outcome::mismatch;
  return r;
}

void set_mismatch_code(MtdResult& r) {
  if (r.outcome == Outcome::mismatch && r.code.empty()) r.code = "tampered";
  if (r.outcome == Outcome::ok) r.code = "ok";
}

MtdResult verify_impl(const Source& input, const Source& map, const RestoreOptions& o) {
  MtdResult r;
  Prepared p;
  if (auto early = prepare(input, map, o, r, p)) return *early;
  const Model& m = model_of(*p.loaded);
  auto check = [&](bool as_protected) { return check_state(*p.loaded, m, p.layout, *p.doc, p.names_now, as_protected); };
  // The protected state is the cheap one (one hash per byte); the restored state transforms
  // every record forward again, so it is checked only when needed.
  StateCheck a, b;
  bool have_a = false, have_b = false;
  if (o.expect != "restored") a = check(true), have_a = true;
  if (o.expect == "restored" || (o.expect == "auto" && !a.mismatches.empty())) b = check(false), have_b = true;
  // With one state named, the other still decides whether the map is for this file at all.
  if (!have_a && b.matching_records == 0) a = check(true), have_a = true;
  if (!have_b && a.matching_records == 0) b = check(false), have_b = true;
  if (is_wrong_file(*p.doc, a, b)) return wrong_file(r, input.name(), p);
  bool as_protected;
  if (o.expect == "protected") as_protected = true;
  else if (o.expect == "restored") as_protected = false;
  else as_protected = a.mismatches.empty() || a.mismatches.size() <= b.mismatches.size();
  r.state = as_protected ? "protected" : "restored";
  r.mismatches = as_protected ? a.mismatches : b.mismatches;
  r.outcome = r.mismatches.empty() ? Outcome::ok : Outcome::mismatch;
  return r;
}

// Undoing one protected record (RestoreRecords: restore_impl, restore_model_impl): its inverse
// permutation and record cipher from the map's secret, and the tree digest of the record as
// protected. stage() copies each source block into a private buffer, hashes that copy (a leaf:
// every block the inverse permutation reads is one) and decrypts from it, so the bytes checked
// are the bytes restored.
struct RecordUndo {
  uint32_t from;   // the record it undoes
  uint64_t bytes;  // and that record's size
  std::optional<Permuter> perm;
  std::optional<RecordCipher> cipher;
  TreeDigest sum;
  RecordUndo(const MapDoc& doc, uint32_t from, const model::Storage& src)
      : from(from), bytes(src.bytes.size()), sum(src.bytes.size(), leaf_of(src), doc.scheme) {
    const size_t esize = model::dtype_info(src.dtype).element_size;
    if (doc.entries[from].permuted) {
      Key32 pk = derive_storage_key(doc.secret, doc.entries[from].name, from);
      perm.emplace(pk.data(), src.bytes.size() / esize, esize, true);
      sodium_memzero(pk.data(), pk.size());
    }
    if (doc.encrypted) {
      Key32 ck = derive_record_cipher_key(doc.secret, from);
      cipher.emplace(ck);
      sodium_memzero(ck.data(), ck.size());
    }
  }
  // For output bytes [off, off + len): copies the source bytes
  // into the slot's private `staged` buffer (the source block of each output block, one leaf
  // each), lists them as the slot's leaves, and restores `out` from that copy (decrypting into
  // `plain` first, so that the leaves keep the bytes as read until they are hashed).
  void stage(SourceRead& src, size_t off, size_t len, size_t esize, ChunkSlot& slot) {
    const std::span<const uint8_t> in = src.in;
    const size_t leaf = sum.leaf_bytes();
    slot.staged.resize(len);
    uint8_t* st = slot.staged.data();
    uint8_t* o = slot.out.data();
    if (!perm) {
      src.copy(st, off, len);
      for (size_t at = 0; at < len; at += leaf) slot.leaves.push_back({(off + at) / leaf, st + at, std::min(leaf, len - at)});
      if (cipher) cipher->apply(st, o, len, off);
      else std::memcpy(o, st, len);
      slot.crc = libdeflate_crc32(0, o, len);  // while in cache (ChunkSlot::crc)
      return;
    }
    const size_t bb = size_t(kPermBlock) * esize;  // one permutation block = one leaf
    const size_t body = perm->blocks() * bb;
    const size_t first = off / bb, nb = (std::min(off + len, body) - std::min(off, body)) / bb;
    std::vector<std::pair<size_t, size_t>> at_in;  // (offset in staged, offset in the record)
    for (size_t q = 0; q < nb; ++q) at_in.emplace_back(q * bb, perm->source_block(first + q) * bb);
    if (off + len == in.size() && in.size() > body) at_in.emplace_back(nb * bb, body);  // the tail
    for (size_t q = 0; q < at_in.size(); ++q) {
      const auto [s_at, r_at] = at_in[q];
      const size_t n = std::min(bb, in.size() - r_at);
      src.copy(st + s_at, r_at, n);
      slot.leaves.push_back({r_at / leaf, st + s_at, n});
    }
    const uint8_t* from = st;
    if (cipher) {
      slot.plain.resize(len);
      for (const auto& l : slot.leaves) {
        const size_t s_at = static_cast<size_t>(l.data - st);
        cipher->apply(l.data, slot.plain.data() + s_at, l.size, l.index * leaf);
      }
      from = slot.plain.data();
    }
    perm->produce_staged(from, o, off / esize, len / esize);
    slot.crc = libdeflate_crc32(0, o, len);  // while in cache (ChunkSlot::crc)
  }
  void record(const ChunkSlot& slot) {
    for (size_t i = 0; i < slot.leaves.size(); ++i) sum.put(slot.leaves[i].index, slot.digests[i]);
  }
  // After every block was taken: the record as read must be the record the map protected.
  void check(const MapDoc& doc, uint32_t from, std::vector<Mismatch>& out) {
    const std::string h = hex(sum.finish());
    if (h == doc.entries[from].after) return;
    Mismatch x;
    x.what = "tensor";
    x.name = doc.entries[from].name;
    x.key = from;
    x.against = "protected";
    x.expected = doc.entries[from].after;
    x.actual = h;
    x.detail = "tensor bytes changed";
    out.push_back(x);
  }
};

// MTD inverse as a Transform's record stage: the pipeline's torch writer calls copy_record for
// each record of the restored file, which reads the record holding its original (the map's
// swaps), undoes the cipher and the permutation and writes the original bytes. The helper
// reads each input block exactly once, into a private buffer (the permutation's block buffer,
// or the ring slot), tree-hashes that buffer, decrypts it and gathers the original from it;
// this thread writes the slot. So the bytes checked are the bytes restored, even if the input
// changes under us, and each byte is read and hashed once. A record that does not match its
// map digest is a mismatch; finish() then abandons the output. The output is confidential.
class RestoreRecords final : public Transform {
 public:
  RestoreRecords(const Model& m, const Layout& l, const MapDoc& doc, const std::vector<uint32_t>& holder,
                 std::vector<Mismatch>& mismatches)
      : m_(m), l_(l), doc_(doc), holder_(holder), mismatches_(mismatches), pipe_(kStreamChunk, kRing, doc.scheme),
        undos_([this](uint32_t key) { return std::make_unique<RecordUndo>(doc_, holder_[key], l_.at(m_, holder_[key])); },
               [this](uint32_t key) { return uint64_t(l_.at(m_, holder_[key]).bytes.size()); }) {}
  const char* name() const override { return "mtd-restore"; }
  bool has_record_stage() const override { return true; }
  bool confidential_output() const override { return true; }
  Status copy_record(const RecordCopy& rec, const PayloadSink& sink) override {
    const uint32_t key = rec.key;
    const model::Storage& s = *rec.storage;
    if (key >= doc_.entries.size()) return make_error(Rule::mtd_internal, "writer and map disagree on the records");
    const uint32_t from = holder_[key];
    const model::Storage& src = from == key ? s : l_.at(m_, from);
    const ByteRange* src_range = from == key ? rec.range : l_.range(m_, from);
    if (src.bytes.size() != s.bytes.size()) return make_error(Rule::mtd_internal, "swap between different sizes");
    const std::span<const uint8_t> in = src.bytes;
    const size_t esize = model::dtype_info(src.dtype).element_size;
    const std::unique_ptr<RecordUndo> built = undos_.take(key, doc_.entries.size());
    RecordUndo& undo = *built;
    if (undo.from != from || undo.bytes != in.size()) return make_error(Rule::mtd_internal, "writer and map disagree on a record");
    SourceRead read(in, src_range, SourceRead::From::mapping);
    auto prepare = [&](size_t off, size_t len, ChunkSlot& slot) { undo.stage(read, off, len, esize, slot); };
    auto consume = [&](const ChunkSlot& slot) {
      undo.record(slot);
      return sink(std::span<const uint8_t>(slot.out.data(), slot.length), slot.crc);
    };
    io::populate_mapped_pages(in);  // the staging reads anywhere in it (SourceRead::From::mapping)
    Status streamed = pipe_.run(in.size(), prepare, consume);
    if (src_range && src_range->mapped) io::release_mapped_pages(in);  // never heap memory: DONTNEED would zero it
    MCDR_TRY(streamed);
    if (read.failed)
      return make_error(Rule::io_read, "cannot read the input (changed while being restored?)", read.offset, src.source);
    undo.check(doc_, from, mismatches_);
    return ok_status();
  }
  Status finish(const WrittenOutput&, FileReport&) override {
    if (mismatches_.empty()) return ok_status();
    return make_error(Rule::mtd_internal, "restored records do not match the map (see the mismatches)");
  }

 private:
  const Model& m_;
  const Layout& l_;
  const MapDoc& doc_;
  const std::vector<uint32_t>& holder_;
  std::vector<Mismatch>& mismatches_;
  RecordPipeline pipe_;
  NextRecord<RecordUndo> undos_;  // last: its destructor waits for one still being built
};

// What restore can check without reading the records: the record count, the canonical
// data.pkl and the zip layout (which holds every record's CRC-32). If any differs, one pass
// over the records names what changed (or says the map is for another file), and nothing is
// undone.
std::optional<MtdResult> check_protected_structure(const std::string& input, const Prepared& p, MtdResult& r) {
  const Model& m = model_of(*p.loaded);
  const Layout& l = p.layout;
  const MapDoc& doc = *p.doc;
  const bool structure = l.order.size() == doc.entries.size();
  bool ok = structure && hex(hash_bytes(doc.scheme, l.pkl)) == doc.nt;
  if (ok) {
    std::vector<Record> records;
    for (size_t k = 0; k < l.order.size(); ++k) records.push_back(l.record(m, k));
    auto now = input_layout(*p.loaded, records, doc.scheme);
    ok = now && hex(*now) == doc.layout_after;
  }
  if (ok) return std::nullopt;
  StateCheck a = check_state(*p.loaded, m, l, doc, p.names_now, true);
  if (is_wrong_file(doc, a, StateCheck{})) return wrong_file(r, input, p);
  r.mismatches = a.mismatches;
  r.outcome = Outcome::mismatch;
  return r;
}

MtdResult restore_impl(const Source& input, const Source& map, Sink& output, const RestoreOptions& o) {
  MtdResult r;
  Prepared p;
  const std::string& map_path = map.name();
  if (output.is_memory()) SinkAccess::clear(output);  // holds nothing unless restored
  if (auto early = prepare(input, map, o, r, p)) return *early;
  r.state = "protected";
  Model& m = model_of(*p.loaded);
  const Layout& l = p.layout;
  const MapDoc& doc = *p.doc;
  // 1. What can be checked without reading the records (check_protected_structure).
  if (auto early = check_protected_structure(input.name(), p, r)) return *early;
  if (auto fit = check_entries_fit(m, l, doc); !fit.ok()) return map_failure(r, map_path, fit.error());
  const size_t n = doc.entries.size();
  std::vector<uint32_t> holder(n);  // holder[j] = key whose record holds original j
  for (size_t k = 0; k < n; ++k) holder[doc.entries[k].source] = static_cast<uint32_t>(k);
  // 2. Undo while writing (RestoreRecords, the record stage of the pipeline's torch writer),
  // checking every protected record against its digest on the way; any mismatch abandons
  // the output.
  auto records = std::make_shared<RestoreRecords>(m, l, doc, holder, r.mismatches);
  DisarmOptions dopt;
  dopt.compat = doc.compat;
  dopt.transforms = {records};
  // The sidecar is the map's (the protected file has no module tree of its own to write);
  // it is prepared first so that a failure leaves no restored file.
  m.architecture.clear();
  io::AtomicOutput arch_out;
  std::string arch_text;  // a memory sink's architecture(), set once the output is committed
  if (!doc.architecture.is_null()) {
    arch_text = doc.architecture.dump(2, ' ', false, json::error_handler_t::replace) + "\n";
    if (!output.is_memory()) {
      r.file.architecture = output.name() + ".architecture.json";
      if (auto s = write_text(r.file.architecture, arch_text, arch_out); !s.ok()) return fail(r, s.error());
    }
  }
  const engine::RunContext& ctx = o.context ? *o.context : engine::process_context();
  FileReport written;  // as protect: the write's own notes stay out of the report
  if (auto s = engine::run_write(m, output, dopt, written, p.loaded.get(), ctx); !s.ok()) {
    if (!r.mismatches.empty()) {
      r.outcome = Outcome::mismatch;
      return r;
    }
    return fail(r, s.error());
  }
  if (!r.file.architecture.empty()) (void)arch_out.commit();
  if (output.is_memory() && !arch_text.empty())
    SinkAccess::set_architecture(output, std::vector<uint8_t>(arch_text.begin(), arch_text.end()));
  r.output = output.name();
  r.state = "restored";
  r.outcome = Outcome::ok;
  for (size_t k = 0; k < n; ++k) {
    if (doc.entries[k].permuted) ++r.permuted;
    if (doc.entries[k].source != k) ++r.swapped;
  }
  return r;
}

// restore_impl's undo, into memory: every restored record becomes an owned buffer of the
// loaded model (checked against its before-hash first), so the plain weights never reach a file.
MtdResult restore_model_impl(const Source& input, const Source& map, const RestoreOptions& o,
                             LoadedModelPtr& restored) {
  MtdResult r;
  Prepared p;
  const std::string& map_path = map.name();
  if (auto early = prepare(input, map, o, r, p)) return *early;
  r.state = "protected";
  if (auto early = check_protected_structure(input.name(), p, r)) return *early;
  Model& m = model_of(*p.loaded);
  const Layout& l = p.layout;
  const MapDoc& doc = *p.doc;
  if (auto fit = check_entries_fit(m, l, doc); !fit.ok()) return map_failure(r, map_path, fit.error());
  const size_t n = doc.entries.size();
  std::vector<uint32_t> holder(n);
  for (size_t k = 0; k < n; ++k) holder[doc.entries[k].source] = static_cast<uint32_t>(k);
  // The record stage restore writes with (RestoreRecords), into owned buffers instead of a
  // file: one undo, one set of checks (each block read once into a private buffer, hashed
  // from there, a record that does not match its map digest is a mismatch).
  RestoreRecords undo(m, l, doc, holder, r.mismatches);
  std::vector<std::vector<uint8_t>> plain(n);
  for (size_t key = 0; key < n; ++key) {
    const uint32_t from = holder[key];
    // Writer-made records (compat scalars) are not in the model; the transform never moves them.
    if (l.order[key] >= m.storages.size() || l.order[from] >= m.storages.size()) {
      if (from != key || doc.entries[key].permuted || doc.encrypted)
        return fail(r, make_error(Rule::mtd_internal, "a writer-made record is transformed"));
      continue;
    }
    const model::Storage& s = l.at(m, key);
    std::vector<uint8_t> buf;
    buf.reserve(s.bytes.size());
    RecordCopy rec;
    rec.key = static_cast<uint32_t>(key);
    rec.storage = &s;
    rec.range = l.range(m, key);
    const PayloadSink sink = [&](std::span<const uint8_t> b, std::optional<uint32_t>) {
      if (b.size() > s.bytes.size() - buf.size()) return Status(make_error(Rule::mtd_internal, "record longer than declared"));
      buf.insert(buf.end(), b.begin(), b.end());
      return ok_status();
    };
    if (auto st = undo.copy_record(rec, sink); !st.ok()) return fail(r, st.error());
    if (buf.size() != s.bytes.size()) return fail(r, make_error(Rule::mtd_internal, "record shorter than declared"));
    plain[key] = std::move(buf);
  }
  if (!r.mismatches.empty()) {
    r.outcome = Outcome::mismatch;
    return r;
  }
  // Only now: the sources of later records were read from the protected bytes above.
  for (size_t key = 0; key < n; ++key)
    if (l.order[key] < m.storages.size() && (!plain[key].empty() || m.storages[l.order[key]].bytes.empty()))
      m.storages[l.order[key]].set_owned(std::move(plain[key]));
  for (size_t k = 0; k < n; ++k) {
    if (doc.entries[k].permuted) ++r.permuted;
    if (doc.entries[k].source != k) ++r.swapped;
  }
  restored = std::move(p.loaded);
  r.state = "restored";
  r.outcome = Outcome::ok;
  return r;
}

// Nothing an input or a map holds may end the process: what escapes is reported as an error
// (temporary outputs are removed by their destructors on the way out).
template <class F>
MtdResult guarded(F&& f) {
  try {
    MtdResult r = f();
    set_mismatch_code(r);
    return r;
  } catch (const std::bad_alloc&) {
    MtdResult r;
    r.code = "error";
    return fail(r, make_error(Rule::resource_memory, "out of memory"));
  } catch (const std::exception& e) {
    MtdResult r;
    r.code = "error";
    return fail(r, make_error(Rule::mtd_internal, std::string("unexpected error: ") + e.what()));
  }
}

}  // namespace

MtdResult verify(const Source& input, const Source& map, const RestoreOptions& o) {
  return guarded([&] { return verify_impl(input, map, o); });
}

MtdResult restore(const Source& input, const Source& map, Sink& output, const RestoreOptions& o) {
  MtdResult r = guarded([&] { return restore_impl(input, map, output, o); });
  if (r.outcome != Outcome::ok && output.is_memory()) SinkAccess::clear(output);
  return r;
}

MtdResult restore_model(const Source& input, const Source& map, const RestoreOptions& o, LoadedModelPtr& restored) {
  return guarded([&] { return restore_model_impl(input, map, o, restored); });
}

MtdResult verify(const std::string& input, const std::string& map_path, const RestoreOptions& o) {
  return verify(Source::file(input), Source::file(map_path), o);
}

MtdResult restore(const std::string& input, const std::string& map_path, const std::string& output,
                  const RestoreOptions& o) {
  Sink sink = Sink::file(output);
  return restore(Source::file(input), Source::file(map_path), sink, o);
}

MtdResult restore_model(const std::string& input, const std::string& map_path, const RestoreOptions& o,
                        LoadedModelPtr& restored) {
  return restore_model(Source::file(input), Source::file(map_path), o, restored);
}

namespace {

// The candidate after-digests of one map: records the transform changed (permuted, swapped or
// encrypted; an untouched record, e.g. an integer buffer, is the same in every copy and names
// nobody). trace_impl also drops digests that several maps share (a permuted all-zero tensor).
struct Distinctive {
  HashScheme scheme;  // of the map's format: the leaked file is hashed with each scheme a map uses
  std::vector<std::string> hashes;
};

Result<Distinctive> distinctive_hashes(const std::string& map_path, const OpenOptions& o) {
  MtdResult ignored;
  MCDR_ASSIGN(auto doc, open_and_parse(Source::file(map_path), o, ignored));
  Distinctive out{doc->scheme, {}};
  for (const auto& e : doc->entries)
    if (e.permuted || e.source != e.key || doc->encrypted) out.hashes.push_back(e.after);
  return out;
}

std::string copy_name(const std::string& map_path) {
  auto sealed = read_small_file(map_path, kMaxMapBytes);
  if (!sealed.ok()) return "";
  auto h = read_map_header(*sealed);
  if (!h.ok()) return "";
  json info = json::parse(h->info, nullptr, false);
  if (!info.is_object() || !info.contains("copy") || !info["copy"].is_string()) return "";
  return info["copy"].get<std::string>();
}

TraceResult trace_impl(const std::string& leaked, const std::vector<std::string>& maps, const OpenOptions& o) {
  TraceResult t;
  if (sodium_init() < 0) return t.error = make_error(Rule::crypto_init, "libsodium failed to initialise"), t;
  FileReport file;
  auto loaded = load_model(leaked, DisarmOptions{}, file, /*defer_storage_crc=*/true);
  if (!loaded.ok()) return t.error = loaded.error(), t;
  const Model& m = model_of(**loaded);
  std::vector<Record> records;
  for (StorageId sid = 0; sid < m.storages.size(); ++sid)
    records.push_back(Record{&m.storages[sid], byte_ranges_of(**loaded).of(m, sid)});
  t.leaked_records = records.size();
  std::vector<std::pair<std::string, std::vector<std::string>>> opened;
  std::set<std::string> have;  // the leaked records' digests, in every scheme an opened map uses
  std::set<HashScheme> hashed;
  std::map<std::string, size_t> maps_with;  // digest -> how many maps list it
  for (const auto& path : maps) {
    auto hashes = distinctive_hashes(path, o);
    if (!hashes.ok()) {
      t.skipped.emplace_back(path, hashes.error().describe());
      continue;
    }
    ++t.maps_opened;
    if (hashed.insert(hashes->scheme).second)
      for (const auto& sum : sum_all(records, hashes->scheme)) have.insert(hex(sum.digest));
    for (const auto& h : std::set<std::string>(hashes->hashes.begin(), hashes->hashes.end())) ++maps_with[h];
    opened.emplace_back(path, std::move(hashes->hashes));
  }
  for (auto& [path, hashes] : opened) {
    // A record equal in several copies (e.g. a permuted tensor of zeros) tells them apart not.
    std::erase_if(hashes, [&](const std::string& h) { return maps_with[h] > 1; });
    TraceMatch x{path, copy_name(path), 0, hashes.size()};
    for (const auto& h : hashes) x.matching += have.count(h);
    if (x.matching > 0) t.matches.push_back(x);
  }
  std::stable_sort(t.matches.begin(), t.matches.end(),
                   [](const TraceMatch& a, const TraceMatch& b) { return a.matching > b.matching; });
  return t;
}

}  // namespace

TraceResult trace(const std::string& leaked, const std::vector<std::string>& maps, const OpenOptions& o) {
  try {
    return trace_impl(leaked, maps, o);
  } catch (const std::exception& e) {
    TraceResult t;
    t.error = make_error(Rule::mtd_internal, std::string("unexpected error: ") + e.what());
    return t;
  }
}

Result<int64_t> parse_expiry(const std::string& text) {
  auto bad = [&] {
    return make_error(Rule::usage_expires, "--expires " + text + ": expected YYYY-MM-DD, YYYY-MM-DDTHH:MM:SSZ or @UNIX-SECONDS");
  };
  if (!text.empty() && text[0] == '@') {
    int64_t v = 0;
    if (text.size() < 2 || text.size() > 13 || text.find_first_not_of("0123456789", 1) != std::string::npos) return bad();
    for (size_t i = 1; i < text.size(); ++i) v = v * 10 + (text[i] - '0');
    return v;
  }
  // Digits at fixed places: "YYYY-MM-DD" and optionally "THH:MM:SSZ".
  const bool with_time = text.size() == 20;
  const std::string shape = with_time ? "dddd-dd-ddTdd:dd:ddZ" : "dddd-dd-dd";
  if (text.size() != shape.size()) return bad();
  for (size_t i = 0; i < shape.size(); ++i)
    if (shape[i] == 'd' ? !std::isdigit(static_cast<unsigned char>(text[i])) : text[i] != shape[i]) return bad();
  auto num = [&](size_t at, size_t len) { return std::stoi(text.substr(at, len)); };
  std::tm tm{};
  tm.tm_year = num(0, 4);
  tm.tm_mon = num(5, 2);
  tm.tm_mday = num(8, 2);
  if (with_time) tm.tm_hour = num(11, 2), tm.tm_min = num(14, 2), tm.tm_sec = num(17, 2);
  if (tm.tm_mon < 1 || tm.tm_mon > 12 || tm.tm_mday < 1 || tm.tm_mday > 31 || tm.tm_hour > 23 || tm.tm_min > 59 || tm.tm_sec > 59)
    return bad();
  tm.tm_year -= 1900;
  tm.tm_mon -= 1;
  const int day = tm.tm_mday;
  const std::time_t t = timegm(&tm);
  if (tm.tm_mday != day) return bad();  // 2026-02-30 and the like
  return static_cast<int64_t>(t);
}

static std::string new_model_id() {
  uint8_t id[16];
  randombytes_buf(id, sizeof id);
  return to_hex(id, sizeof id);
}

MtdResult protect(const Source& input, Sink& output, Sink& map, const ProtectOptions& options) {
  MtdResult result = guarded([&] {
    MtdResult r;
    if (sodium_init() < 0) return fail(r, make_error(Rule::crypto_init, "libsodium failed to initialise"));
    LoadedInput src;
    if (auto e = load_source(input, options, src)) {
      r.file = src.file;
      return fail(r, *e);
    }
    return protect_copy(src, output, map, options.seal, options, CopyInfo{"", new_model_id()});
  });
  if (result.outcome != Outcome::ok) {  // nothing left in memory sinks (files: never committed)
    if (output.is_memory()) SinkAccess::clear(output);
    if (map.is_memory()) SinkAccess::clear(map);
  }
  return result;
}

MtdResult protect(const std::string& input, const std::string& output, const std::string& map_path,
                  const ProtectOptions& options) {
  Sink out = Sink::file(output), map = Sink::file(map_path);
  return protect(Source::file(input), out, map, options);
}

std::vector<MtdResult> protect_copies(const std::string& input, const std::vector<ProtectCopy>& copies,
                                      const ProtectOptions& options) {
  std::vector<MtdResult> out;
  LoadedInput src;
  MtdResult first = guarded([&] {
    MtdResult r;
    if (sodium_init() < 0) return fail(r, make_error(Rule::crypto_init, "libsodium failed to initialise"));
    if (auto e = load_source(Source::file(input), options, src)) {
      r.file = src.file;
      return fail(r, *e);
    }
    r.outcome = Outcome::ok;
    return r;
  });
  if (first.outcome != Outcome::ok) return {first};
  const std::string model_id = new_model_id();  // one release, many copies
  for (const auto& c : copies) {
    out.push_back(guarded([&] {
      Sink output = Sink::file(c.output), map = Sink::file(c.map);
      return protect_copy(src, output, map, c.seal, options, CopyInfo{c.name, model_id});
    }));
    if (out.back().outcome != Outcome::ok) break;  // stop at the first failure: the rest would fail alike
  }
  return out;
}

}  // namespace modelcdr::mtd
