// joblib files (docs/FORMATS.md §7.4) and plain pickles of scikit-learn models. joblib's pickler
// writes each numpy array as a NumpyArrayWrapper object whose raw bytes follow its BUILD in
// the same stream; the pickle machine calls our hook there, and the hook consumes exactly
// what joblib's unpickler would read: [pad length byte, pad bytes] + numel x itemsize bytes,
// or a nested protocol-2 pickle for object arrays (decoded and scanned, not rebuilt).
#include <unordered_map>
#include <unordered_set>

#include "cdr/class_registry.hpp"
#include "cdr/lifter.hpp"
#include "formats/codecs.hpp"
#include "formats/parsed_model.hpp"
#include "formats/registry.hpp"
#include "pickle/globals.hpp"
#include "io/byte_cursor.hpp"

namespace modelcdr::formats {

namespace {

using pickle::Node;
using pickle::NodeId;
using pickle::NodeKind;
using pickle::Program;

NodeId dict_get(const Program& p, const Node& d, std::string_view key) {
  for (auto [k, v] : d.entries()) {
    const Node& kn = p.at(k);
    if ((kn.kind == NodeKind::Str || kn.kind == NodeKind::Py2Str) && kn.text == key) return v;
  }
  return pickle::kNoNode;
}

Error bad(const io::ByteCursor& cur, std::string message) {
  return make_error(Rule::joblib_bad_array, std::move(message), cur.abs_pos(), cur.entry());
}

void soften_vetted(const Program& p, const cdr::ClassRegistry& reg, const std::string& entry, Findings& findings,
                   size_t first);

// The hook: what joblib's NumpyArrayWrapper.read_array consumes.
Result<pickle::RawPayload> read_array_payload(const Program& p, NodeId id, io::ByteCursor& cur, const ReadOptions& options,
                                              Findings& findings) {
  const Node& n = p.at(id);
  const Node& st = p.at(n.build_states().back());
  if (st.kind != NodeKind::Dict) return bad(cur, "NumpyArrayWrapper state is not a dict");
  NodeId dt = dict_get(p, st, "dtype"), shape = dict_get(p, st, "shape");
  if (dt == pickle::kNoNode || shape == pickle::kNoNode) return bad(cur, "NumpyArrayWrapper state lacks dtype or shape");
  const Node& d = p.at(dt);
  if (d.kind != NodeKind::Call || p.at(d.items[0]).kind != NodeKind::Global || p.at(d.items[0]).text != "numpy" ||
      p.at(d.items[0]).name() != "dtype" || p.at(d.items[1]).kind != NodeKind::Tuple || p.at(d.items[1]).items.empty())
    return bad(cur, "NumpyArrayWrapper dtype is not numpy.dtype(...)");
  const Node& code_node = p.at(p.at(d.items[1]).items[0]);
  if (code_node.kind != NodeKind::Str && code_node.kind != NodeKind::Py2Str)
    return bad(cur, "NumpyArrayWrapper dtype code is not a string");
  auto code = cdr::parse_numpy_code(code_node.text);
  if (!code) return bad(cur, "unsupported dtype code '" + std::string(code_node.text.substr(0, 16)) + "' (its size is unknown)");
  pickle::RawPayload out;
  out.offset = cur.pos();
  if (code->kind == 'O') {
    // A complete nested pickle (joblib: pickle.load(file_handle)).
    pickle::DecodeOptions sub;
    sub.limits = options.limits;
    sub.entry = cur.entry();
    sub.base_offset = cur.abs_pos();
    auto rest = cur.data().subspan(cur.pos());
    size_t first = findings.size();
    MCDR_ASSIGN(Program nested, pickle::decode(rest, sub, findings));
    cdr::scan_program(nested, cur.entry(), findings);
    // the lifter rebuilds this object array from data (lifter.cpp, joblib_object_array)
    soften_vetted(nested, options.registry ? *options.registry : cdr::ClassRegistry::active(), cur.entry(), findings,
                  first);
    MCDR_TRY(cur.skip(nested.end_offset));
    out.size = nested.end_offset;
    out.is_pickle = true;
    return out;
  }
  const Node& sh = p.at(shape);
  if (sh.kind != NodeKind::Tuple) return bad(cur, "NumpyArrayWrapper shape is not a tuple");
  uint64_t numel = 1, nbytes = 0;
  for (NodeId c : sh.items) {
    const Node& cn = p.at(c);
    if (cn.kind != NodeKind::Int || cn.i < 0 || __builtin_mul_overflow(numel, static_cast<uint64_t>(cn.i), &numel))
      return bad(cur, "NumpyArrayWrapper shape is not a tuple of non-negative integers");
  }
  if (__builtin_mul_overflow(numel, code->itemsize, &nbytes)) return bad(cur, "array size overflows");
  if (dict_get(p, st, "numpy_array_alignment_bytes") != pickle::kNoNode) {
    MCDR_ASSIGN(uint8_t pad, cur.u8());
    MCDR_ASSIGN(auto pad_bytes, cur.take(pad));
    for (uint8_t b : pad_bytes)
      if (b != 0xFF) {
        add_finding(findings, Severity::medium, Rule::joblib_odd_padding, "array padding holds bytes other than 0xFF (dropped)",
                    cur.entry(), cur.abs_pos());
        break;
      }
  }
  if (nbytes > cur.remaining())
    return make_error(Rule::joblib_truncated, "array data needs " + std::to_string(nbytes) + " bytes, " +
                                              std::to_string(cur.remaining()) + " are left",
                      cur.abs_pos(), cur.entry());
  MCDR_TRY(cur.skip(nbytes));
  out.size = cur.pos() - out.offset;
  return out;
}

// Scan findings about the names the lifter rebuilds from data (numpy arrays/dtypes, joblib's
// wrapper, vetted registry classes) are lowered to info: they are understood, not removed.
void soften_vetted(const Program& p, const cdr::ClassRegistry& reg, const std::string& entry, Findings& findings,
                   size_t first) {
  // A name rebuilt from data: pickle/globals.def role kGData, or a class of the registry. Each
  // GLOBAL node is looked up once (a checkpoint calls the same memoized global per tensor);
  // building a set of every name per file cost more than the rest of a small file's scan.
  std::unordered_map<NodeId, bool> known;
  auto vetted = [&](NodeId id) {
    auto [it, fresh] = known.try_emplace(id, false);
    if (fresh) {
      const Node& g = p.at(id);
      it->second = pickle::has_role(g.text, g.name(), pickle::kGData) || reg.find(g.text, g.name()).has_value();
    }
    return it->second;
  };
  // Matched by the offsets of the nodes program_scan.cpp reports (GLOBAL, REDUCE/NEWOBJ),
  // never by message text.
  std::unordered_set<uint64_t> vetted_globals, vetted_calls;
  for (NodeId id = 0; id < p.nodes.size(); ++id) {
    const Node& n = p.nodes[id];
    if (n.kind == NodeKind::Global && vetted(id)) vetted_globals.insert(n.offset);
    if ((n.kind == NodeKind::Call || n.kind == NodeKind::NewObj) && p.at(n.items[0]).kind == NodeKind::Global) {
      const Node& g = p.at(n.items[0]);
      if (vetted(n.items[0])) vetted_calls.insert(n.offset);
      // scikit-learn's Cython newObj(cls) helper on a registry class (lifter.cpp, is_newobj_helper)
      if (n.kind == NodeKind::Call && g.name() == "newObj" && g.text.rfind("sklearn.", 0) == 0 &&
          p.at(n.items[1]).kind == NodeKind::Tuple && p.at(n.items[1]).items.size() == 1) {
        const Node& cls = p.at(p.at(n.items[1]).items[0]);
        if (cls.kind == NodeKind::Global && cls.text.rfind(g.text, 0) == 0 && reg.find(cls.text, cls.name()))
          vetted_calls.insert(n.offset);
      }
    }
  }
  for (size_t i = first; i < findings.size(); ++i) {
    Finding& f = findings[i];
    if (f.entry != entry) continue;
    bool named = (f.rule == Rule::pickle_global_not_allowed && vetted_globals.count(f.offset)) ||
                 ((f.rule == Rule::pickle_call || f.rule == Rule::pickle_build_on_object) && vetted_calls.count(f.offset));
    if (named && f.severity > Severity::info) {
      f.severity = Severity::info;
      f.message += " (vetted: rebuilt from data by the class registry)";
    }
  }
}

}  // namespace

Result<ParsedModel> read_joblib(std::span<const uint8_t> file, const ReadOptions& options) {
  if (auto c = detect_codec(file.subspan(0, std::min<size_t>(file.size(), 16)));
      c && (*c == Codec::lzma || *c == Codec::joblib_zfile))
    return read_compressed(file, options);
  ParsedModel parsed;
  parsed.format = container::Format::pickle;
  bool arrays = false;
  ReadOptions ro = options;
  ro.on_array_build = [&](const Program& p, NodeId id, io::ByteCursor& cur) -> Result<pickle::RawPayload> {
    arrays = true;
    return read_array_payload(p, id, cur, options, parsed.findings);
  };
  size_t first = parsed.findings.size();
  MCDR_ASSIGN(Program program, decode_stream(file, "", 0, ro, parsed.findings, false));
  const cdr::ClassRegistry& reg = options.registry ? *options.registry : cdr::ClassRegistry::active();
  soften_vetted(program, reg, "", parsed.findings, first);
  if (arrays) parsed.format = container::Format::joblib;
  cdr::StorageTable no_storages;  // no storage records: a storage pid is cdr.no-storage
  no_storages.what = "a pickle";
  cdr::LiftOptions lo;
  lo.payload_bytes = file;
  lo.registry = &reg;
  lo.scan_only = options.scan_only;
  MCDR_ASSIGN(parsed.model, cdr::lift(program, no_storages, lo));
  return parsed;
}

Result<ParsedModel> read_compressed(std::span<const uint8_t> file, const ReadOptions& options) {
  auto codec = detect_codec(file.subspan(0, std::min<size_t>(file.size(), 16)));
  if (!codec) return make_error(Rule::format_compressed, "not a compression format modelcdr unpacks");
  Findings findings;
  MCDR_ASSIGN(std::vector<uint8_t> inner, decompress(file, *codec, DecompressLimits{}, findings));
  auto backing = std::make_shared<const std::vector<uint8_t>>(std::move(inner));
  std::span<const uint8_t> bytes(backing->data(), backing->size());
  auto fmt = sniff(bytes);  // the inner stream: sniffed once, like any input
  if (fmt != container::Format::pickle || detect_codec(bytes.subspan(0, std::min<size_t>(bytes.size(), 16))))
    return make_error(Rule::format_compressed, std::string("a ") + codec_name(*codec) + " stream holding " +
                                               format_name(fmt) +
                                               " data: only joblib/pickle streams are unpacked (torch.load cannot read it)");
  MCDR_ASSIGN(ParsedModel parsed, read_joblib(bytes, options));
  parsed.backing = backing;
  parsed.format = container::Format::joblib;
  add_finding(findings, Severity::info, Rule::joblib_compressed,
              std::string("joblib stream decompressed from ") + codec_name(*codec) + " (" + std::to_string(backing->size()) +
                  " bytes)");
  // Offsets of the pickle's findings are inside the decompressed stream.
  for (auto& f : parsed.findings)
    if (f.entry.empty()) f.entry = std::string("<") + codec_name(*codec) + " stream>";
  findings.insert(findings.end(), parsed.findings.begin(), parsed.findings.end());
  parsed.findings = std::move(findings);
  return parsed;
}

}  // namespace modelcdr::formats
