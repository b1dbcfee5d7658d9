// The `modelcdr` command: scan, disarm (file or model repository). Exit codes are documented
// in docs/CLI.md; errors name the file, the entry/offset and the rule.
#include <sys/stat.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <atomic>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <mutex>
#include <new>
#include <thread>

#include "cli/commands.hpp"
#include "cli/hf_layout.hpp"
#include "io/atomic_output.hpp"
#include "modelcdr/api.hpp"
#include "report/render.hpp"
#include "stego/lsb_randomizer.hpp"
#include "stego/stego_detector.hpp"

namespace fs = std::filesystem;
using namespace modelcdr;

namespace {

// Regular files under `path` (or `path` itself), sorted, never following symlinks.
std::vector<std::string> collect_files(const std::string& path, const std::string& exclude = {}) {
  std::vector<std::string> out;
  std::error_code ec;
  auto st = fs::symlink_status(path, ec);
  if (fs::is_directory(st)) {
    for (auto it = fs::recursive_directory_iterator(path, fs::directory_options::skip_permission_denied, ec);
         it != fs::recursive_directory_iterator(); it.increment(ec)) {
      if (ec) break;
      std::string p = it->path().string();
      if (!exclude.empty() && p.rfind(exclude, 0) == 0) {
        if (it->is_directory()) it.disable_recursion_pending();
        continue;
      }
      if (it->is_symlink()) continue;
      if (it->is_regular_file()) out.push_back(p);
    }
    std::sort(out.begin(), out.end());
  } else {
    out.push_back(path);
  }
  return out;
}

int scan_main(const std::vector<std::string>& paths, bool as_json, bool as_sarif, bool stego, double stego_threshold) {
  std::vector<FileReport> reports;
  ScanOptions options;
  options.stego = stego;
  if (stego) {
    stego::StegoOptions so;
    so.threshold = stego_threshold;
    options.inspect = stego::make_stego_inspector(so);
  }
  for (const auto& p : paths)
    for (const auto& f : collect_files(p)) reports.push_back(scan_file(f, options));
  int rc = 0;
  for (const auto& r : reports) {
    if (r.status == FileStatus::error) rc = 2;
    else if (r.status == FileStatus::findings && rc == 0) rc = 1;
  }
  if (as_json) {
    std::cout << report::scan_json(reports);
  } else if (as_sarif) {
    std::cout << report::sarif(reports);
  } else {
    for (const auto& r : reports) {
      std::cout << report::printable(r.input) << ": " << r.format << ", " << r.tensors.count << " tensors (" << r.tensors.total_bytes
                << " bytes), " << status_name(r.status) << "\n";
      if (r.error) std::cout << "  " << report::error_line(r.input, *r.error) << "\n";
      for (const auto& f : r.findings) std::cout << "  " << report::text_line(r.input, f) << "\n";
    }
  }
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

void print_removed(const FileReport& r) {
  if (r.error) std::cerr << "modelcdr: rejected " << report::error_line(r.input, *r.error) << "\n";
  for (const auto& f : r.removed) std::cerr << "modelcdr: removed " << report::text_line(r.input, f) << "\n";
  for (const auto& f : r.findings)
    if (f.rule == "stego.lsb-randomized") std::cerr << "modelcdr: " << report::printable(r.input) << ": " << report::printable(f.message) << "\n";
}

Status write_report(const std::string& path, const std::vector<FileReport>& reports) {
  MCDR_ASSIGN(io::AtomicOutput out, io::AtomicOutput::create(path));
  MCDR_TRY(out.write(report::disarm_json(reports)));
  return out.commit();
}

FileReport copy_other(const std::string& in, const std::string& out) {
  FileReport r;
  r.input = in;
  r.format = "other";
  r.status = FileStatus::skipped;
  std::error_code ec;
  fs::copy_file(in, out, fs::copy_options::overwrite_existing, ec);
  if (ec) {
    r.status = FileStatus::rejected;
    r.error = make_error("io.copy", "cannot copy: " + ec.message());
  } else {
    r.output = out;
    r.note = "not a model file: copied unchanged (--copy-other)";
  }
  return r;
}

class Progress {
 public:
  Progress(size_t total, bool enabled) : total_(total), enabled_(enabled) {}
  void tick() {
    size_t d = ++done_;
    if (!enabled_) return;
    std::lock_guard<std::mutex> lock(mu_);
    const int width = 30;
    int filled = total_ ? static_cast<int>(width * d / total_) : width;
    std::cerr << "\r[" << std::string(filled, '#') << std::string(width - filled, ' ') << "] " << d << "/" << total_ << " files"
              << std::flush;
    if (d == total_) std::cerr << "\n";
  }

 private:
  size_t total_;
  bool enabled_;
  std::atomic<size_t> done_{0};
  std::mutex mu_;
};

int disarm_directory(const std::string& in, const std::string& out, const DisarmOptions& options, unsigned jobs,
                     bool copy_other_files, bool quiet, std::vector<FileReport>& reports) {
  std::error_code ec;
  fs::create_directories(out, ec);
  if (ec) {
    std::cerr << "modelcdr: " << report::printable(out) << ": cannot create output folder: " << ec.message() << "\n";
    return 2;
  }
  std::string out_abs = fs::absolute(out).lexically_normal().string();
  std::string in_abs = fs::absolute(in).lexically_normal().string();
  auto files = collect_files(in_abs, out_abs);
  reports.assign(files.size(), FileReport{});
  Progress progress(files.size(), !quiet && ::isatty(2));
  std::atomic<size_t> next{0};
  auto worker = [&] {
    for (size_t i = next++; i < files.size(); i = next++) {
      std::string rel = fs::relative(files[i], in_abs).string();
      fs::path target = fs::path(out_abs) / rel;
      std::error_code e2;
      fs::create_directories(target.parent_path(), e2);
      if (is_model_file(files[i])) {
        reports[i] = disarm_file(files[i], cli::output_name(target.string(), options.output_format), options);
      } else if (auto converted = cli::convert_other(files[i], target.string(), options.output_format)) {
        reports[i] = std::move(*converted);
      } else if (copy_other_files) {
        reports[i] = copy_other(files[i], target.string());
      } else {
        reports[i].input = files[i];
        reports[i].format = "other";
        reports[i].status = FileStatus::skipped;
        reports[i].note = "not a model file: left out (use --copy-other to copy it)";
      }
      progress.tick();
    }
  };
  std::vector<std::thread> pool;
  for (unsigned j = 0; j < std::max(1u, jobs); ++j) pool.emplace_back(worker);
  for (auto& t : pool) t.join();
  int rc = 0;
  size_t counts[4] = {0, 0, 0, 0};
  for (const auto& r : reports) {
    rc = std::max(rc, exit_code(r.status));
    if (r.status == FileStatus::clean) counts[0]++;
    else if (r.status == FileStatus::removed) counts[1]++;
    else if (r.status == FileStatus::rejected) counts[2]++;
    else counts[3]++;
    if (!quiet) print_removed(r);
    if (!quiet && r.status == FileStatus::skipped) std::cerr << "modelcdr: skipped " << report::printable(r.input) << ": " << report::printable(r.note) << "\n";
  }
  std::cerr << "modelcdr: " << reports.size() << " files: " << counts[0] << " clean, " << counts[1]
            << " disarmed with removals, " << counts[2] << " rejected, " << counts[3] << " other\n";
  return rc;
}

int disarm_main(const std::string& in, const std::string& out, const std::string& report_path, const DisarmOptions& options,
                unsigned jobs, bool copy_other_files, bool quiet) {
  std::vector<FileReport> reports;
  int rc;
  if (fs::is_directory(in)) {
    rc = disarm_directory(in, out, options, jobs, copy_other_files, quiet, reports);
  } else {
    if (fs::exists(out) && (same_file(in, out) || fs::is_directory(out))) {
      std::cerr << "modelcdr: " << report::printable(out) << ": output must be a new file, not the input or a folder\n";
      return 2;
    }
    reports.push_back(disarm_file(in, out, options));
    const auto& r = reports.back();
    if (!quiet) print_removed(r);
    rc = exit_code(r.status);
    if (!quiet && r.status != FileStatus::rejected)
      std::cerr << "modelcdr: " << report::printable(in) << " -> " << report::printable(out) << ": " << r.format << ", " << r.tensors.count << " tensors, "
                << (r.removed.empty() ? "nothing removed" : std::to_string(r.removed.size()) + " items removed")
                << (r.architecture.empty() ? "" : ", architecture in " + report::printable(r.architecture))
                << (r.shared_bytes ? ", " + std::to_string(r.shared_bytes) + " bytes shared with the input" : "") << "\n";
  }
  if (!report_path.empty()) {
    if (auto s = write_report(report_path, reports); !s.ok()) {
      std::cerr << "modelcdr: " << report::printable(report_path) << ": " << report::printable(s.error().describe()) << "\n";
      return 2;
    }
  }
  return rc;
}

}  // namespace

static int run_cli(int argc, char** argv) {
  CLI::App app{"modelcdr: disarm and reconstruct AI model files without executing them"};
  app.set_version_flag("--version", kVersion);
  app.require_subcommand(1);

  auto* scan = app.add_subcommand("scan", "report what model files contain and every suspicious construct");
  std::vector<std::string> scan_paths;
  bool as_json = false, as_sarif = false, stego = false;
  scan->add_option("PATH", scan_paths, "files or folders (folders recurse)")->required();
  auto* json_flag = scan->add_flag("--json", as_json, "print one JSON document (schema modelcdr.scan/1)");
  scan->add_flag("--sarif", as_sarif, "print SARIF 2.1.0")->excludes(json_flag);
  scan->add_flag("--stego", stego, "also test float tensors for payloads hidden in low mantissa bits");
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
                     "output format: pt (default), safetensors, npz (arrays only), or joblib / pickle (pickle and "
                     "joblib inputs: numpy arrays and vetted scikit-learn objects, docs/REGISTRY.md)")
      ->check(CLI::IsMember({"pt", "safetensors", "npz", "joblib", "pickle"}));
  disarm->add_option("--jobs,-j", jobs, "files disarmed in parallel (folder input)")->check(CLI::Range(1u, 256u));
  disarm->add_flag("--copy-other", copy_other_files, "copy files that are not model files (folder input)");
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
                                     "randomize the low mantissa bits of float tensors: 'default' (also when no value "
                                     "is given), N for every float type, or float32=N,float16=N,...")
                      ->expected(0, 1);

  add_extra_commands(app);
  CLI11_PARSE(app, argc, argv);
  if (!policy_path.empty())
    if (auto s = load_class_policy(policy_path); !s.ok()) {
      std::cerr << "modelcdr: --policy: " << report::printable(s.error().message) << "\n";
      return 2;
    }
  if (*scan) return scan_main(scan_paths, as_json, as_sarif, stego, stego_threshold);
  if (*disarm) {
    options.compat = compat == "torch1.13" ? CompatTarget::torch1_13 : CompatTarget::torch2;
    options.output_format = to == "safetensors" ? OutputFormat::safetensors
                            : to == "npz"       ? OutputFormat::npz
                            : to == "joblib"    ? OutputFormat::joblib
                            : to == "pickle"    ? OutputFormat::pickle
                                                : OutputFormat::pt;
    if (lsb_opt->count() > 0) {
      auto policy = stego::parse_lsb_policy(lsb_spec);
      if (!policy.ok()) {
        std::cerr << "modelcdr: " << report::printable(policy.error().message) << "\n";
        return 2;
      }
      options.transform = stego::make_lsb_transform(*policy);
    }
    options.reflink = !no_reflink;
    return disarm_main(in, out, report_path, options, jobs, copy_other_files, quiet);
  }
  return run_extra_commands(app);
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
