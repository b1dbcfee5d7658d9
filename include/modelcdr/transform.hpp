// modelcdr::Transform: the one interface for everything that changes a model between reading
// and writing (docs/ARCHITECTURE.md "Transforms"). A transform has up to two stages:
//
//  - the IR stage, apply(): model -> model, between lift and write (LSB randomisation). It may
//    replace storage payloads (Storage::set_owned) and reports what it did in the FileReport.
//  - the record stage, copy_record(): the torch writer calls it once per storage record, in key
//    order (writer-created records included), instead of copying the record's bytes itself. It
//    reads the record's bytes and hands the transformed bytes to `sink` (MTD permute / inverse).
//    finish() then sees the whole output before it is committed (MTD: the layout digest, the map).
//
// The pipeline (cdr/pipeline.cpp) runs every IR stage in order, then the writer with at most one
// record stage (two record stages would each want to read the input record; chaining them is
// not needed by anything yet and is refused). A record stage is only for the PyTorch zip output.
// Whoever copies a record checks its deferred CRC (ByteRange::expected_crc): a record stage
// takes that duty over from the writer.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>

#include "modelcdr/api.hpp"
#include "modelcdr/byte_ranges.hpp"
#include "modelcdr/model.hpp"
#include "modelcdr/result.hpp"

namespace modelcdr {

// One storage record as the writer is about to emit it (archive/data/<key>).
struct RecordCopy {
  uint32_t key = 0;
  const model::Storage* storage = nullptr;  // the record as the model holds it
  const ByteRange* range = nullptr;         // where its bytes lie in the input; nullptr: owned or writer-made
  uint64_t output_offset = 0;               // where its payload starts in the output
};
// Takes the record's transformed bytes, in any chunking, exactly storage->bytes.size() of them
// in all (the writer refuses a record shorter or longer than declared). `crc`, when given, is
// the CRC-32 of `chunk`, which the record stage took while the bytes were still in its core's
// cache; the writer then combines it instead of reading the chunk a second time for the zip
// directory (a pass over every byte: 0.14 s per GiB from memory here, 0.05 s from cache).
using PayloadSink = std::function<Status(std::span<const uint8_t> chunk, std::optional<uint32_t> crc)>;

// The output as written, before it is committed: `size` bytes, read back with `read`.
struct WrittenOutput {
  uint64_t size = 0;
  std::function<Status(uint64_t offset, std::span<uint8_t> into)> read;
};

class Transform {
 public:
  virtual ~Transform() = default;
  virtual const char* name() const = 0;

  // IR stage. Default: none.
  virtual bool has_model_stage() const { return false; }
  virtual Status apply(model::Model&, FileReport&) { return ok_status(); }

  // Record stage. Default: none.
  virtual bool has_record_stage() const { return false; }
  virtual Status copy_record(const RecordCopy&, const PayloadSink&) {
    return make_error(Rule::mtd_internal, "this transform has no record stage");
  }
  // After the writer finished, before the output is committed: an error abandons the output.
  virtual Status finish(const WrittenOutput&, FileReport&) { return ok_status(); }
  // After the commit was tried (`committed`: whether the output now exists), e.g. to remove a
  // side file written in finish() when the output could not be committed.
  virtual void after_commit(bool /*committed*/) {}
  // The output holds confidential plaintext (MTD restore): owner-only permissions (0600).
  virtual bool confidential_output() const { return false; }
};

using TransformPtr = std::shared_ptr<Transform>;

}  // namespace modelcdr
