// Maps of format 4 (SHA-256 digests) stay readable now that protect writes format 5 (BLAKE3,
// docs/MTD.md §2): tests/mtd/data/format4 holds a model, and protected copies with their maps
// made by the modelcdr of main before format 5 (tests/mtd/data/format4/README). Restore, verify
// and trace dispatch on each map's format; a format 5 map of the same model sits beside them.
#include <gtest/gtest.h>
#include <sodium.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "modelcdr/api.hpp"
#include "modelcdr/mtd.hpp"
#include "modelcdr/mtd_tools.hpp"
#include "mtd/keys.hpp"
#include "mtd/seal.hpp"

using namespace modelcdr;
namespace fs = std::filesystem;

namespace {

const std::string kData = std::string(MODELCDR_SOURCE_DIR) + "/tests/mtd/data/format4";

std::string slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

struct TempDir {
  std::string path;
  TempDir() {
    static int n = 0;
    path = (fs::temp_directory_path() / ("modelcdr_mtd_format4_" + std::to_string(::getpid()) + "_" + std::to_string(n++))).string();
    fs::create_directories(path);
  }
  ~TempDir() { fs::remove_all(path); }
  std::string operator/(const std::string& name) const { return path + "/" + name; }
};

mtd::RestoreOptions with_fixture_key() {
  auto k = mtd::read_key_file(kData + "/sym.key");
  EXPECT_TRUE(k.ok());
  mtd::RestoreOptions o;
  if (k.ok()) o.open.symmetric_key = k->symmetric;
  o.open.allow_unsigned = true;
  return o;
}

uint16_t format_of(const std::string& map) {
  auto v = mtd::map_format_version(slurp(map));
  return v.ok() ? *v : 0;
}

}  // namespace

TEST(MtdFormat4, OldMapsRestoreToTheDisarmedOriginalAndVerify) {
  ASSERT_GE(sodium_init(), 0);
  TempDir t;
  const FileReport d = disarm_file(kData + "/model.pt", t / "disarmed.pt", DisarmOptions{});
  ASSERT_FALSE(d.error) << d.error->describe();
  const std::string disarmed = slurp(t / "disarmed.pt");
  ASSERT_FALSE(disarmed.empty());
  const auto o = with_fixture_key();
  for (const std::string name : {"protected", "encrypted"}) {
    const std::string prot = kData + "/" + name + ".pt", map = kData + "/" + name + ".map";
    ASSERT_EQ(format_of(map), 4) << name;
    const std::string out = t / (name + ".restored.pt");
    auto r = mtd::restore(prot, map, out, o);
    ASSERT_EQ(r.outcome, mtd::Outcome::ok) << name << " " << r.code << (r.error ? " " + r.error->describe() : "");
    EXPECT_EQ(slurp(out), disarmed) << name;
    auto vp = mtd::verify(prot, map, o);
    EXPECT_EQ(vp.outcome, mtd::Outcome::ok) << name;
    EXPECT_EQ(vp.state, "protected");
    auto vr = mtd::verify(out, map, o);
    EXPECT_EQ(vr.outcome, mtd::Outcome::ok) << name;
    EXPECT_EQ(vr.state, "restored");
  }
}

// The SHA-256 digests of a format 4 map are still checked: one flipped payload byte is named.
TEST(MtdFormat4, OldMapsStillDetectAChangedTensor) {
  ASSERT_GE(sodium_init(), 0);
  TempDir t;
  std::string bytes = slurp(kData + "/protected.pt");
  ASSERT_GT(bytes.size(), 20000u);
  // The first record (a.weight, 33 KiB of float32) follows data.pkl: 20000 is inside it.
  bytes[20000] ^= 0x01;
  std::ofstream(t / "tampered.pt", std::ios::binary) << bytes;
  const auto o = with_fixture_key();
  auto r = mtd::restore(t / "tampered.pt", kData + "/protected.map", t / "out.pt", o);
  EXPECT_EQ(r.outcome, mtd::Outcome::mismatch);
  EXPECT_EQ(r.code, "tampered");
  EXPECT_FALSE(fs::exists(t / "out.pt"));
  bool named = false;
  for (const auto& m : r.mismatches) named |= m.what == "tensor" && !m.name.empty();
  EXPECT_TRUE(named);
}

// New maps are format 5; trace opens maps of both formats in one run and hashes the leaked
// file with each format's hash.
TEST(MtdFormat4, TraceMixesFormat4And5Maps) {
  ASSERT_GE(sodium_init(), 0);
  TempDir t;
  auto k = mtd::read_key_file(kData + "/sym.key");
  ASSERT_TRUE(k.ok());
  mtd::ProtectOptions po;
  po.seal.symmetric_keys = {k->symmetric};
  auto p = mtd::protect(kData + "/model.pt", t / "new.pt", t / "new.map", po);
  ASSERT_EQ(p.outcome, mtd::Outcome::ok) << (p.error ? p.error->describe() : p.code);
  EXPECT_EQ(format_of(t / "new.map"), mtd::kMapFormatVersion);
  EXPECT_EQ(mtd::kMapFormatVersion, 5);
  const auto o = with_fixture_key();
  const std::vector<std::string> maps = {kData + "/protected.map", t / "new.map"};
  auto old_copy = mtd::trace(kData + "/protected.pt", maps, o.open);
  ASSERT_FALSE(old_copy.error);
  EXPECT_EQ(old_copy.maps_opened, 2u);
  ASSERT_EQ(old_copy.matches.size(), 1u);
  EXPECT_EQ(old_copy.matches[0].map, maps[0]);
  EXPECT_EQ(old_copy.matches[0].matching, old_copy.matches[0].distinctive);
  auto new_copy = mtd::trace(t / "new.pt", maps, o.open);
  ASSERT_EQ(new_copy.matches.size(), 1u);
  EXPECT_EQ(new_copy.matches[0].map, maps[1]);
  // And the new copy restores to the same original as the old one.
  auto r = mtd::restore(t / "new.pt", t / "new.map", t / "r5.pt", o);
  ASSERT_EQ(r.outcome, mtd::Outcome::ok) << r.code;
  auto r4 = mtd::restore(kData + "/protected.pt", kData + "/protected.map", t / "r4.pt", o);
  ASSERT_EQ(r4.outcome, mtd::Outcome::ok) << r4.code;
  EXPECT_EQ(slurp(t / "r5.pt"), slurp(t / "r4.pt"));
}

// The hash follows from the (authenticated) format version, and the payload must name the same:
// a format 4 payload (sha-256-tree digests) sealed again as a format 5 map is refused, not read
// with either hash.
TEST(MtdFormat4, APayloadWhoseHashIsNotItsFormatsIsRefused) {
  ASSERT_GE(sodium_init(), 0);
  TempDir t;
  const auto o = with_fixture_key();
  auto opened = mtd::open_map(slurp(kData + "/protected.map"), o.open);
  ASSERT_TRUE(opened.ok());
  EXPECT_EQ(opened->format, 4);
  ASSERT_NE(opened->payload.find("\"sha-256-tree\""), std::string::npos);
  mtd::SealOptions so;
  so.symmetric_keys = {*o.open.symmetric_key};
  auto resealed = mtd::seal_map(opened->payload, so);
  ASSERT_TRUE(resealed.ok());
  std::ofstream(t / "v5.map", std::ios::binary) << *resealed;
  ASSERT_EQ(format_of(t / "v5.map"), 5);
  auto v = mtd::verify(kData + "/protected.pt", t / "v5.map", o);
  EXPECT_EQ(v.outcome, mtd::Outcome::mismatch);
  EXPECT_EQ(v.code, "bad-map");
  auto r = mtd::restore(kData + "/protected.pt", t / "v5.map", t / "out.pt", o);
  EXPECT_NE(r.outcome, mtd::Outcome::ok);
  EXPECT_FALSE(fs::exists(t / "out.pt"));
}
