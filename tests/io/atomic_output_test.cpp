// AtomicOutput never replaces an existing file unless asked to (issue 9: no silent data loss).
#include "io/atomic_output.hpp"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <unistd.h>

namespace fs = std::filesystem;
using namespace modelcdr;

namespace {
fs::path temp_dir(const char* name) {
  fs::path d = fs::temp_directory_path() / (std::string("mcdr_atomic_") + name + "_" + std::to_string(::getpid()));
  fs::remove_all(d);
  fs::create_directories(d);
  return d;
}
std::string slurp(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}
void spit(const fs::path& p, const std::string& s) { std::ofstream(p, std::ios::binary) << s; }
}  // namespace

TEST(AtomicOutput, RefusesExistingFileWithoutReplace) {
  auto d = temp_dir("exists");
  spit(d / "out", "precious");
  auto out = io::AtomicOutput::create((d / "out").string());
  ASSERT_FALSE(out.ok());
  EXPECT_EQ(out.error().rule, Rule::io_exists);
  EXPECT_EQ(slurp(d / "out"), "precious");
  EXPECT_EQ(std::distance(fs::directory_iterator(d), fs::directory_iterator()), 1) << "temporary left behind";
  fs::remove_all(d);
}

TEST(AtomicOutput, CommitDoesNotReplaceAFileThatAppearedMeanwhile) {
  auto d = temp_dir("race");
  auto out = io::AtomicOutput::create((d / "out").string());
  ASSERT_TRUE(out.ok());
  ASSERT_TRUE(out->write(std::string_view("new")).ok());
  spit(d / "out", "someone else's");
  auto s = out->commit();
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.error().rule, Rule::io_exists);
  EXPECT_EQ(slurp(d / "out"), "someone else's");
  EXPECT_EQ(std::distance(fs::directory_iterator(d), fs::directory_iterator()), 1) << "temporary left behind";
  fs::remove_all(d);
}

TEST(AtomicOutput, ReplacesWhenAsked) {
  auto d = temp_dir("replace");
  spit(d / "out", "old");
  auto out = io::AtomicOutput::create((d / "out").string(), false, /*replace=*/true);
  ASSERT_TRUE(out.ok());
  ASSERT_TRUE(out->write(std::string_view("new")).ok());
  ASSERT_TRUE(out->commit().ok());
  EXPECT_EQ(slurp(d / "out"), "new");
  fs::remove_all(d);
}
