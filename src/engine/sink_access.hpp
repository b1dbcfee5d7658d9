// Fills and empties memory sinks (a friend of modelcdr::Sink): the pipeline's writer and the
// MTD calls, which also hand back a map or an architecture document in memory.
#pragma once
#include <utility>
#include <vector>

#include "modelcdr/engine.hpp"

namespace modelcdr {

struct SinkAccess {
  static void clear(Sink& s) {
    s.bytes_.clear();
    s.architecture_.clear();
  }
  static void fill(Sink& s, std::vector<uint8_t> bytes, std::vector<uint8_t> architecture) {
    s.bytes_ = std::move(bytes);
    s.architecture_ = std::move(architecture);
  }
  static void set_architecture(Sink& s, std::vector<uint8_t> architecture) { s.architecture_ = std::move(architecture); }
};

}  // namespace modelcdr
