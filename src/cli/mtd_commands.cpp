// `modelcdr keygen | protect | restore | verify` — Moving Target Defense (docs/MTD.md).
// Exit codes: 0 ok; 2 usage, I/O or rejected input; 3 integrity mismatch (nothing written).
#include <sodium.h>

#include <algorithm>
#include <chrono>
#include <cctype>
#include <filesystem>
#include <cstdio>
#include <ctime>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>

#include "cli/commands.hpp"
// Over the public API only: protect / restore / verify through the Engine (modelcdr/engine.hpp,
// rendered from FileReport::mtd), the MTD options and key handles (modelcdr/mtd.hpp), the MTD
// tools for copies, trace, keys and maps (modelcdr/mtd_tools.hpp), atomic report files
// (modelcdr/output_file.hpp).
#include "modelcdr/api.hpp"
#include "modelcdr/engine.hpp"
#include "modelcdr/mtd.hpp"
#include "modelcdr/mtd_tools.hpp"
#include "modelcdr/output_file.hpp"
#include "modelcdr/render.hpp"

using namespace modelcdr;

namespace {

struct MtdArgs {
  std::string input, output, map, report, compat = "torch2", expect = "auto";
  std::vector<std::string> key_files, passphrase_files, recipients, verify_signers, trust_files;
  std::string identity, sign;
  std::string keygen_out;
  bool symmetric = false, force = false, quiet = false, allow_trailing = false;
  bool allow_unsigned = false, encrypt = false;
  std::string recipients_dir, maps_dir;
  std::vector<std::string> changes;  // map add-recipient / remove-recipient: PUB files or fingerprints
  bool json_out = false, recipient_fp = false;
  std::optional<uint64_t> version, min_version;  // protect --version, restore/verify --min-version
  std::string expires;                           // protect --expires DATE
};

// Names and messages from a map or a model are data: printed through report::printable
// (terminal escapes and invalid UTF-8 shown as \xNN).
using report::printable;

// A secret key file that others can read is no secret: say so (the key is still used).
void warn_if_exposed(const std::string& path, const mtd::Key& k) {
  if (k.loose_permissions())
    std::cerr << "modelcdr: warning: " << printable(path) << " holds a secret key but is readable by group or others "
              << "(chmod 600 " << printable(path) << ")\n";
}

int usage(const std::string& msg) {
  std::cerr << "modelcdr: " << report::printable(msg) << "\n";
  return 2;
}

int error_exit(const std::string& what, const Error& e) {
  std::cerr << "modelcdr: " << report::printable(what + ": " + e.describe()) << "\n";
  return 2;
}

// --sign SECRET: the signing key, kept alive in `keep`. Returns an exit code on error, -1 when done.
int load_signer(const MtdArgs& a, const mtd::KeyFile*& signer, std::vector<mtd::Key>& keep) {
  if (a.sign.empty()) return -1;
  auto k = mtd::Key::load(a.sign);
  if (!k.ok()) return error_exit("--sign", k.error());
  if (!k->can_sign()) return usage("--sign " + a.sign + ": no ed25519-secret key (give the .key file)");
  warn_if_exposed(a.sign, *k);
  keep.push_back(*k);
  signer = keep.back().file();  // the KeyFile is shared, not moved, when `keep` grows
  return -1;
}

Result<mtd::Secret<mtd::SecretString>> read_passphrase(const std::string& path) { return mtd::read_passphrase_file(path); }

// The MTD part of an Engine report; a report without one (none is expected) reads as an error.
const MtdReport& mtd_of(const FileReport& f) {
  static const MtdReport none;
  return f.mtd ? *f.mtd : none;
}

nlohmann::ordered_json report_json(const std::string& command, const MtdArgs& a, const FileReport& f) {
  using json = nlohmann::ordered_json;
  const MtdReport& r = mtd_of(f);
  // The error is the call's outcome only when it failed (an ok or mismatch report may keep
  // the parse's own notes in FileReport::error).
  const std::optional<Error> error = r.outcome == MtdOutcome::error ? f.error : std::nullopt;
  json mism = json::array();
  for (const auto& m : r.mismatches) {
    json x = {{"what", m.what}};
    if (!m.name.empty()) x["name"] = m.name;
    if (m.key >= 0) x["record"] = "archive/data/" + std::to_string(m.key);
    if (!m.against.empty()) x["against"] = m.against;
    if (!m.expected.empty()) x["expected"] = m.expected;
    if (!m.actual.empty()) x["actual"] = m.actual;
    x["detail"] = m.detail;
    mism.push_back(x);
  }
  const char* status = mtd_outcome_name(r.outcome);
  json changed = json::array();
  for (const auto& m : r.mismatches)
    if (m.what == "tensor") changed.push_back(m.name);
  json doc = {{"schema", "modelcdr.mtd/1"},
              {"tool", {{"name", "modelcdr"}, {"version", kVersion}}},
              {"command", command},
              {"input", a.input},
              {"map", a.map},
              {"output", f.output.empty() ? json(nullptr) : json(f.output)},
              {"status", status},
              {"code", r.code.empty() ? json(nullptr) : json(r.code)},
              {"state", r.state.empty() ? json(nullptr) : json(r.state)},
              {"signer", r.signer.empty() ? json(nullptr) : json({{"fingerprint", r.signer}, {"trusted", r.signer_trusted}})},
              {"error", error ? json({{"rule", std::string(rule_id(error->rule))}, {"message", error->message}}) : json(nullptr)},
              {"records", r.storages},
              {"permuted", r.permuted},
              {"swapped", r.swapped},
              {"changed_tensors", changed},
              {"mismatches", mism}};
  return doc;
}

void write_report(const std::string& path, const nlohmann::ordered_json& doc) {
  if (path.empty()) return;
  auto out = OutputFile::create(path);
  // Paths and names need not be UTF-8: replace what is not, instead of throwing.
  const std::string text = doc.dump(2, ' ', false, nlohmann::ordered_json::error_handler_t::replace) + "\n";
  if (!out.ok() || !out->write(text).ok() || !out->commit().ok())
    std::cerr << "modelcdr: cannot write report " << printable(path) << "\n";
}

// One headline per diagnosis (docs/MTD.md §6), then the details.
std::string headline(const MtdReport& r) {
  if (r.code == "wrong-file") return "this map does not belong to this file";
  if (r.code == "wrong-key") return "wrong key: none of the map's key slots opens with it";
  if (r.code == "map-modified") return "the map was modified or damaged";
  if (r.code == "bad-signature") return "the map's signature is missing or not from a trusted signer";
  if (r.code == "unsupported-map") return "unsupported map version: re-protect the model with this modelcdr";
  if (r.code == "bad-map") return "the map is malformed";
  if (r.code == "expired") return "the map has expired";
  if (r.code == "rollback") return "the map is for an older release than --min-version (rollback refused)";
  if (r.code == "unreadable-file") return "the file cannot be read as a model (damaged or truncated)";
  std::string changed;
  size_t n = 0;
  for (const auto& m : r.mismatches)
    if (m.what == "tensor") changed += (n++ ? ", " : "") + printable(m.name);
  if (n > 0) return "tampered: " + std::to_string(n) + " tensor" + (n == 1 ? "" : "s") + " changed: " + changed;
  for (const auto& m : r.mismatches)
    if (m.what == "layout") return "tampered: the zip layout changed (re-zipped, or members added or renamed)";
  return "tampered: the file does not match the map";
}

int finish(const std::string& command, const MtdArgs& a, const FileReport& f) {
  write_report(a.report, report_json(command, a, f));
  const MtdReport& r = mtd_of(f);
  const std::string in = printable(a.input);
  if (r.outcome == MtdOutcome::error) {
    std::cerr << "modelcdr: " << command << ": " << in << ": " << printable(f.error ? f.error->describe() : "failed") << "\n";
    return 2;
  }
  if (r.outcome == MtdOutcome::mismatch) {
    std::cerr << "modelcdr: " << command << ": " << in << ": " << headline(r) << "\n";
    for (const auto& m : r.mismatches) {
      std::cerr << "modelcdr: integrity: ";
      if (m.what == "tensor")
        std::cerr << "tensor '" << printable(m.name) << "' (archive/data/" << m.key << ") does not match the map's "
                  << (m.against == "protected" ? "protected" : "original") << " hash: " << printable(m.detail) << "\n";
      else if (m.what == "non-tensor")
        std::cerr << "non-tensor data (data.pkl) does not match the map: " << report::printable(m.detail) << "\n";
      else
        std::cerr << m.what << (m.name.empty() ? "" : " " + printable(m.name)) << ": " << printable(m.detail) << "\n";
    }
    std::cerr << "modelcdr: " << command << ": " << in << ": integrity check FAILED [" << r.code << "] ("
              << r.mismatches.size() << " mismatch" << (r.mismatches.size() == 1 ? "" : "es") << ")"
              << (command == "restore" ? "; nothing written" : "") << "\n";
    return 3;
  }
  if (!a.quiet) {
    std::string signer = r.signer.empty() ? "unsigned map"
                         : command == "protect" ? "signed by " + r.signer
                         : r.signer_trusted ? "signed by " + r.signer + " (verified)"
                                            : "signed by " + r.signer + " (NOT checked against a trusted signer: --allow-unsigned)";
    if (command == "protect")
      std::cerr << "modelcdr: protected " << in << " -> " << printable(a.output) << " (" << r.permuted << "/" << r.storages
                << " records permuted, " << r.swapped << " swapped" << (a.encrypt ? ", all encrypted" : "") << "), map "
                << printable(a.map) << ", " << signer << "\n";
    else if (command == "restore")
      std::cerr << "modelcdr: restored " << in << " -> " << printable(a.output) << ", all " << r.storages
                << " records verified before and after, " << signer << "\n";
    else
      std::cout << in << ": intact (" << r.state << "), " << r.storages << " records match the map, " << signer << "\n";
  }
  return 0;
}

bool parse_compat(const std::string& s, CompatTarget& c) {
  if (s == "torch2") c = CompatTarget::torch2;
  else if (s == "torch1.13") c = CompatTarget::torch1_13;
  else return false;
  return true;
}

int keygen_main(const MtdArgs& a) {
  if (a.keygen_out.empty()) return usage("keygen: -o NAME is required");
  auto s = a.symmetric ? mtd::keygen_symmetric(a.keygen_out, a.force) : mtd::keygen_pair(a.keygen_out, a.force);
  if (!s.ok()) return error_exit("keygen", s.error());
  if (!a.quiet) {
    if (a.symmetric) std::cerr << "modelcdr: wrote symmetric key " << report::printable(a.keygen_out) << " (mode 0600)\n";
    else std::cerr << "modelcdr: wrote " << report::printable(a.keygen_out) << ".key (secret, mode 0600) and " << report::printable(a.keygen_out) << ".pub\n";
  }
  if (!a.symmetric) {  // the fingerprint goes to stdout: it is what a --trust file lists
    auto k = mtd::Key::load(a.keygen_out + ".pub");
    if (!k.ok()) return error_exit("keygen", k.error());
    if (!k->signer_public() || !k->recipient()) return usage("keygen: " + a.keygen_out + ".pub lacks a public key");
    std::cout << mtd::fingerprint(k->signer_public()->data(), 32) << "  " << a.keygen_out << ".pub\n";
    if (!a.quiet)  // what `map info` lists for a map sealed to this key (stderr: not a --trust line)
      std::cerr << "modelcdr: recipient fingerprint " << mtd::fingerprint(k->recipient()->data(), 32)
                << " (as `map info` lists it; `key fingerprint --recipient` prints it)\n";
  }
  return 0;
}

// `modelcdr key fingerprint FILE`: the line a --trust file lists for this signer.
int fingerprint_main(const MtdArgs& a) {
  if (a.input.empty()) return usage("key fingerprint: FILE is required");
  auto k = mtd::Key::load(a.input);
  if (!k.ok()) return error_exit("key fingerprint", k.error());
  if (a.recipient_fp) {
    if (!k->recipient()) return usage("key fingerprint: " + printable(a.input) + " has no x25519 key (a symmetric key file?)");
    std::cout << mtd::fingerprint(k->recipient()->data(), 32) << "  " << printable(a.input) << "\n";
    return 0;
  }
  if (!k->signer_public()) return usage("key fingerprint: " + printable(a.input) + " has no ed25519 key (a symmetric key file?)");
  std::cout << mtd::fingerprint(k->signer_public()->data(), 32) << "  " << printable(a.input) << "\n";
  return 0;
}

int protect_copies_main(const Engine& engine, const MtdArgs& a, const mtd::ProtectOptions& o);

int protect_main(const Engine& engine, const MtdArgs& a) {
  if (!a.recipients_dir.empty()) {
    if (a.input.empty() || a.output.empty()) return usage("protect --recipients-dir: IN and -o OUTDIR are required");
    if (!a.map.empty()) return usage("protect --recipients-dir: the maps go to OUTDIR/NAME.map; --map is not used");
    if (!a.report.empty()) return usage("protect --recipients-dir: --report is not supported (one report per copy: run protect per customer)");
  } else {
    if (a.input.empty() || a.output.empty() || a.map.empty()) return usage("protect: IN, -o OUT and --map MAP are required");
    if (a.key_files.empty() && a.passphrase_files.empty() && a.recipients.empty())
      return usage("protect: give at least one of --key-file, --passphrase-file, --recipient");
  }
  // Nothing is ever written over: not an earlier map (it may be the only way back to a model
  // protected before), not an existing output, and never the input.
  if (a.recipients_dir.empty())
    for (const auto* p : {&a.output, &a.map})
      if (path_exists(*p)) return usage("protect: " + *p + " already exists: remove it or choose another name");
  mtd::ProtectOptions o;
  if (!parse_compat(a.compat, o.compat)) return usage("--compat must be torch2 or torch1.13");
  o.allow_trailing_data = a.allow_trailing;
  o.encrypt = a.encrypt;
  o.version = a.version;
  if (!a.expires.empty()) {
    auto t = mtd::parse_expiry(a.expires);
    if (!t.ok()) return usage(t.error().message);
    using namespace std::chrono;
    if (*t <= duration_cast<seconds>(system_clock::now().time_since_epoch()).count())
      return usage("protect: --expires " + a.expires + " is not in the future");
    o.expires_unix = *t;
  }
  std::vector<mtd::Key> keep;
  for (const auto& f : a.key_files) {
    auto k = mtd::Key::load(f);
    if (!k.ok()) return error_exit("--key-file", k.error());
    if (!k->has_symmetric()) return usage("--key-file " + f + ": not a symmetric key file (make one with keygen --symmetric)");
    warn_if_exposed(f, *k);
    o.seal.symmetric_keys.push_back(*k->symmetric());
  }
  for (const auto& f : a.passphrase_files) {
    auto p = read_passphrase(f);
    if (!p.ok()) return error_exit("--passphrase-file", p.error());
    o.seal.passphrases.push_back(**p);
  }
  for (const auto& f : a.recipients) {
    auto k = mtd::Key::load(f);
    if (!k.ok()) return error_exit("--recipient", k.error());
    if (!k->recipient()) return usage("--recipient " + f + ": no x25519-public key");
    o.seal.recipients.push_back(*k->recipient());
  }
  if (int rc = load_signer(a, o.seal.signer, keep); rc >= 0) return rc;
  if (!a.recipients_dir.empty()) {
    int rc = protect_copies_main(engine, a, o);
    for (auto& p : o.seal.passphrases) sodium_memzero(p.data(), p.size());
    return rc;
  }
  Sink out = Sink::file(a.output), map = Sink::file(a.map);
  FileReport r = engine.protect(Source::file(a.input), out, map, o);
  for (auto& p : o.seal.passphrases) sodium_memzero(p.data(), p.size());
  if (mtd_of(r).outcome == MtdOutcome::ok && !a.quiet)
    for (const auto& f : r.removed) std::cerr << "modelcdr: removed " << report::text_line(a.input, f) << "\n";
  return finish("protect", a, r);
}

// A customer name becomes two file names in OUTDIR: keep it to a safe alphabet.
bool safe_name(const std::string& n) {
  return !n.empty() && n.size() <= 128 && n[0] != '.' &&
         n.find_first_not_of("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-") == std::string::npos;
}

// `protect IN --recipients-dir DIR -o OUTDIR`: every DIR/NAME.pub is a customer; each gets
// OUTDIR/NAME.pt and OUTDIR/NAME.map (sealed to them, plus every --key-file, --passphrase-file
// and --recipient given: the publisher's own keys). The input is read and disarmed once.
int protect_copies_main(const Engine& engine, const MtdArgs& a, const mtd::ProtectOptions& o) {
  namespace fs = std::filesystem;
  std::error_code ec;
  std::vector<fs::path> pubs;
  for (const auto& e : fs::directory_iterator(a.recipients_dir, ec))
    if (e.path().extension() == ".pub") pubs.push_back(e.path());
  if (ec) return usage("protect: cannot read --recipients-dir " + a.recipients_dir + ": " + ec.message());
  if (pubs.empty()) return usage("protect: no NAME.pub files in --recipients-dir " + a.recipients_dir);
  constexpr size_t kMaxCopies = 10000;
  if (pubs.size() > kMaxCopies) return usage("protect: more than " + std::to_string(kMaxCopies) + " customers in one run");
  std::sort(pubs.begin(), pubs.end());
  if (!fs::is_directory(a.output) && !fs::create_directory(a.output, ec))
    return usage("protect: cannot create output folder " + a.output + (ec ? ": " + ec.message() : ""));
  std::vector<mtd::ProtectCopy> copies;
  for (const auto& pub : pubs) {
    const std::string name = pub.stem().string();
    if (!safe_name(name))
      return usage("protect: customer key " + pub.string() + ": name must be letters, digits, '.', '_', '-'");
    auto k = mtd::Key::load(pub.string());
    if (!k.ok()) return error_exit("--recipients-dir", k.error());
    if (!k->recipient()) return usage("protect: " + pub.string() + ": no x25519-public key");
    mtd::ProtectCopy c{name, (fs::path(a.output) / (name + ".pt")).string(), (fs::path(a.output) / (name + ".map")).string(),
                       o.seal};
    c.seal.recipients.push_back(*k->recipient());
    for (const auto* p : {&c.output, &c.map})  // checked for all before any work
      if (path_exists(*p)) return usage("protect: " + *p + " already exists: remove it or choose another folder");
    copies.push_back(std::move(c));
  }
  const std::vector<FileReport> results = engine.protect_copies(a.input, copies, o);
  for (size_t i = 0; i < results.size(); ++i) {
    const auto& r = results[i];
    if (mtd_of(r).outcome != MtdOutcome::ok) {
      const std::string who = i < copies.size() && results.size() > 1 ? " (customer " + copies[i].name + ")" : "";
      std::cerr << "modelcdr: protect: " << printable(a.input) << who << ": " << printable(r.error ? r.error->describe() : "failed")
                << "\n";
      if (i > 0) std::cerr << "modelcdr: protect: " << i << " of " << copies.size() << " copies were written before the failure\n";
      return 2;
    }
    if (!a.quiet)
      std::cerr << "modelcdr: protected " << printable(a.input) << " for " << printable(copies[i].name) << " -> "
                << printable(copies[i].output) << ", map " << printable(copies[i].map) << "\n";
  }
  if (!a.quiet)
    std::cerr << "modelcdr: " << results.size() << " protected copies in " << printable(a.output) << " (input read once)\n";
  return 0;
}

// A trust file: one signer fingerprint (32 hex digits) per line, optionally followed by a name
// (the lines `keygen` prints); '#' starts a comment.
Result<std::vector<std::string>> read_trust_file(const std::string& path) {
  MCDR_ASSIGN(std::string text, mtd::read_small_file(path, 1 << 20));
  std::vector<std::string> out;
  size_t line_no = 0, pos = 0;
  while (pos <= text.size()) {
    size_t nl = text.find('\n', pos);
    std::string line = text.substr(pos, nl == std::string::npos ? std::string::npos : nl - pos);
    pos = nl == std::string::npos ? text.size() + 1 : nl + 1;
    ++line_no;
    if (auto hash = line.find('#'); hash != std::string::npos) line.resize(hash);
    while (!line.empty() && std::isspace(static_cast<unsigned char>(line.back()))) line.pop_back();
    while (!line.empty() && std::isspace(static_cast<unsigned char>(line.front()))) line.erase(line.begin());
    if (line.empty()) continue;
    line.resize(std::min(line.size(), line.find_first_of(" \t")));  // "FP  NAME.pub", as keygen prints
    for (auto& c : line) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    if (line.size() != 32 || line.find_first_not_of("0123456789abcdef") != std::string::npos)
      return make_error(Rule::trust_format, path + ":" + std::to_string(line_no) +
                                            ": not a signer fingerprint (32 hex digits, as `modelcdr keygen` prints)");
    out.push_back(line);
  }
  if (out.empty()) return make_error(Rule::trust_format, path + ": no fingerprints");
  return out;
}

// Builds OpenOptions from the key arguments; returns an exit code on error.
int open_options(const MtdArgs& a, mtd::RestoreOptions& o, std::vector<mtd::Key>& keep) {
  int given = !a.key_files.empty() + !a.passphrase_files.empty() + !a.identity.empty();
  if (given != 1 || a.key_files.size() > 1 || a.passphrase_files.size() > 1)
    return usage("give exactly one of --key-file, --passphrase-file, --identity");
  if (!a.key_files.empty()) {
    auto k = mtd::Key::load(a.key_files[0]);
    if (!k.ok()) return error_exit("--key-file", k.error());
    if (!k->has_symmetric()) return usage("--key-file: not a symmetric key file");
    warn_if_exposed(a.key_files[0], *k);
    o.open.symmetric_key = k->symmetric();
  }
  if (!a.passphrase_files.empty()) {
    auto p = read_passphrase(a.passphrase_files[0]);
    if (!p.ok()) return error_exit("--passphrase-file", p.error());
    o.open.passphrase = std::move(*p);
  }
  if (!a.identity.empty()) {
    auto k = mtd::Key::load(a.identity);
    if (!k.ok()) return error_exit("--identity", k.error());
    if (!k->can_open()) return usage("--identity " + a.identity + ": no x25519-secret key (give the .key file)");
    warn_if_exposed(a.identity, *k);
    keep.push_back(*k);
    o.open.identity = keep.back().file();
  }
  for (const auto& f : a.verify_signers) {
    auto k = mtd::Key::load(f);
    if (!k.ok()) return error_exit("--verify-signer", k.error());
    if (!k->signer_public()) return usage("--verify-signer " + f + ": no ed25519-public key");
    o.open.trusted_signers.push_back(*k->signer_public());
  }
  for (const auto& f : a.trust_files) {
    auto fps = read_trust_file(f);
    if (!fps.ok()) return error_exit("--trust", fps.error());
    o.open.trusted_fingerprints.insert(o.open.trusted_fingerprints.end(), fps->begin(), fps->end());
  }
  // Secure by default: who made the map is checked unless the user explicitly opts out.
  const bool pinned = !a.verify_signers.empty() || !a.trust_files.empty();
  if (!pinned && !a.allow_unsigned)
    return usage("a trusted signer is required: give --verify-signer PUBLISHER.pub or --trust FILE "
                 "(or --allow-unsigned to accept a map that anyone could have made)");
  if (pinned && a.allow_unsigned) return usage("--allow-unsigned cannot be combined with --verify-signer or --trust");
  o.open.allow_unsigned = a.allow_unsigned;
  o.expect = a.expect;
  if (o.expect != "auto" && o.expect != "protected" && o.expect != "restored")
    return usage("--expect must be auto, protected or restored");
  return -1;
}

int restore_main(const Engine& engine, const MtdArgs& a) {
  if (a.input.empty() || a.output.empty() || a.map.empty()) return usage("restore: IN, --map MAP and -o OUT are required");
  if (path_exists(a.output)) return usage("restore: " + a.output + " already exists: remove it or choose another name");
  mtd::RestoreOptions o;
  o.min_version = a.min_version;
  o.check_expiry = true;
  std::vector<mtd::Key> keep;
  if (int rc = open_options(a, o, keep); rc >= 0) return rc;
  Sink out = Sink::file(a.output);
  FileReport r = engine.restore(Source::file(a.input), a.map, out, o);
  if (o.open.passphrase) sodium_memzero(o.open.passphrase->data(), o.open.passphrase->size());
  return finish("restore", a, r);
}

int verify_main(const Engine& engine, const MtdArgs& a) {
  if (a.input.empty() || a.map.empty()) return usage("verify: IN and --map MAP are required");
  mtd::RestoreOptions o;
  o.min_version = a.min_version;
  std::vector<mtd::Key> keep;
  if (int rc = open_options(a, o, keep); rc >= 0) return rc;
  FileReport r = engine.verify(Source::file(a.input), a.map, o);
  if (o.open.passphrase) sodium_memzero(o.open.passphrase->data(), o.open.passphrase->size());
  return finish("verify", a, r);
}

Result<std::string> read_map_file(const std::string& path) {
  auto sealed = mtd::read_small_file(path, mtd::kMaxMapBytes);
  if (!sealed.ok()) return sealed.error();
  if (!mtd::looks_like_map(*sealed)) return make_error(Rule::map_format, path + " is not a modelcdr map");
  return sealed;
}

std::string utc_time(int64_t t) {
  std::time_t tt = static_cast<std::time_t>(t);
  std::tm tm{};
  if (!gmtime_r(&tt, &tm)) return "?";
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

// `modelcdr map info M`: the clear header only (no key; nothing secret).
int map_info_main(const MtdArgs& a) {
  using json = nlohmann::ordered_json;
  if (a.map.empty()) return usage("map info: MAP is required");
  auto sealed = read_map_file(a.map);
  if (!sealed.ok()) return error_exit("map info", sealed.error());
  auto h = mtd::read_map_header(*sealed);
  if (!h.ok()) return error_exit("map info: " + a.map, h.error());
  json info = json::parse(h->info, nullptr, false);
  if (!info.is_object()) info = json::object();
  auto str = [&](const char* k) { return info.contains(k) && info[k].is_string() ? info[k].get<std::string>() : std::string(); };
  json slots = json::array();
  for (const auto& sl : h->slots)
    slots.push_back(sl.recipient.empty() ? json{{"type", sl.type}} : json{{"type", sl.type}, {"recipient", sl.recipient}});
  const int64_t created = info.contains("created_unix") && info["created_unix"].is_number_integer() ? info["created_unix"].get<int64_t>() : -1;
  if (a.json_out) {
    json doc = {{"schema", "modelcdr.map-info/1"}, {"map", a.map}, {"format", h->version},
                {"signer", h->signed_ ? json{{"fingerprint", h->signer}, {"signature_valid", h->signature_valid}} : json(nullptr)},
                {"info", info}, {"slots", slots}};
    std::cout << doc.dump(2, ' ', false, json::error_handler_t::replace) << "\n";
    return 0;
  }
  std::cout << "map: " << printable(a.map) << "\nformat: " << h->version << "\n";
  if (h->signed_)
    std::cout << "signer: " << h->signer << (h->signature_valid ? " (signature valid for this key; pin it with --verify-signer or --trust)"
                                                                 : " (signature does NOT verify)") << "\n";
  else
    std::cout << "signer: none (unsigned map: this header is not authenticated)\n";
  std::cout << "model id: " << printable(str("model_id")) << "\n";
  std::cout << "copy: " << (str("copy").empty() ? "-" : printable(str("copy"))) << "\n";
  std::cout << "protected file digest: " << printable(str("protected_digest")) << "\n";
  std::cout << "created: " << (created >= 0 ? utc_time(created) : "?") << "\n";
  // Release fields (docs/MTD.md §4a): signed with everything else.
  const bool has_version = info.contains("version") && info["version"].is_number_unsigned();
  std::cout << "version: " << (has_version ? std::to_string(info["version"].get<uint64_t>()) : std::string("-")) << "\n";
  const bool expires = info.contains("expires_unix") && info["expires_unix"].is_number_integer();
  std::cout << "expires: " << (expires ? utc_time(info["expires_unix"].get<int64_t>()) : std::string("never")) << "\n";
  if (info.contains("records") && info["records"].is_number_unsigned())
    std::cout << "records: " << info["records"].get<uint64_t>()
              << (info.value("encrypted", false) ? " (permuted and encrypted)" : " (permuted)") << "\n";
  std::cout << "key slots: " << h->slots.size() << "\n";
  for (const auto& sl : h->slots) std::cout << "  " << sl.type << (sl.recipient.empty() ? "" : " " + sl.recipient) << "\n";
  return 0;
}

// A recipient to remove: a fingerprint (32 hex digits) or a NAME.pub / NAME.key file.
Result<std::string> recipient_fingerprint_of(const std::string& arg) {
  std::string lower = arg;
  for (auto& c : lower) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  if (lower.size() == 32 && lower.find_first_not_of("0123456789abcdef") == std::string::npos && !path_exists(arg))
    return lower;
  MCDR_ASSIGN(auto k, mtd::Key::load(arg));
  if (!k.recipient()) return make_error(Rule::key_no_x25519, arg + ": no x25519-public key");
  return mtd::fingerprint(k.recipient()->data(), 32);
}

// `modelcdr map add-recipient|remove-recipient M PUB...`: re-wraps the content key for the new
// set of recipients and re-signs; the protected model file is not read or touched.
int map_change_main(const MtdArgs& a, bool add) {
  const std::string cmd = add ? "map add-recipient" : "map remove-recipient";
  if (a.map.empty() || a.changes.empty()) return usage(cmd + ": MAP and at least one " + (add ? "PUB" : "PUB or FINGERPRINT") + " are required");
  mtd::RestoreOptions o;
  std::vector<mtd::Key> keep;
  if (int rc = open_options(a, o, keep); rc >= 0) return rc;
  mtd::ResealOptions ro;
  for (const auto& c : a.changes) {
    if (add) {
      auto k = mtd::Key::load(c);
      if (!k.ok()) return error_exit(cmd, k.error());
      if (!k->recipient()) return usage(cmd + ": " + c + ": no x25519-public key");
      ro.add_recipients.push_back(*k->recipient());
    } else {
      auto fp = recipient_fingerprint_of(c);
      if (!fp.ok()) return error_exit(cmd, fp.error());
      ro.remove_fingerprints.push_back(*fp);
    }
  }
  if (int rc = load_signer(a, ro.signer, keep); rc >= 0) return rc;
  if (!a.output.empty() && path_exists(a.output)) return usage(cmd + ": " + a.output + " already exists");
  auto sealed = read_map_file(a.map);
  if (!sealed.ok()) return error_exit(cmd, sealed.error());
  auto out = mtd::reseal_map(*sealed, o.open, ro);
  if (o.open.passphrase) sodium_memzero(o.open.passphrase->data(), o.open.passphrase->size());
  if (!out.ok()) {
    std::cerr << "modelcdr: " << cmd << ": " << printable(a.map) << ": " << printable(out.error().describe()) << "\n";
    const auto& rule = out.error().rule;
    return rule == Rule::map_corrupt || rule == Rule::map_signature || rule == Rule::map_untrusted ? 3 : 2;
  }
  // The map is replaced only as asked (-o writes elsewhere), atomically: never half a map.
  const std::string dest = a.output.empty() ? a.map : a.output;
  if (auto s = mtd::write_file_atomic(dest, *out, 0644, /*force=*/a.output.empty()); !s.ok()) return error_exit(cmd, s.error());
  if (!a.quiet)
    std::cerr << "modelcdr: " << cmd << ": " << printable(dest) << ": " << (add ? ro.add_recipients.size() : ro.remove_fingerprints.size())
              << " recipient(s) " << (add ? "added" : "removed") << (ro.signer ? ", re-signed by " + keep.back().fingerprint() : "")
              << "; the protected model is unchanged\n";
  return 0;
}

// `modelcdr trace FILE --maps DIR`: which customer's copy FILE (or some of its tensors) is.
// Exit 0: a match; 1: no match; 2: usage or unreadable file.
int trace_main(const MtdArgs& a) {
  namespace fs = std::filesystem;
  if (a.input.empty() || a.maps_dir.empty()) return usage("trace: FILE and --maps DIR are required");
  mtd::RestoreOptions o;
  std::vector<mtd::Key> keep;
  if (int rc = open_options(a, o, keep); rc >= 0) return rc;
  std::error_code ec;
  std::vector<std::string> maps;
  for (const auto& e : fs::directory_iterator(a.maps_dir, ec))
    if (e.path().extension() == ".map") maps.push_back(e.path().string());
  if (ec) return usage("trace: cannot read --maps " + a.maps_dir + ": " + ec.message());
  if (maps.empty()) return usage("trace: no *.map files in " + a.maps_dir);
  constexpr size_t kMaxTraceMaps = 100000;  // each is opened in turn; bound the run
  if (maps.size() > kMaxTraceMaps) return usage("trace: more than " + std::to_string(kMaxTraceMaps) + " maps in " + a.maps_dir);
  std::sort(maps.begin(), maps.end());
  auto t = mtd::trace(a.input, maps, o.open);
  if (o.open.passphrase) sodium_memzero(o.open.passphrase->data(), o.open.passphrase->size());
  if (t.error) {
    std::cerr << "modelcdr: trace: " << printable(a.input) << ": " << printable(t.error->describe()) << "\n";
    return 2;
  }
  for (const auto& [m, why] : t.skipped) std::cerr << "modelcdr: trace: skipped " << printable(m) << ": " << printable(why) << "\n";
  if (t.maps_opened == 0) {
    std::cerr << "modelcdr: trace: none of the " << maps.size() << " maps opens with the given key\n";
    return 2;
  }
  if (t.matches.empty()) {
    std::cout << printable(a.input) << ": no match among " << t.maps_opened << " maps (" << t.leaked_records
              << " records compared)\n";
    return 1;
  }
  for (const auto& m : t.matches)
    std::cout << printable(a.input) << ": matches " << (m.copy.empty() ? "-" : printable(m.copy)) << " (map " << printable(m.map)
              << "): " << m.matching << " of its " << m.distinctive << " distinctive records\n";
  if (t.matches.size() > 1)
    std::cerr << "modelcdr: trace: warning: more than one copy matches (the leak mixes copies, or maps were duplicated)\n";
  return 0;
}

void add_key_args(CLI::App* c, MtdArgs& a, bool opening) {
  c->add_option("--key-file", a.key_files, "symmetric key file (keygen --symmetric)");
  c->add_option("--passphrase-file", a.passphrase_files, "file whose first line is the passphrase (Argon2id)");
  if (opening) {
    c->add_option("--identity", a.identity, "your secret key file (NAME.key) to open a map sealed to you");
    c->add_option("--verify-signer", a.verify_signers, "require a valid signature by this public key (NAME.pub); repeatable");
    c->add_option("--trust", a.trust_files, "file of trusted signer fingerprints, one per line; repeatable");
    c->add_flag("--allow-unsigned", a.allow_unsigned, "accept maps without a trusted signer (anyone could have made them)");
  }
  c->add_option("--report", a.report, "write a JSON report (modelcdr.mtd/1)");
  c->add_flag("--quiet", a.quiet, "no progress messages");
}

}  // namespace

void add_mtd_commands(CLI::App& app) {
  static MtdArgs a;
  auto* kg = app.add_subcommand("keygen", "make a key pair (NAME.key, NAME.pub) or a symmetric key file");
  kg->add_option("-o,--output", a.keygen_out, "NAME (pair) or FILE (--symmetric)");
  kg->add_flag("--symmetric", a.symmetric, "write one random symmetric key file");
  kg->add_flag("--force", a.force, "overwrite existing key files");
  kg->add_flag("--quiet", a.quiet, "no messages");
  extra_commands().push_back({kg, [](const Engine&) { return keygen_main(a); }});

  auto* key = app.add_subcommand("key", "key file tools");
  key->require_subcommand(1);
  auto* fp = key->add_subcommand("fingerprint", "print the signer fingerprint of a key file (for --trust files)");
  fp->add_option("file", a.input, "NAME.pub or NAME.key");
  extra_commands().push_back({fp, [](const Engine&) { return fingerprint_main(a); }});

  fp->add_flag("--recipient", a.recipient_fp, "print the recipient (x25519) fingerprint that `map info` lists");

  auto* mp = app.add_subcommand("map", "publisher tools for sealed maps");
  mp->require_subcommand(1);
  auto* mi = mp->add_subcommand("info", "print a map's clear header: format, model, copy, signer, recipients (no key needed)");
  mi->add_option("map", a.map, "sealed map");
  mi->add_flag("--json", a.json_out, "print JSON (modelcdr.map-info/1)");
  extra_commands().push_back({mi, [](const Engine&) { return map_info_main(a); }});
  for (bool add : {true, false}) {
    auto* c = mp->add_subcommand(add ? "add-recipient" : "remove-recipient",
                                 add ? "seal a map to more recipients (re-wraps the content key, re-signs)"
                                     : "remove recipients from a map (re-wraps, re-signs; does not revoke a key already extracted)");
    c->add_option("map", a.map, "sealed map (rewritten in place unless -o)");
    c->add_option("recipients", a.changes, add ? "NAME.pub files" : "NAME.pub files or recipient fingerprints");
    c->add_option("-o,--output", a.output, "write the new map here instead of replacing MAP");
    c->add_option("--sign", a.sign, "re-sign with this secret key file (required when the map is signed)");
    add_key_args(c, a, true);
    extra_commands().push_back({c, [add](const Engine&) { return map_change_main(a, add); }});
  }

  auto* tr = app.add_subcommand("trace", "name the customer whose protected copy a leaked file (or some of its tensors) is");
  tr->add_option("file", a.input, "leaked file");
  tr->add_option("--maps", a.maps_dir, "folder of the customers' maps (*.map)");
  add_key_args(tr, a, true);
  extra_commands().push_back({tr, [](const Engine&) { return trace_main(a); }});

  auto* pr = app.add_subcommand("protect", "disarm, then apply keyed MTD transforms; write the sealed map");
  pr->add_option("input", a.input, "model file");
  pr->add_option("-o,--output", a.output, "protected model");
  pr->add_option("--map", a.map, "sealed deconstruction map to write");
  pr->add_option("--recipient", a.recipients, "public key file (NAME.pub) that may open the map; repeatable");
  pr->add_option("--sign", a.sign, "sign the map with this secret key file (NAME.key)");
  pr->add_option("--recipients-dir", a.recipients_dir, "one protected copy and map per DIR/NAME.pub (-o is then a folder)");
  pr->add_option("--compat", a.compat, "torch2 (default) or torch1.13");
  pr->add_flag("--encrypt", a.encrypt, "also encrypt every record (AES-256-CTR), for confidentiality of the weights");
  pr->add_option("--version", a.version, "publisher release number, signed into the map (restore --min-version refuses older)");
  pr->add_option("--expires", a.expires, "restore refuses the map from then on: YYYY-MM-DD, YYYY-MM-DDTHH:MM:SSZ or @UNIX (UTC)");
  pr->add_flag("--allow-trailing-data", a.allow_trailing, "drop bytes after the pickle's STOP instead of rejecting");
  add_key_args(pr, a, false);
  extra_commands().push_back({pr, [](const Engine& e) { return protect_main(e, a); }});

  auto* rs = app.add_subcommand("restore", "verify a protected model against its map, undo the transforms, verify again");
  rs->add_option("input", a.input, "protected model");
  rs->add_option("--map", a.map, "sealed map");
  rs->add_option("-o,--output", a.output, "restored model (bit-identical to the disarmed original)");
  rs->add_option("--min-version", a.min_version, "refuse a map whose signed publisher version is older (rollback)");
  add_key_args(rs, a, true);
  extra_commands().push_back({rs, [](const Engine& e) { return restore_main(e, a); }});

  auto* vf = app.add_subcommand("verify", "check a protected or restored model against its map");
  vf->add_option("input", a.input, "model file");
  vf->add_option("--map", a.map, "sealed map");
  vf->add_option("--expect", a.expect, "auto (default), protected or restored");
  vf->add_option("--min-version", a.min_version, "refuse a map whose signed publisher version is older (rollback)");
  add_key_args(vf, a, true);
  extra_commands().push_back({vf, [](const Engine& e) { return verify_main(e, a); }});
}
