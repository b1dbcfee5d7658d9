// The small public helpers the CLI and bindings use besides the Engine
// (include/modelcdr/formats.hpp, output_file.hpp): thin wrappers over the format table, the
// output-name rules and io::AtomicOutput, so that no face includes a private header.
#include "engine/output_names.hpp"
#include "formats/registry.hpp"
#include "io/atomic_output.hpp"
#include "modelcdr/formats.hpp"
#include "modelcdr/output_file.hpp"

namespace modelcdr {

std::vector<std::string> output_format_names() { return formats::output_flags(); }

std::optional<OutputFormat> output_format_named(const std::string& name) {
  const formats::FormatRow* row = formats::row_for_flag(name);
  if (!row || !row->output) return std::nullopt;
  return *row->output;
}

const char* output_format_name(OutputFormat f) { return engine::format_flag(f); }

std::optional<OutputFormat> output_format_for_file(const std::string& file_name) {
  return engine::format_for_name(file_name);
}

struct OutputFile::Impl {
  io::AtomicOutput out;
};

OutputFile::OutputFile(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
OutputFile::OutputFile(OutputFile&&) noexcept = default;
OutputFile& OutputFile::operator=(OutputFile&&) noexcept = default;
OutputFile::~OutputFile() = default;

Result<OutputFile> OutputFile::create(const std::string& path, bool replace) {
  MCDR_ASSIGN(io::AtomicOutput out, io::AtomicOutput::create(path, false, replace));
  auto impl = std::make_unique<Impl>();
  impl->out = std::move(out);
  return OutputFile(std::move(impl));
}

Status OutputFile::write(std::string_view text) { return impl_->out.write(text); }
Status OutputFile::commit() { return impl_->out.commit(); }

bool path_exists(const std::string& path) { return io::path_exists(path); }

}  // namespace modelcdr
