// Output format names for callers (the CLI's --to, a binding's `to=`): all read from the one
// format table (src/formats/registry.cpp), so a new format needs no list here.
#pragma once
#include <optional>
#include <string>
#include <vector>

#include "modelcdr/api.hpp"

namespace modelcdr {

// Every output format name (--to NAME), in table order: pt, safetensors, npz, ...
std::vector<std::string> output_format_names();
// The format a --to NAME names, if any.
std::optional<OutputFormat> output_format_named(const std::string& name);
// The name --to spells `f` with.
const char* output_format_name(OutputFormat f);
// The format a file name asks for (x.safetensors, x.npz, x.pt; compression suffixes such as
// .gz ignored), if any.
std::optional<OutputFormat> output_format_for_file(const std::string& file_name);

}  // namespace modelcdr
