#include "cli/commands.hpp"

std::vector<ExtraCommand>& extra_commands() {
  static std::vector<ExtraCommand> commands;
  return commands;
}

// Command families register here (declared in their own files).
void add_mtd_commands(CLI::App& app);  // src/cli/mtd_commands.cpp
void add_serve_command(CLI::App& app);  // src/cli/serve_command.cpp

void add_extra_commands(CLI::App& app) {
  add_mtd_commands(app);
  add_serve_command(app);
}

int run_extra_commands(CLI::App& app, const modelcdr::Engine& engine) {
  (void)app;
  for (auto& c : extra_commands())
    if (c.app && c.app->parsed()) return c.run(engine);
  return 2;
}
