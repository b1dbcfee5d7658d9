// Walks the format table (src/formats/registry.cpp): every row is sniffed from a real file of
// its format (its fuzz target's seed), every reader opens its seed, every writer's output is
// sniffed and read back as the writer's own format, and the names the table gives (--to,
// extensions) are unambiguous.
#include "formats/registry.hpp"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <iterator>
#include <set>

namespace {

using modelcdr::OutputFormat;
using modelcdr::container::Format;
namespace formats = modelcdr::formats;
namespace fs = std::filesystem;

const std::string kFuzz = std::string(MODELCDR_SOURCE_DIR) + "/fuzz/";

std::vector<uint8_t> seed_bytes(const formats::FormatRow& row) {
  std::ifstream in(kFuzz + "seeds/" + row.fuzz_target + "/" + row.seed, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

// The format a reader settles on for `bytes`: sniffed, then refined by the reader (npz,
// torchscript, joblib).
Format opened_format(std::span<const uint8_t> bytes, std::string* error = nullptr) {
  auto parsed = formats::open(formats::sniff(bytes), bytes, formats::ReadOptions{});
  if (!parsed.ok()) {
    if (error) *error = parsed.error().message;
    return Format::unknown;
  }
  return parsed->format;
}

TEST(FormatTable, EveryRowSniffsAndOpensItsSeed) {
  size_t seeded = 0;
  for (const auto& row : formats::format_table()) {
    SCOPED_TRACE(row.name);
    if (!row.seed) {
      // Only formats modelcdr never reads lack a seed; they say why they are refused.
      EXPECT_EQ(row.open, nullptr);
      EXPECT_TRUE(row.write == nullptr && !row.output);
      continue;
    }
    ++seeded;
    EXPECT_TRUE(fs::exists(kFuzz + row.fuzz_target + "_fuzz.cpp")) << "no fuzz target " << row.fuzz_target;
    auto bytes = seed_bytes(row);
    ASSERT_FALSE(bytes.empty()) << "seed " << row.seed << " missing";
    // A row with a bid is sniffed from its own bytes; one without is reached through a reader
    // that refines another format.
    if (row.bid) EXPECT_EQ(formats::sniff(bytes), row.format);
    else EXPECT_NE(formats::sniff(bytes), row.format);
    std::string error;
    // Codec streams hold joblib pickles: read back, they are joblib files.
    Format expected = row.wrapper_suffixes[0] ? Format::joblib : row.format;
    EXPECT_EQ(opened_format(bytes, &error), expected) << error;
  }
  EXPECT_GE(seeded, 13u);
}

TEST(FormatTable, EveryWriterIsReadBackByItsReader) {
  size_t writers = 0;
  for (const auto& row : formats::format_table()) {
    if (!row.write) continue;
    SCOPED_TRACE(row.name);
    ++writers;
    ASSERT_TRUE(row.output && row.to_flag && row.extensions[0] && row.seed);
    auto input = seed_bytes(row);
    auto parsed = formats::open(formats::sniff(input), input, formats::ReadOptions{});
    ASSERT_TRUE(parsed.ok()) << parsed.error().message;
    modelcdr::DisarmOptions options;
    options.output_format = *row.output;
    modelcdr::FileReport report;
    auto out = modelcdr::io::AtomicOutput::create_memory(std::string("out") + row.extensions[0]);
    ASSERT_TRUE(out.ok());
    auto written = formats::write(*row.output, formats::WriteRequest{parsed->model, options, nullptr, report}, *out);
    ASSERT_TRUE(written.ok()) << written.error().message;
    ASSERT_TRUE(out->commit().ok());
    const auto& bytes = out->memory_bytes();
    ASSERT_FALSE(bytes.empty());
    // The output is the writer's own format, as its reader sees it (a plain pickle is read
    // by the pickle row's reader).
    std::string error;
    EXPECT_EQ(opened_format(bytes, &error), row.format) << error;
    EXPECT_EQ(&formats::output_row(*row.output), &row);
  }
  EXPECT_EQ(writers, 6u);  // pt, safetensors, npz, npy, joblib, pickle
}

TEST(FormatTable, NamesAreUnambiguous) {
  std::set<std::string> flags, extensions;
  for (const auto& row : formats::format_table()) {
    EXPECT_EQ(&formats::format_row(row.format), &row);
    EXPECT_STREQ(formats::format_name(row.format), row.name);
    if (row.to_flag) {
      EXPECT_TRUE(flags.insert(row.to_flag).second) << row.to_flag;
      EXPECT_EQ(formats::row_for_flag(row.to_flag), &row);
      // An output named with the row's extension asks for the row's format.
      EXPECT_EQ(formats::output_for_name(std::string("m") + row.extensions[0]), row.output);
      EXPECT_EQ(formats::output_for_name(std::string("m") + row.extensions[0] + ".gz"), row.output);
    }
    for (const char* e : row.extensions)
      if (e) EXPECT_TRUE(extensions.insert(e).second) << e;
  }
  EXPECT_EQ(formats::output_flags().size(), flags.size());
  EXPECT_EQ(formats::row_for_flag("exe"), nullptr);
  EXPECT_EQ(formats::output_for_name("model.tar"), std::nullopt);  // read, never written
  EXPECT_EQ(formats::model_stem("model.tar"), "model");
  EXPECT_EQ(formats::strip_compression("model.joblib.zlib"), "model.joblib");
}

TEST(FormatTable, RefusedFormatsNameTheirRule) {
  const uint8_t seven_zip[] = {'7', 'z', 0xBC, 0xAF, 0x27, 0x1C, 0, 4};
  auto r = formats::open(formats::sniff(seven_zip), seven_zip, formats::ReadOptions{});
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().rule, modelcdr::Rule::format_compressed);
  auto e = formats::open(formats::sniff({}), {}, formats::ReadOptions{});
  ASSERT_FALSE(e.ok());
  EXPECT_EQ(e.error().rule, modelcdr::Rule::format_empty);
  const char text[] = "hello world";
  std::span<const uint8_t> t(reinterpret_cast<const uint8_t*>(text), sizeof text - 1);
  auto u = formats::open(formats::sniff(t), t, formats::ReadOptions{});
  ASSERT_FALSE(u.ok());
  EXPECT_EQ(u.error().rule, modelcdr::Rule::format_unknown);
}

}  // namespace
