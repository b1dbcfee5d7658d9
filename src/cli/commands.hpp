// Subcommands beyond scan/disarm register here (one file per command family under src/cli/),
// so that main.cpp stays small and command families don't edit each other's files. Each runs
// over the CLI's one Engine (main.cpp), which owns the class policy and limits.
#pragma once
#include <CLI/CLI.hpp>
#include <functional>
#include <vector>

#include "modelcdr/engine.hpp"
#include "serve/serve.hpp"

struct ExtraCommand {
  CLI::App* app = nullptr;
  std::function<int(const modelcdr::Engine&)> run;
};

// Each command family provides a registration function and lists it in extra_commands.cpp.
std::vector<ExtraCommand>& extra_commands();
void add_extra_commands(CLI::App& app);
int run_extra_commands(CLI::App& app, const modelcdr::Engine& engine);

// `modelcdr serve` runs the gateway in its own program, modelcdr-serve, installed next to
// modelcdr (src/cli/serve_launch.cpp): only that program links the HTTP stack (libcpp-httplib,
// libssl, brotli), which every other command would otherwise load and initialise at start-up.
// modelcdr's definition execs it with the command line as given (remember_args); modelcdr-serve's
// (src/cli/serve_exe/main.cpp) runs the gateway.
void remember_args(int argc, char** argv);
int launch_serve(const modelcdr::serve::ServeOptions& options);
