// A streaming self-check for pickles modelcdr itself emitted (pickle_emitter.hpp): every byte is
// decoded, opcode by opcode, while only the stack's depth, the marks and the memo's occupied
// slots are tracked, so checking costs O(stack + memo) memory instead of a second value graph
// (a checkpoint of 160k tensors holds about 2.4M nodes).
// What it proves: one protocol-2 stream that ends at its STOP on the last byte, built only from
// the emitter's opcodes, with a well-formed stack (no underflow, matched marks, one value at
// STOP), memo reads of stored slots only, valid UTF-8 text, and every GLOBAL accepted by
// `global_ok`. Anything else is an Error with Rule::emit_self_check.
#pragma once
#include <cstdint>
#include <span>
#include <string>
#include <string_view>

#include "modelcdr/result.hpp"

namespace modelcdr::pickle {

using GlobalPredicate = bool (*)(std::string_view module, std::string_view name);

Status check_emitted_stream(std::span<const uint8_t> pkl, GlobalPredicate global_ok, const std::string& entry);

}  // namespace modelcdr::pickle
