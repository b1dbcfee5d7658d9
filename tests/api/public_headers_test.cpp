// The CLI is argument parsing and rendering over the public API (include/modelcdr/api.hpp says
// so): its sources include only public headers, its own, and the gateway it starts. A private
// include added to src/cli/ fails here.
#include <gtest/gtest.h>

#include <unistd.h>

#include <filesystem>
#include <iterator>
#include <fstream>
#include <regex>
#include <string>

namespace fs = std::filesystem;

TEST(PublicHeaders, CliIncludesOnlyThePublicApi) {
  const std::regex include(R"(^\s*#\s*include\s*"([^"]+)\")");
  size_t files = 0, includes = 0;
  for (const auto& e : fs::directory_iterator(std::string(MODELCDR_SOURCE_DIR) + "/src/cli")) {
    if (!e.is_regular_file()) continue;
    ++files;
    std::ifstream in(e.path());
    std::string line;
    while (std::getline(in, line)) {
      std::smatch m;
      if (!std::regex_search(line, m, include)) continue;
      ++includes;
      const std::string h = m[1];
      const bool ok = h.rfind("modelcdr/", 0) == 0 || h.rfind("cli/", 0) == 0 || h == "serve/serve.hpp";
      EXPECT_TRUE(ok) << e.path().filename().string() << " includes private header " << h;
    }
  }
  EXPECT_GE(files, 3u);
  EXPECT_GE(includes, 10u);
}

// The public headers need no private one: included here after standard headers only.
#include "modelcdr/api.hpp"
#include "modelcdr/batch.hpp"
#include "modelcdr/engine.hpp"
#include "modelcdr/formats.hpp"
#include "modelcdr/mtd.hpp"
#include "modelcdr/mtd_tools.hpp"
#include "modelcdr/output_file.hpp"
#include "modelcdr/render.hpp"
#include "modelcdr/stego.hpp"

// The --to names come from the format table and name formats back.
TEST(PublicHeaders, OutputFormatNamesRoundTrip) {
  const auto names = modelcdr::output_format_names();
  ASSERT_FALSE(names.empty());
  for (const auto& n : names) {
    auto f = modelcdr::output_format_named(n);
    ASSERT_TRUE(f.has_value()) << n;
    EXPECT_EQ(n, modelcdr::output_format_name(*f));
  }
  EXPECT_FALSE(modelcdr::output_format_named("exe").has_value());
  EXPECT_EQ(modelcdr::output_format_for_file("model.safetensors"), modelcdr::output_format_named("safetensors"));
}

// Atomic report files: nothing at the path before commit(), an existing file is never replaced
// without `replace`, an uncommitted file leaves nothing.
TEST(PublicHeaders, OutputFileIsAtomic) {
  const fs::path dir = fs::temp_directory_path() / ("modelcdr_output_file_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  const std::string path = (dir / "report.json").string();
  {
    auto f = modelcdr::OutputFile::create(path);
    ASSERT_TRUE(f.ok());
    ASSERT_TRUE(f->write("{}\n").ok());
    EXPECT_FALSE(modelcdr::path_exists(path));
    ASSERT_TRUE(f->commit().ok());
  }
  EXPECT_TRUE(modelcdr::path_exists(path));
  auto again = modelcdr::OutputFile::create(path);
  EXPECT_FALSE(again.ok());
  { auto abandoned = modelcdr::OutputFile::create((dir / "other.json").string()); ASSERT_TRUE(abandoned.ok()); }
  EXPECT_FALSE(modelcdr::path_exists((dir / "other.json").string()));
  auto replaced = modelcdr::OutputFile::create(path, /*replace=*/true);
  ASSERT_TRUE(replaced.ok());
  ASSERT_TRUE(replaced->write("[]\n").ok());
  ASSERT_TRUE(replaced->commit().ok());
  std::ifstream in(path);
  std::string text((std::istreambuf_iterator<char>(in)), {});
  EXPECT_EQ(text, "[]\n");
  EXPECT_EQ(std::distance(fs::directory_iterator(dir), {}), 1);
  fs::remove_all(dir);
}
