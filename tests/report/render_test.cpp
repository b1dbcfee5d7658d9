// report::printable: untrusted strings in text output cannot drive the terminal.
#include <gtest/gtest.h>

#include "modelcdr/render.hpp"

using modelcdr::report::printable;
using modelcdr::Rule;

TEST(Printable, EscapesControlsAndInvalidUtf8) {
  EXPECT_EQ(printable("a\x1b]0;x\x07" "b"), "a\\x1b]0;x\\x07b");
  EXPECT_EQ(printable("line\nfake\r"), "line\\x0afake\\x0d");
  EXPECT_EQ(printable("del\x7f"), "del\\x7f");
  EXPECT_EQ(printable("c1\xc2\x9b" "31m"), "c1\\xc2\\x9b31m");                 // U+009B CSI
  EXPECT_EQ(printable("bad\xff\xfe"), "bad\\xff\\xfe");                          // not UTF-8
  EXPECT_EQ(printable("over\xc0\xaf"), "over\\xc0\\xaf");                        // overlong '/'
  EXPECT_EQ(printable("sur\xed\xa0\x80"), "sur\\xed\\xa0\\x80");                 // a surrogate
  EXPECT_EQ(printable("cut\xe6\x97"), "cut\\xe6\\x97");                          // truncated sequence
  EXPECT_EQ(printable("bidi\xe2\x80\xae" "txt"), "bidi\\u202etxt");             // RIGHT-TO-LEFT OVERRIDE
  EXPECT_EQ(printable("back\\slash"), "back\\\\slash");
  EXPECT_EQ(printable(std::string("nul\0x", 5)), "nul\\x00x");
}

TEST(Printable, KeepsOrdinaryText) {
  EXPECT_EQ(printable("model.pt: offset 12: high: GLOBAL 'os system' [pickle.call]"),
            "model.pt: offset 12: high: GLOBAL 'os system' [pickle.call]");
  EXPECT_EQ(printable("caf\xc3\xa9 \xe6\x97\xa5\xe6\x9c\xac \xf0\x9f\x99\x82"), "caf\xc3\xa9 \xe6\x97\xa5\xe6\x9c\xac \xf0\x9f\x99\x82");
}

TEST(Printable, TextLineEscapesEveryPart) {
  modelcdr::Finding f;
  f.severity = modelcdr::Severity::high;
  f.rule = Rule::zip_unsafe_name;
  f.entry = "archive/\x1b[2J";
  f.message = "name\nall files clean";
  auto line = modelcdr::report::text_line("in\x1b.pt", f);
  EXPECT_EQ(line.find('\x1b'), std::string::npos);
  EXPECT_EQ(line.find('\n'), std::string::npos);
}
