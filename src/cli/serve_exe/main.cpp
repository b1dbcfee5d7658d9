// modelcdr-serve: the gateway behind `modelcdr serve` (src/serve/, docs/SERVE.md), a program of
// its own so that only it links and initialises the HTTP and TLS libraries. `modelcdr serve ARGS`
// execs it as `modelcdr-serve serve ARGS` (src/cli/serve_launch.cpp); it can be run so directly too.
#include <CLI/CLI.hpp>
#include <cstdio>
#include <new>

#include "cli/commands.hpp"
#include "modelcdr/api.hpp"

// The registry that serve_command.cpp adds `serve` to (modelcdr's is in extra_commands.cpp).
std::vector<ExtraCommand>& extra_commands() {
  static std::vector<ExtraCommand> commands;
  return commands;
}

void add_serve_command(CLI::App& app);  // src/cli/serve_command.cpp

int launch_serve(const modelcdr::serve::ServeOptions& options) { return modelcdr::serve::run(options); }

int main(int argc, char** argv) {
  try {
    CLI::App app{"modelcdr-serve: the gateway behind `modelcdr serve` (docs/SERVE.md)", "modelcdr"};
    app.set_version_flag("--version", modelcdr::kVersion);
    app.require_subcommand(1);
    add_serve_command(app);
    try {
      app.parse(argc, argv);
    } catch (const CLI::ParseError& e) {
      int rc = app.exit(e);
      return rc == 0 ? 0 : 2;  // usage errors exit 2, as in modelcdr (docs/CLI.md)
    }
    // Commands take the CLI's Engine (extra_commands.cpp); serve's ignores it (serve::run).
    auto engine = modelcdr::Engine::create(modelcdr::EngineOptions{});
    if (!engine.ok()) {
      std::fprintf(stderr, "modelcdr serve: %s\n", engine.error().message.c_str());
      return 2;
    }
    for (auto& c : extra_commands())
      if (c.app && c.app->parsed()) return c.run(*engine);
    return 2;
  } catch (const std::bad_alloc&) {
    std::fprintf(stderr, "modelcdr: out of memory [resource.out-of-memory]\n");
    return 2;
  }
}
