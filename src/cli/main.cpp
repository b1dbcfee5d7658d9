// The `modelcdr` command: scan, disarm (file or model repository). Exit codes are documented
// in docs/CLI.md; errors name the file, the entry/offset and the rule.
#include <sys/stat.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <memory>
#include <mutex>
#include <new>
#include <optional>

// Argument parsing and rendering over the public API (include/modelcdr/) only.
#include "cli/commands.hpp"
#include "modelcdr/api.hpp"
#include "modelcdr/batch.hpp"
#include "modelcdr/engine.hpp"
#include "modelcdr/formats.hpp"
#include "modelcdr/output_file.hpp"
#include "modelcdr/render.hpp"
#include "modelcdr/stego.hpp"

namespace fs = std::filesystem;
using namespace modelcdr;

namespace {

// --fail-on: exit 1 when a file's verdict is at least this bad ("any": any finding of severity
// low or above, the exit rule before verdicts); 2 when a file could not be read; else 0.
int scan_exit_code(const std::vector<FileReport>& reports, const std::string& fail_on) {
  auto fails = [&](const FileReport& r) {
    if (fail_on == "any") return r.status == FileStatus::findings;
    return r.verdict >= verdict_from_name(fail_on).value_or(Verdict::unknown);
  };
  int rc = 0;
  for (const auto& r : reports) {
    if (r.status == FileStatus::error) rc = 2;
    else if (fails(r) && rc == 0) rc = 1;
  }
  return rc;
}

int scan_main(const Engine& engine, const std::vector<std::string>& paths, const std::vector<std::string>& excludes, bool as_json, bool as_sarif,
              bool stego, double stego_threshold, const std::string& fail_on, bool verbose) {
  const auto started = std::chrono::steady_clock::now();
  engine::ScanWalkOptions walk;
  walk.excludes = excludes;
  ScanOptions& options = walk.scan;
  options.stego = stego;
  if (stego) {
    stego::StegoOptions so;
    so.threshold = stego_threshold;
    options.inspect = stego::make_stego_inspector(so);
  }
  if (::isatty(2))  // a progress line on a terminal only, erased before the results
    walk.progress = [](size_t done, const std::string& path) {
      std::cerr << "\r\033[K[" << done + 1 << "] " << report::printable(path).substr(0, 70) << std::flush;
    };
  std::vector<FileReport> reports = engine.scan_paths(paths, walk);
  if (walk.progress) std::cerr << "\r\033[K" << std::flush;
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  int rc = scan_exit_code(reports, fail_on);
  if (as_json) {
    std::cout << report::scan_json(reports);
  } else if (as_sarif) {
    std::cout << report::sarif(reports, verbose);
  } else {
    for (const auto& r : reports) {
      std::cout << report::printable(r.input) << ": " << r.format << ", " << r.tensors.count << " tensors (" << r.tensors.total_bytes
                << " bytes), " << status_name(r.status) << ", verdict " << verdict_name(r.verdict) << "\n";
      if (r.error) std::cout << "  " << report::error_line(r.input, *r.error) << "\n";
      for (const auto& f : r.findings) std::cout << "  " << report::text_line(r.input, f) << "\n";
    }
    std::cout << engine::scan_summary(reports, seconds);
  }
  // Done: the process ends here. Freeing the reports, the engine and the heap block by block
  // took ~1 ms of a ~20 ms folder scan; the kernel frees them with the process. Scan writes no
  // file (standard input's spool is already unlinked), so nothing else is pending.
  // (ASan builds return as before, so that LeakSanitizer still checks the scan at exit.)
#ifndef __SANITIZE_ADDRESS__
  std::cout.flush();
  std::fflush(nullptr);
  std::_Exit(rc);
#endif
  return rc;
}

bool same_file(const std::string& a, const std::string& b) {
  struct stat sa{}, sb{};
  if (::stat(a.c_str(), &sa) != 0 || ::stat(b.c_str(), &sb) != 0) return false;
  return sa.st_dev == sb.st_dev && sa.st_ino == sb.st_ino;
}

int exit_code(FileStatus s) {
  switch (s) {
    case FileStatus::clean:
    case FileStatus::skipped: return 0;
    case FileStatus::removed: return 1;
    default: return 2;
  }
}

// Errors are printed even with --quiet; removals and notes only without it.
void print_outcome(const FileReport& r, bool quiet) {
  if (r.error) std::cerr << "modelcdr: rejected " << report::error_line(r.input, *r.error) << "\n";
  if (quiet) return;
  for (const auto& f : r.removed) std::cerr << "modelcdr: removed " << report::text_line(r.input, f) << "\n";
  for (const auto& f : r.findings)
    if (f.rule == Rule::stego_lsb_randomized) std::cerr << "modelcdr: " << report::printable(r.input) << ": " << report::printable(f.message) << "\n";
}

// Checks that a single-file output can be written before any work is done: a usable
// folder, not the input, not a folder, and not an existing file unless --force.
bool output_usable(const std::string& in, const std::string& out, bool force) {
  std::string dir = fs::path(out).parent_path().string();
  if (dir.empty()) dir = ".";
  if (!fs::is_directory(dir)) {
    std::cerr << "modelcdr: " << report::printable(out) << ": cannot write the output: folder " << report::printable(dir) << " does not exist\n";
    return false;
  }
  if (path_exists(out)) {
    if (same_file(in, out) || fs::is_directory(out)) {
      std::cerr << "modelcdr: " << report::printable(out) << ": output must be a new file, not the input or a folder\n";
      return false;
    }
    if (!force) {
      std::cerr << "modelcdr: " << report::printable(out) << ": already exists (use --force to replace it)\n";
      return false;
    }
  }
  return true;
}

// The folder summary: every rejection with its reason (even with --quiet), then one line.
int summarize(const std::vector<FileReport>& reports, bool quiet) {
  int rc = 0;
  size_t clean = 0, removed = 0, rejected = 0, copied = 0, left_out = 0;
  for (const auto& r : reports) {
    rc = std::max(rc, exit_code(r.status));
    if (r.status == FileStatus::clean) ++clean;
    else if (r.status == FileStatus::removed) ++removed;
    else if (r.status == FileStatus::rejected) ++rejected;
    else if (!r.output.empty()) ++copied;
    else ++left_out;
    print_outcome(r, quiet);
    if (!quiet && r.status == FileStatus::skipped && r.output.empty())
      std::cerr << "modelcdr: skipped " << report::printable(r.input) << ": " << report::printable(r.note) << "\n";
  }
  std::cerr << "modelcdr: " << reports.size() << " files: " << clean << " clean, " << removed
            << " disarmed with removals, " << rejected << " rejected, " << copied << " copied, " << left_out
            << " left out\n";
  return rc;
}

// A progress bar on a terminal, drawn from the worker threads.
std::function<void(size_t, size_t)> progress_bar(bool enabled) {
  if (!enabled) return {};
  auto mu = std::make_shared<std::mutex>();
  return [mu](size_t done, size_t total) {
    std::lock_guard<std::mutex> lock(*mu);
    const size_t width = 30, filled = total ? width * done / total : width;
    std::cerr << "\r[" << std::string(filled, '#') << std::string(width - filled, ' ') << "] " << done << "/" << total
              << " files" << std::flush;
    if (done == total) std::cerr << "\n";
  };
}

int disarm_folder(const Engine& engine, const std::string& in, const std::string& out, engine::BatchOptions batch,
                  bool quiet, std::vector<FileReport>& reports) {
  batch.progress = progress_bar(!quiet && ::isatty(2));
  auto r = engine.disarm_tree(in, out, batch);
  if (!r.ok()) {
    std::cerr << "modelcdr: " << report::printable(r.error().message) << " [" << rule_id(r.error().rule) << "]\n";
    return 2;
  }
  reports = std::move(*r);
  return summarize(reports, quiet);
}

int disarm_single(const Engine& engine, const std::string& in, const std::string& out, const DisarmOptions& options,
                  bool quiet, std::vector<FileReport>& reports) {
  if (!output_usable(in, out, options.force)) return 2;
  Sink sink = Sink::file(out, options.force, options.fsync);
  reports.push_back(engine.disarm(Source::file(in), sink, options));
  const auto& r = reports.back();
  print_outcome(r, quiet);
  if (!quiet && r.status != FileStatus::rejected)
    std::cerr << "modelcdr: " << report::printable(in) << " -> " << report::printable(out) << ": " << r.format << ", " << r.tensors.count << " tensors, "
              << (r.removed.empty() ? "nothing removed" : std::to_string(r.removed.size()) + " items removed")
              << (r.architecture.empty() ? "" : ", architecture in " + report::printable(r.architecture))
              << (r.shared_bytes ? ", " + std::to_string(r.shared_bytes) + " bytes shared with the input" : "") << "\n";
  return exit_code(r.status);
}

int disarm_main(const Engine& engine, const std::string& in, const std::string& out, const std::string& report_path,
                const engine::BatchOptions& batch, bool quiet) {
  // The report's temporary file is made first: a report that cannot be written fails the
  // command before any output exists.
  std::optional<OutputFile> report;
  if (!report_path.empty() && (same_file(report_path, in) || same_file(report_path, out))) {
    std::cerr << "modelcdr: --report " << report::printable(report_path) << ": must not be the input or the output\n";
    return 2;
  }
  if (!report_path.empty()) {
    auto r = OutputFile::create(report_path, batch.disarm.force);
    if (!r.ok()) {
      std::cerr << "modelcdr: --report " << report::printable(report_path) << ": " << report::printable(r.error().message) << "\n";
      return 2;
    }
    report.emplace(std::move(*r));
  }
  std::vector<FileReport> reports;
  int rc = fs::is_directory(in) ? disarm_folder(engine, in, out, batch, quiet, reports)
                                : disarm_single(engine, in, out, batch.disarm, quiet, reports);
  if (report) {
    auto s = report->write(report::disarm_json(reports));
    if (s.ok()) s = report->commit();
    if (!s.ok()) {
      std::cerr << "modelcdr: --report " << report::printable(report_path) << ": " << report::printable(s.error().message) << "\n";
      return 2;
    }
  }
  return rc;
}

// The output format: --to, or else what the output's name asks for. A name that asks for
// another format than --to is a usage error. Folder input: per file (hf_layout.hpp).
std::optional<OutputFormat> pick_format(const std::string& to, bool to_given, const std::string& out, bool folder) {
  // --to is checked against the format table's names
  OutputFormat given = output_format_named(to).value_or(OutputFormat::pt);
  if (folder) return given;
  auto by_name = output_format_for_file(fs::path(out).filename().string());
  if (!to_given) return by_name.value_or(OutputFormat::pt);
  if (by_name && *by_name != given) {
    std::cerr << "modelcdr: -o " << report::printable(out) << " names a " << output_format_name(*by_name) << " file but --to is " << to
              << " (rename the output or drop --to)\n";
    return std::nullopt;
  }
  return given;
}

// A --randomize-lsb value: 'default', N, or TYPE=N[,TYPE=N...] (never a path such as model.pt).
bool looks_like_lsb_spec(const std::string& a) {
  if (a == "default") return true;
  if (a.empty() || a.find_first_not_of("abcdefghijklmnopqrstuvwxyz0123456789=,") != std::string::npos) return false;
  return a.find_first_not_of("0123456789") == std::string::npos || a.find('=') != std::string::npos;
}

// CLI11 would read "--randomize-lsb IN" as the option's value. A following argument is its
// value only when it looks like one; otherwise the bare flag means the defaults.
std::vector<std::string> normalize_args(int argc, char** argv) {
  std::vector<std::string> args;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a != "--randomize-lsb") {
      args.push_back(a);
    } else if (i + 1 < argc && looks_like_lsb_spec(argv[i + 1])) {
      args.push_back(a + "=" + argv[++i]);
    } else {
      args.push_back("--randomize-lsb=default");
    }
  }
  std::reverse(args.begin(), args.end());  // CLI11's vector form takes the arguments reversed
  return args;
}

}  // namespace

static int run_cli(int argc, char** argv) {
  remember_args(argc, argv);  // `serve` execs modelcdr-serve with them (serve_launch.cpp)
  CLI::App app{"modelcdr: disarm and reconstruct AI model files without executing them"};
  app.set_version_flag("--version", kVersion);
  app.require_subcommand(1);

  auto* scan = app.add_subcommand("scan", "report what model files contain and every suspicious construct");
  std::vector<std::string> scan_paths;
  bool as_json = false, as_sarif = false, stego = false;
  scan->add_option("PATH", scan_paths, "files or folders (folders recurse, .git/ left out), or - for standard input")
      ->required();
  std::vector<std::string> scan_excludes;
  scan->add_option("--exclude", scan_excludes, "leave out files and folders whose path relative to the folder matches GLOB (repeatable)")
      ->type_name("GLOB")
      ->allow_extra_args(false);  // one glob per --exclude: a folder after it is a PATH
  auto* json_flag = scan->add_flag("--json", as_json, "print one JSON document (schema modelcdr.scan/1)");
  scan->add_flag("--sarif", as_sarif, "print SARIF 2.1.0")->excludes(json_flag);
  scan->add_flag("--stego", stego, "also test float tensors for payloads hidden in low mantissa bits");
  std::string fail_on = "unknown";
  scan->add_option("--fail-on", fail_on, "exit 1 when a file's verdict is at least: dangerous, unknown (default) or any (any finding)")
      ->check(CLI::IsMember({"dangerous", "unknown", "any"}));
  bool scan_verbose = false;
  scan->add_flag("--verbose", scan_verbose, "SARIF: also list info findings");
  double stego_threshold = stego::StegoOptions{}.threshold;
  scan->add_option("--stego-threshold", stego_threshold, "suspicion score for a --stego finding (default 6)")
      ->check(CLI::Range(0.0, 300.0));

  auto* disarm = app.add_subcommand("disarm", "rebuild a clean PyTorch checkpoint from scratch");
  std::string in, out, report_path, compat = "torch2", to = "pt";
  unsigned jobs = 1;
  bool copy_other_files = false, quiet = false;
  DisarmOptions options;
  disarm->add_option("IN", in, "model file or model folder")->required();
  disarm->add_option("-o,--output", out, "output file (or folder when IN is a folder)")->required();
  disarm->add_option("--report", report_path, "write a JSON report (schema modelcdr.disarm/1)");
  disarm->add_option("--compat", compat, "loader to target: torch2 (default) or torch1.13")
      ->check(CLI::IsMember({"torch2", "torch1.13"}));
  disarm->add_option("--to", to,
                     "output format: pt (default), safetensors, npz (arrays only), npy (one array), or joblib / pickle (pickle and "
                     "joblib inputs: numpy arrays and vetted scikit-learn objects, docs/REGISTRY.md)")
      ->check(CLI::IsMember(output_format_names()));
  disarm->add_option("--jobs,-j", jobs, "files disarmed in parallel (folder input)")->check(CLI::Range(1u, 256u));
  disarm->add_flag("--copy-other", copy_other_files,
                   "copy non-model files proven inert: text, JSON, PNG/JPEG/GIF/WebP (folder input; docs/CLI.md)");
  bool copy_code = false, force = false;
  disarm->add_flag("--copy-code", copy_code, "with --copy-other: copy source code and scripts too (.py, .sh, ...)");
  disarm->add_flag("-f,--force", force, "replace existing output files (never the input)");
  disarm->add_flag("--allow-trailing-data", options.allow_trailing_data, "drop bytes after the pickle's STOP instead of rejecting");
  disarm->add_flag("--fsync", options.fsync, "flush each output to the device before renaming it into place");
  bool no_reflink = false;
  disarm->add_flag("--no-reflink", no_reflink,
                   "copy every payload byte instead of sharing blocks with the input (XFS, btrfs)");
  std::string policy_path;
  disarm->add_option("--policy", policy_path,
                     "JSON file {\"allow_classes\": [\"module.Class\", ...]} adding classes to the vetted registry "
                     "(docs/REGISTRY.md)");
  disarm->add_flag("-q,--quiet", quiet, "print only errors");
  std::string lsb_spec;
  auto* lsb_opt = disarm->add_option("--randomize-lsb", lsb_spec,
                                     "--randomize-lsb or --randomize-lsb=SPEC: randomize the low mantissa bits of float "
                                     "tensors; SPEC is 'default', N for every float type (N <= 7), or float32=N,float16=N,...")
                      ->expected(0, 1);

  add_extra_commands(app);
  auto* to_opt = disarm->get_option("--to");
  // Every usage error exits 2 (docs/CLI.md); --help and --version exit 0.
  try {
    app.parse(normalize_args(argc, argv));
  } catch (const CLI::ParseError& e) {
    int rc = app.exit(e);
    return rc == 0 ? 0 : 2;
  }
  // Every command goes through one Engine (protect / restore / verify too); disarm's --policy
  // extends its class registry only.
  EngineOptions engine_options;
  if (!policy_path.empty()) engine_options.policy_files.push_back(policy_path);
  auto engine = Engine::create(engine_options);
  if (!engine.ok()) {
    std::cerr << "modelcdr: --policy: " << report::printable(engine.error().message) << "\n";
    return 2;
  }
  if (*scan)
    return scan_main(*engine, scan_paths, scan_excludes, as_json, as_sarif, stego, stego_threshold, fail_on, scan_verbose);
  if (*disarm) {
    options.compat = compat == "torch1.13" ? CompatTarget::torch1_13 : CompatTarget::torch2;
    const bool folder = fs::is_directory(in);
    auto format = pick_format(to, to_opt->count() > 0, out, folder);
    if (!format) return 2;
    options.output_format = *format;
    options.force = force;
    if (lsb_opt->count() > 0) {
      auto policy = stego::parse_lsb_policy(lsb_spec);
      if (!policy.ok()) {
        std::cerr << "modelcdr: " << report::printable(policy.error().message) << "\n";
        return 2;
      }
      options.transforms.push_back(stego::make_lsb_transform(*policy));
    }
    engine::BatchOptions batch;
    options.reflink = !no_reflink;
    batch.disarm = options;
    batch.format_given = to_opt->count() > 0;
    batch.jobs = jobs;
    batch.copy_other = copy_other_files;
    batch.copy_code = copy_code;
    return disarm_main(*engine, in, out, report_path, batch, quiet);
  }
  return run_extra_commands(app, *engine);
}

// Per-file work catches allocation failures itself (scan, disarm); this is the last line for
// the rest (protect, restore, argument handling): a clear message and exit 2, never an abort.
// Temporary outputs are removed by their destructors as the stack unwinds.
int main(int argc, char** argv) {
  try {
    return run_cli(argc, argv);
  } catch (const std::bad_alloc&) {
    std::fprintf(stderr, "modelcdr: out of memory [resource.out-of-memory]\n");
    return 2;
  }
}
