// Strict parser for the NumPy .npy header (docs/FORMATS.md §7.1).
//
// Why hand-written: numpy reads this header with ast.literal_eval, i.e. a Python expression
// evaluator. We must not evaluate anything, and a general "Python literal" parser would accept
// far more than any numpy writer produces (nested containers, escapes, arithmetic on numbers in
// old Pythons, odd spellings) - room for parser differentials. This parser accepts exactly one
// dict literal with the three keys numpy writes ('descr', 'fortran_order', 'shape'), each once,
// with literal values only: a quoted string without escapes, True/False, and a tuple of
// non-negative decimal integers (an 'L' suffix from Python 2 writers is tolerated). Structured
// dtypes (a list of fields) are recognised and refused. Everything about the framing that
// numpy would tolerate but no honest writer produces (length fields that disagree with the
// padding, non-space padding, missing newline, odd alignment) is reported as a finding.
#pragma once
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "modelcdr/finding.hpp"
#include "modelcdr/result.hpp"

namespace modelcdr::formats {

struct NpyHeader {
  uint8_t major = 1, minor = 0;
  uint64_t header_len = 0;     // the length field's value
  uint64_t data_offset = 0;    // 6 + 2 + len-field size + header_len
  std::string descr;           // e.g. "<f4", "|O"
  bool fortran_order = false;
  std::vector<uint64_t> shape;
};

// Parses the magic, version, length field and header dict of the .npy bytes `file`.
// `entry` names the npz member (empty for a bare file) for findings and errors.
Result<NpyHeader> parse_npy_header(std::span<const uint8_t> file, const std::string& entry, Findings& findings);

// Parses only the dict literal (the header text); exposed for tests.
Result<NpyHeader> parse_npy_dict(std::string_view text, const std::string& entry, uint64_t base, Findings& findings);

}  // namespace modelcdr::formats
