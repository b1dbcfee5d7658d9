// `modelcdr-lab`: attack simulator for tests and benchmarks. NOT part of the CDR tool.
//
//   modelcdr-lab embed   IN -o OUT --payload FILE --bits K [--tensor NAME]...
//   modelcdr-lab extract IN -o FILE --bits K --length BYTES [--tensor NAME]...
//   modelcdr-lab tensors IN [--bits K]        # names, dtypes, capacities
//   modelcdr-lab score IN [--json]            # the scan --stego statistic per tensor
//
// IN is parsed like `modelcdr disarm` parses it (nothing is executed); OUT is a fresh checkpoint.
// Embedding layout: see src/stego/payload_embedder.hpp.
#include <CLI/CLI.hpp>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <iterator>
#include <nlohmann/json.hpp>

#include "modelcdr/api.hpp"
#include "report/rules_doc.hpp"
#include "stego/lsb_randomizer.hpp"
#include "stego/payload_embedder.hpp"
#include "stego/stego_detector.hpp"
#include "stego/tensor_names.hpp"

using namespace modelcdr;

namespace {

int fail(const std::string& what) {
  std::cerr << "modelcdr-lab: " << what << "\n";
  return 2;
}

bool read_all(const std::string& path, std::vector<uint8_t>& out) {
  std::ifstream f(path, std::ios::binary);
  if (!f) return false;
  out.assign(std::istreambuf_iterator<char>(f), {});
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"modelcdr-lab: embed / extract payloads in low mantissa bits (attack simulator for tests)"};
  app.require_subcommand(1);
  std::string in, out, payload_path;
  int k = 8;
  uint64_t length = 0;
  std::vector<std::string> tensors;
  bool as_json = false;

  auto* embed = app.add_subcommand("embed", "hide FILE in the low K mantissa bits of float tensors");
  embed->add_option("IN", in)->required();
  embed->add_option("-o,--output", out)->required();
  embed->add_option("--payload", payload_path, "file to hide")->required();
  embed->add_option("--bits,-k", k, "low mantissa bits per element (1..23 for float32)")->check(CLI::Range(1, 52));
  embed->add_option("--tensor", tensors, "tensor names, in embedding order (default: every float tensor)");
  double fill = 0;
  embed->add_option("--fill", fill,
                    "instead of one stream across tensors: fill the first FRACTION of EACH target tensor's capacity "
                    "with the start of the payload (detection benchmarks)")
      ->check(CLI::Range(0.0, 1.0));

  auto* extract = app.add_subcommand("extract", "read LENGTH bytes back from the low K bits");
  extract->add_option("IN", in)->required();
  extract->add_option("-o,--output", out)->required();
  extract->add_option("--bits,-k", k)->check(CLI::Range(1, 52));
  extract->add_option("--length", length, "bytes to extract")->required();
  extract->add_option("--tensor", tensors);

  auto* list = app.add_subcommand("tensors", "list float tensors and their capacity at K bits");
  list->add_option("IN", in)->required();
  list->add_option("--bits,-k", k)->check(CLI::Range(1, 52));

  // docs/RULES.md is this output (a unit test compares them): a subcommand of the lab tool, so the
  // document comes from the compiled table itself, with no second parser of rules.def.
  auto* rules_doc = app.add_subcommand("rules-doc", "print docs/RULES.md, generated from src/report/rules.def");
  auto* score = app.add_subcommand("score", "print the scan --stego score of every float tensor");
  score->add_option("IN", in)->required();
  score->add_flag("--json", as_json);

  try {  // usage errors exit 2, like modelcdr's (docs/CLI.md); --help exits 0
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : 2;
  }

  if (*rules_doc) {
    std::cout << modelcdr::report::rules_markdown();
    return 0;
  }
  DisarmOptions dopts;
  FileReport rep;
  auto loaded = load_model(in, dopts, rep);
  if (!loaded.ok()) return fail(in + ": " + loaded.error().describe());
  model::Model& m = model_of(**loaded);

  if (*score) {
    auto scores = stego::score_model(m, stego::StegoOptions{});
    nlohmann::json j = nlohmann::json::array();
    for (const auto& s : scores) {
      if (as_json) {
        j.push_back({{"name", s.name}, {"dtype", s.dtype}, {"elements", s.elements}, {"tested", s.score.tested},
                     {"score", s.score.score}, {"test", s.score.test}, {"detail", s.score.detail},
                     {"constant_low_planes", s.score.constant_low_planes}});
      } else {
        std::printf("%-40s %-9s %10llu  %s %7.2f  %s\n", s.name.c_str(), s.dtype.c_str(), (unsigned long long)s.elements,
                    s.score.tested ? "score" : "untested", s.score.score, s.score.detail.c_str());
      }
    }
    if (as_json) std::cout << j.dump() << "\n";
    return 0;
  }
  if (*list) {
    for (const auto& nt : stego::named_tensors(m)) {
      const auto& t = m.tensors[nt.tensor];
      uint64_t first = 0, count = 0;
      bool contiguous = stego::contiguous_span(m, t, first, count);
      const auto& info = model::dtype_info(t.kind == model::TensorKind::dense ? m.storages[t.storage].dtype : t.dtype);
      int mant = contiguous ? stego::mantissa_bits(m.storages[t.storage].dtype) : 0;
      std::printf("%-40s %-9s %10llu elements  capacity %llu bytes at k=%d\n", nt.name.c_str(), info.name,
                  (unsigned long long)count, (unsigned long long)(mant >= k ? count * k / 8 : 0), k);
    }
    return 0;
  }

  auto plan = stego::plan_embedding(m, k, tensors);
  if (!plan.ok()) return fail(plan.error().describe());

  if (*embed) {
    std::vector<uint8_t> payload;
    if (!read_all(payload_path, payload)) return fail("cannot read " + payload_path);
    Result<uint64_t> n = uint64_t(0);
    if (fill > 0) {
      uint64_t total = 0;
      for (const auto& seg : plan->segments) {
        stego::EmbedPlan one{plan->k, {seg}};
        uint64_t bytes = uint64_t(double(one.capacity_bits() / 8) * fill);
        if (bytes > payload.size()) return fail("payload shorter than the fill of '" + seg.name + "'");
        auto w = stego::embed_payload(m, one, std::span<const uint8_t>(payload.data(), bytes));
        if (!w.ok()) return fail(w.error().describe());
        total += *w;
      }
      n = total;
    } else {
      n = stego::embed_payload(m, *plan, payload);
    }
    if (!n.ok()) return fail(n.error().describe());
    FileReport wrep = rep;
    if (auto s = write_model(m, out, dopts, wrep); !s.ok()) return fail(out + ": " + s.error().describe());
    std::cerr << "modelcdr-lab: embedded " << payload.size() << " bytes in " << *n << " elements at k=" << k << " ("
              << plan->segments.size() << " tensors, capacity " << plan->capacity_bits() / 8 << " bytes)\n";
    return 0;
  }
  if (*extract) {
    auto data = stego::extract_payload(m, *plan, length);
    if (!data.ok()) return fail(data.error().describe());
    std::ofstream f(out, std::ios::binary);
    f.write(reinterpret_cast<const char*>(data->data()), std::streamsize(data->size()));
    if (!f) return fail("cannot write " + out);
    return 0;
  }
  return 2;
}
