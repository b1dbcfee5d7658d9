// Renderings of FileReports (public: the CLI, the gateway and bindings print with these):
// text for people, JSON (schemas in docs/CLI.md) and SARIF 2.1.0 for tools. Rule ids and
// messages reach the user verbatim.
#pragma once
#include <string>
#include <string_view>
#include <vector>

#include "modelcdr/api.hpp"

namespace modelcdr::report {

std::string scan_json(const std::vector<FileReport>& files);
std::string disarm_json(const std::vector<FileReport>& files);
// Every catalogued rule in tool.driver.rules; info findings only when `verbose`.
std::string sarif(const std::vector<FileReport>& files, bool verbose = false);
// Text for a terminal from untrusted bytes: C0/C1 controls, DEL and bytes that are not UTF-8
// become \xNN, bidi overrides and line separators \uNNNN, a backslash \\; the rest is kept.
// Use it for every string from the input that text output prints.
std::string printable(std::string_view s);

// One finding / error as a line of text, already printable().
std::string text_line(const std::string& path, const Finding& f);
std::string error_line(const std::string& path, const Error& e);

}  // namespace modelcdr::report
