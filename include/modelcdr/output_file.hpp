// A small output written atomically (a report, a document): to a temporary file in the
// destination folder, renamed into place by commit() only. Without `replace` an existing file is
// never touched (io.exists, also when one appears before the commit). Abandoned (removed) when
// destroyed uncommitted. Model outputs go through a Sink (modelcdr/engine.hpp) instead.
#pragma once
#include <memory>
#include <string>
#include <string_view>

#include "modelcdr/result.hpp"

namespace modelcdr {

class OutputFile {
 public:
  static Result<OutputFile> create(const std::string& path, bool replace = false);
  OutputFile(OutputFile&&) noexcept;
  OutputFile& operator=(OutputFile&&) noexcept;
  ~OutputFile();
  Status write(std::string_view text);
  Status commit();

 private:
  struct Impl;
  explicit OutputFile(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// True when something (a file, a folder, a link, even a dangling one) is at `path`.
bool path_exists(const std::string& path);

}  // namespace modelcdr
