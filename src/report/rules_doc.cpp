// Rendered from the compiled table (not by a second parser of rules.def), so the document
// describes exactly the rules, severities and verdicts the binary applies.
#include "report/rules_doc.hpp"

#include <string_view>
#include <utility>

#include "modelcdr/rules.hpp"

namespace modelcdr::report {

namespace {

// Rule families in the order the document lists them, with where their code lives.
constexpr std::pair<std::string_view, std::string_view> kFamilies[] = {
    {"pickle", "Pickle program (src/pickle, src/cdr/program_scan.cpp)"},
    {"cdr", "Lifter and rebuild (src/cdr)"},
    {"torch", "PyTorch containers (src/formats/torch_*)"},
    {"torchscript", "TorchScript (src/formats/torchscript_reader.cpp)"},
    {"zip", "ZIP (src/container/zip_reader.cpp, zip_writer.cpp)"},
    {"tar", "tar (src/container/tar_reader.cpp)"},
    {"joblib", "joblib (src/formats/joblib_reader.cpp)"},
    {"codec", "Compressed streams (src/formats/codecs.cpp)"},
    {"safetensors", "safetensors (src/formats/safetensors_*)"},
    {"npy", "NumPy .npy (src/formats/npy_*)"},
    {"npz", "NumPy .npz"},
    {"convert", "Format conversion (--to)"},
    {"limits", "Limits (include/modelcdr/limits.hpp)"},
    {"json", "JSON (src/io/bounded_json.cpp)"},
    {"emit", "Output self-check (src/pickle/pickle_emitter.cpp)"},
    {"stego", "Steganography (src/stego)"},
    {"format", "Formats (src/formats/registry.cpp, src/cdr/pipeline.cpp)"},
    {"hf", "Model repositories"},
    {"copy", "Directory mode (src/engine)"},
    {"io", "Files and outputs (src/io)"},
    {"resource", "Resources"},
    {"policy", "Class policy files (--policy)"},
    {"output", "Output formats"},
    {"mtd", "MTD (src/mtd)"},
    {"map", "MTD maps (src/mtd/seal.cpp)"},
    {"key", "MTD keys (src/mtd/keys.cpp)"},
    {"crypto", "Cryptography (libsodium)"},
    {"trust", "Trusted signer lists"},
    {"lab", "modelcdr-lab"},
    {"cli", "Command line"},
};

std::string_view family_of(std::string_view id) { return id.substr(0, id.find('.')); }

// Table cells: a '|' would end the cell.
std::string cell(std::string_view s) {
  std::string out;
  for (char c : s) out += c == '|' ? std::string("\\|") : std::string(1, c);
  return out;
}

const char* kIntro = R"(# Finding rule ids

<!-- GENERATED from src/report/rules.def by `build/modelcdr-lab rules-doc`; do not edit. -->

Every finding and error carries a stable rule id. The catalogue `src/report/rules.def` is the
one source for this page, for the SARIF rule metadata (`scan --sarif`), for what `disarm`
rejects and for the verdict of a scanned file. Longer explanations: [RULES-NOTES.md](RULES-NOTES.md).

Columns:
- **severity**: the highest severity the rule is reported with (some call sites report less):
  `critical` (code execution or OS/network access), `high` (content that cannot be trusted or
  cannot be parsed with certainty), `medium`, `low` (something converted or dropped), `info`.
  For a rule that is only an error, how bad the unreadable input is.
- **disarm**: `reject` (exit 2, no output), `reject if high` (reject when reported as high or
  critical, else drop), `reject (unless --allow-trailing-data)`, `drop` (left out of the
  rebuilt file, exit 1), `convert` (rewritten as plain data), `note` (nothing changes).
  Every error rejects the file.
- **verdict**: what a finding implies for the file's verdict (below); `by severity`:
  critical means `dangerous`, low `safe` (a library class modelcdr rebuilds faithfully), info
  `clean`, high and medium `unknown`.
- **SARIF**: `properties.security-severity` of the rule in SARIF output.

## Verdicts
`scan` gives each file the worst verdict of its findings:
- `clean`: only model data (tensors, numbers, strings, containers) and format details.
- `safe`: library classes a mainstream loader needs and modelcdr rebuilds faithfully (torch.nn
  modules of a whole-model save, numpy arrays and dtypes, the vetted scikit-learn registry,
  `argparse.Namespace`, ...).
- `unknown`: imports outside that table (a project's own classes), or content that cannot be
  proven safe; a file that cannot be parsed is `unknown` unless a finding made it `dangerous`.
- `dangerous`: anything that can run code or reach the system, and every structure whose only
  use is to hide content from a scanner (FRAME desyncs, second streams, zip local/central
  disagreement, polyglot prefixes, nested pickles).
`scan --fail-on dangerous|unknown|any` (default `unknown`) exits 1 when a file's verdict is at
least that bad (`any`: any finding of severity low or above); otherwise 2 when a file could not
be read or parsed, else 0. `disarm` exits 1 when it removed or converted something and 2 when
it rejected the file.
)";

}  // namespace

std::string rules_markdown() {
  std::string out = kIntro;
  for (const auto& [family, title] : kFamilies) {
    bool any = false;
    for (const RuleInfo& r : all_rules()) {
      if (family_of(r.id) != family) continue;
      if (!any) {
        out += "\n## " + std::string(title) + "\n";
        out += "| rule | severity | disarm | verdict | SARIF | meaning |\n|---|---|---|---|---|---|\n";
        any = true;
      }
      out += "| `" + std::string(r.id) + "` | " + severity_name(r.severity) + " | " + disposition_name(r.disposition) + " | " +
             verdict_class_name(r.verdict) + " | " + std::string(r.security_severity) + " | " + cell(r.help) + " |\n";
    }
  }
  // A family missing from kFamilies still gets its rows (the test checks every rule is listed).
  bool other = false;
  for (const RuleInfo& r : all_rules()) {
    bool listed = false;
    for (const auto& f : kFamilies) listed |= f.first == family_of(r.id);
    if (listed) continue;
    if (!other) out += "\n## Other\n| rule | severity | disarm | verdict | SARIF | meaning |\n|---|---|---|---|---|---|\n";
    other = true;
    out += "| `" + std::string(r.id) + "` | " + severity_name(r.severity) + " | " + disposition_name(r.disposition) + " | " +
           verdict_class_name(r.verdict) + " | " + std::string(r.security_severity) + " | " + cell(r.help) + " |\n";
  }
  return out;
}

}  // namespace modelcdr::report
