// Renderings of FileReports: text for people, JSON (schemas in docs/CLI.md) and SARIF 2.1.0
// for tools. Rule ids and messages reach the user verbatim.
#pragma once
#include <string>
#include <vector>

#include "modelcdr/api.hpp"

namespace modelcdr::report {

std::string scan_json(const std::vector<FileReport>& files);
std::string disarm_json(const std::vector<FileReport>& files);
std::string sarif(const std::vector<FileReport>& files);
std::string text_line(const std::string& path, const Finding& f);
std::string error_line(const std::string& path, const Error& e);

}  // namespace modelcdr::report
