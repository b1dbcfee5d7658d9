// Content classification for directory mode: what an unpickler could act on is a model file.
#include "engine/classify.hpp"

#include <gtest/gtest.h>

#include <string>

using namespace modelcdr::engine;

namespace {
std::span<const uint8_t> bytes(const std::string& s) {
  return {reinterpret_cast<const uint8_t*>(s.data()), s.size()};
}
Kind kind(const std::string& name, const std::string& content) { return classify_bytes(name, bytes(content)).kind; }
}  // namespace

TEST(MayUnpickle, ProtocolZeroPayloads) {
  EXPECT_TRUE(may_unpickle(bytes("cos\nsystem\n(S'echo hi'\ntR.")));
  EXPECT_TRUE(may_unpickle(bytes("(ios\nsystem\nS'echo'\no.")));  // INST imports before it pops
  EXPECT_TRUE(may_unpickle(bytes("cos\nsystem")));                 // a partial last line still imports
  EXPECT_TRUE(may_unpickle(bytes("N.")));                          // a complete data pickle
  EXPECT_TRUE(may_unpickle(bytes("(lp0\nI1\naI2\na.")));
}

TEST(MayUnpickle, OrdinaryTextCannotRun) {
  EXPECT_FALSE(may_unpickle(bytes("This is a README\n")));
  EXPECT_FALSE(may_unpickle(bytes("import os\nos.system('x')\n")));  // INST of module "mport os"
  EXPECT_FALSE(may_unpickle(bytes("(c) 2020 Foo\nAll rights reserved\n")));
  EXPECT_FALSE(may_unpickle(bytes("build a model\n")));  // BUILD on an empty stack raises
  EXPECT_FALSE(may_unpickle(bytes("Reduce the learning rate\n")));
  EXPECT_FALSE(may_unpickle(bytes("...\n")));
  EXPECT_FALSE(may_unpickle(bytes("cos\r\nsystem\r\n(S'x'\r\ntR.")));  // "os\r" can never be imported
  EXPECT_FALSE(may_unpickle(bytes("")));
}

TEST(Classify, ByContentNotName) {
  EXPECT_EQ(kind("notes.txt", "cos\nsystem\n(S'x'\ntR."), Kind::model);
  EXPECT_EQ(kind("model.sav", "\x80\x04N."), Kind::model);
  EXPECT_EQ(kind("noext", std::string("\x1f\x8b\x08\x00", 4) + "xxxx"), Kind::model);
  EXPECT_EQ(kind("w.txt", std::string("\xfd" "7zXZ\x00", 6)), Kind::model);
  EXPECT_EQ(kind("README.md", "# hello\n"), Kind::text);
  EXPECT_EQ(kind("config.json", "{\"a\": 1}"), Kind::json);
  EXPECT_EQ(kind("bad.json", "{\"a\": "), Kind::unknown_binary);
  EXPECT_EQ(kind("run.py", "print(1)\n"), Kind::code);
  EXPECT_EQ(kind("tool", "#!/bin/sh\necho\n"), Kind::code);
  EXPECT_EQ(kind("logo.png", std::string("\x89PNG\r\n\x1a\n\0\0", 10)), Kind::inert_binary);
  EXPECT_EQ(kind("blob", std::string("\x07\xfe\x00\x11", 4)), Kind::unknown_binary);
  EXPECT_EQ(kind("m.weights", std::string("\x89HDF\r\n\x1a\n", 8)), Kind::unsupported_model);
  EXPECT_EQ(kind("m.bin", "GGUF\x03"), Kind::unsupported_model);
  EXPECT_EQ(kind("model.onnx", std::string("\x08\x07\x12\x00", 4)), Kind::unsupported_model);
  EXPECT_EQ(kind("empty", ""), Kind::text);
  // A GIF whose bytes an unpickler can act on ('G' BINFLOAT, then a pickle) is no image to copy.
  EXPECT_EQ(kind("a.gif", std::string("GIF89a\x10\x00\x10", 9) + "cos\nsystem\n(S'x'\ntR."), Kind::model);
  EXPECT_EQ(kind("b.gif", std::string("GIF89a\x10\x00\x10\x00\xf7\x00\x00", 13)), Kind::inert_binary);
}
