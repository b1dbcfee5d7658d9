// The web page at `/`: repositories, files, verdicts, what was removed, reports, cache state.
// Server-rendered HTML; every string from a store, an upstream or a report is escaped.
#pragma once
#include <string>

namespace modelcdr::serve {
class Gateway;
std::string render_page(Gateway& gw);
}  // namespace modelcdr::serve
