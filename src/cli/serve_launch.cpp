// `modelcdr serve` in the modelcdr command: exec modelcdr-serve, the program next to this one
// that holds the gateway (CMakeLists.txt builds and installs both). The options were checked
// here already; modelcdr-serve parses the same command line with the same definitions
// (serve_command.cpp), so it sees exactly what the user typed.
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <string>
#include <system_error>
#include <vector>

#include "cli/commands.hpp"
#include "modelcdr/render.hpp"

namespace {

std::vector<std::string>& args() {
  static std::vector<std::string> a;
  return a;
}

}  // namespace

void remember_args(int argc, char** argv) { args().assign(argv, argv + argc); }

int launch_serve(const modelcdr::serve::ServeOptions& /*options: modelcdr-serve parses them again*/) {
  // The sibling of this executable, not a PATH lookup: the gateway that ships with this modelcdr.
  std::error_code ec;
  const auto self = std::filesystem::read_symlink("/proc/self/exe", ec);
  if (ec) {
    std::fprintf(stderr, "modelcdr serve: cannot find this program's folder: %s\n", ec.message().c_str());
    return 2;
  }
  const std::string program = (self.parent_path() / "modelcdr-serve").string();
  std::vector<char*> argv;
  argv.push_back(const_cast<char*>(program.c_str()));
  for (size_t i = 1; i < args().size(); ++i) argv.push_back(args()[i].data());
  argv.push_back(nullptr);
  std::fflush(nullptr);
  ::execv(program.c_str(), argv.data());
  const int err = errno;  // execv returns only on failure
  std::fprintf(stderr, "modelcdr serve: cannot run %s: %s (the gateway is a separate program installed next to modelcdr)\n",
               modelcdr::report::printable(program).c_str(), std::strerror(err));
  return 2;
}
