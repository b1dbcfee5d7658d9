// PickleEmitter: the one writer of pickle opcodes, from a fixed, small vocabulary (docs/FORMATS.md
// §5.4). Every pickle modelcdr writes comes from it: a checkpoint's data.pkl (protocol 2, built in
// memory: it is small) and plain pickle / joblib files (protocol 4, streamed to the output).
// Globals are chosen from the EmitGlobal enum, never from strings, so no name read from an
// input can reach an output; the one exception is a vetted class of the class registry
// (class_global), which verify_emitted checks against the registry the caller passes.
#pragma once
#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "modelcdr/model.hpp"
#include "modelcdr/result.hpp"
#include "pickle/globals.hpp"

namespace modelcdr::pickle {

// The emitter's vocabulary: the MCDR_EMIT rows of the globals table (pickle/globals.def).
enum class EmitGlobal : uint8_t {
#define MCDR_EMIT(id, module, name, streams, roles) id,
#define MCDR_GLOBAL(module, name, roles)
#include "pickle/globals.def"
};

// Which stream a global may appear in: the self-check refuses a checkpoint naming numpy, or a
// plain pickle naming torch.
enum class EmitStream : uint8_t { checkpoint = 1, plain = 2 };

struct EmitGlobalName {
  // Views, not C strings: the emitter and the verifier compare and copy these once per tensor,
  // and a view carries its length (no strlen per use).
  std::string_view module;
  std::string_view name;
  uint8_t streams;  // EmitStream bits
};
const EmitGlobalName& emit_global_name(EmitGlobal g);

// Where a streaming emitter sends its bytes (io::AtomicOutput::write).
using EmitSink = std::function<Status(std::span<const uint8_t>)>;

class PickleEmitter {
 public:
  PickleEmitter() = default;
  // Streaming: bytes go to `sink` in chunks of about 1 MiB (and payloads straight through);
  // finish() sends the rest and returns the first error of the sink.
  explicit PickleEmitter(EmitSink sink) : sink_(std::move(sink)) {}
  std::vector<uint8_t>& bytes() { return out_; }  // in-memory mode: the whole stream
  uint64_t tell() const { return flushed_ + out_.size(); }  // bytes emitted so far
  Status finish();

  void proto2();
  void proto(uint8_t version);
  void stop();
  void mark();
  void tuple();  // from mark
  void tuple_n(size_t n);  // EMPTY_TUPLE / TUPLE1..3 for n <= 3 (caller emitted the items)
  void empty_list();
  void empty_dict();
  void appends();
  void setitem();
  void setitems();
  void none();
  void boolean(bool v);
  void integer(int64_t v);
  void long1(std::string_view le_twos_complement);  // arbitrary-size int
  void unicode(std::string_view utf8);  // BINUNICODE, or BINUNICODE8 past 4 GiB
  void binbytes(std::span<const uint8_t> b);  // BINBYTES, or BINBYTES8 past 4 GiB
  void empty_set();
  void additems();
  void newobj();
  // A vetted class of the class registry (GLOBAL module name); verify_emitted accepts it only
  // when the caller's registry holds it.
  void class_global(std::string_view module, std::string_view name);
  // Raw bytes outside any opcode: joblib's array data after a NumpyArrayWrapper BUILD (and its
  // alignment padding). Recorded so the self-check can step over them.
  void payload(std::span<const uint8_t> b);
  struct Payload {
    uint64_t offset, size;
  };
  const std::vector<Payload>& payloads() const { return payloads_; }
  void binfloat(double v);
  void global(EmitGlobal g);
  void storage_class(model::DType d);  // GLOBAL torch <Legacy>Storage; d must have one
  void dtype_global(model::DType d);   // GLOBAL torch <dtype name>
  void reduce();
  void build();
  void binpersid();
  uint32_t put();                // memoize top of stack under the next index
  void get(uint32_t index);

 private:
  void op(uint8_t c) { out_.push_back(c); }
  void u32(uint32_t v);
  void u64(uint64_t v);
  void raw(std::string_view s) { out_.insert(out_.end(), s.begin(), s.end()); }
  void raw_bytes(std::span<const uint8_t> b);  // large spans go straight to the sink
  void flush_if_full();
  std::vector<uint8_t> out_;
  EmitSink sink_;
  uint64_t flushed_ = 0;
  Status status_ = ok_status();
  std::vector<Payload> payloads_;
  uint32_t next_memo_ = 0;
};

// Defence in depth for invariant 2: re-reads an emitted stream with modelcdr's own pickle machine
// and refuses it unless it is one stream of `protocol` that ends at the end of `bytes`, whose
// globals all come from the emit vocabulary for `stream` (or, for plain pickles, are vetted
// registry classes: `registry_class(module, name)`), with no opcode outside the vocabulary.
struct VerifyOptions {
  EmitStream stream = EmitStream::checkpoint;
  uint8_t protocol = 2;
  std::string entry;  // for errors
  std::function<bool(std::string_view module, std::string_view name)> registry_class;
  std::span<const PickleEmitter::Payload> payloads;  // raw regions to step over (joblib)
};
Status verify_emitted(std::span<const uint8_t> bytes, const VerifyOptions& options);

}  // namespace modelcdr::pickle
