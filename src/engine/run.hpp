// The pipeline's entry points behind modelcdr::Engine (include/modelcdr/engine.hpp) and the
// path-based wrappers of api.hpp: one run of scan / load / disarm with the per-Engine state
// (class registry, limits) passed in, never read from a process-wide global.
#pragma once
#include "modelcdr/api.hpp"
#include "modelcdr/engine.hpp"

namespace modelcdr::cdr {
class ClassRegistry;
}

namespace modelcdr::engine {

struct RunContext {
  const cdr::ClassRegistry* registry = nullptr;  // nullptr: the process-wide default registry
  EngineLimits limits;
};
// The context of the api.hpp wrappers: the registry load_class_policy extends, no extra limits.
const RunContext& process_context();

FileReport run_scan(const Source& source, const ScanOptions& options, const RunContext& ctx);
FileReport run_disarm(const Source& source, Sink& sink, const DisarmOptions& options, const RunContext& ctx);
// load_model of api.hpp for any source (a memory source is borrowed by the LoadedModel).
Result<LoadedModelPtr> run_load(const Source& source, const DisarmOptions& options, FileReport& report,
                                bool defer_storage_crc, const RunContext& ctx);
// The whole input behind a LoadedModel: the mapping of a file source (and its descriptor, to
// pread bytes into a private buffer instead of faulting the mapping in) or a memory source's
// span (fd -1). MTD's layout digest reads every byte outside the records through it.
struct InputView {
  std::span<const uint8_t> bytes;
  int fd = -1;
};
InputView input_of(const LoadedModel& loaded);
// The write half of disarm (write_model of api.hpp) into any sink, with the record stage and
// finish() of options.transforms (the IR stages are run_disarm's): protect/restore write
// through it. A rejected write leaves nothing in the sink only for memory sinks' callers that
// clear it; file sinks never see a partial file.
Status run_write(const model::Model& model, Sink& sink, const DisarmOptions& options, FileReport& report,
                 const LoadedModel* source, const RunContext& ctx);

}  // namespace modelcdr::engine
