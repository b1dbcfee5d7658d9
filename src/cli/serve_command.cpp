// `modelcdr serve`: the Hugging Face gateway (src/serve/, docs/SERVE.md). Its options are parsed
// by both programs, modelcdr (so that help and usage errors are its own) and modelcdr-serve.
#include <string>

#include "cli/commands.hpp"

void add_serve_command(CLI::App& app) {
  static modelcdr::serve::ServeOptions o;
  static std::string listen = "127.0.0.1:8080";
  auto* cmd = app.add_subcommand("serve", "a Hugging Face Hub gateway that serves only rebuilt model files (docs/SERVE.md)");
  cmd->add_option("--store", o.store, "local store folder: STORE/<org>/<name>/<files>, served as revision main");
  cmd->add_option("--upstream", o.upstream, "pull through from this Hugging Face-compatible endpoint (http(s)://...)");
  cmd->add_option("--cache", o.cache, "cache folder (default STORE/.modelcdr-cache; required with --upstream)");
  cmd->add_option("--listen", listen, "HOST:PORT to listen on (default 127.0.0.1:8080; port 0 picks a free one)");
  cmd->add_option("--threads", o.threads, "requests handled at once (default 32)")->check(CLI::Range(1u, 1024u));
  cmd->add_option("--read-timeout", o.read_timeout_s, "seconds a client may stall while sending (default 10)")
      ->check(CLI::Range(1u, 600u));
  cmd->add_option("--header-timeout", o.header_timeout_s,
                  "seconds a client has to send a request's headers, however it drips them (default 20)")
      ->check(CLI::Range(1u, 3600u));
  cmd->add_option("--idle-timeout", o.idle_timeout_s, "seconds an idle keep-alive connection is kept (default 5)")
      ->check(CLI::Range(1u, 600u));
  cmd->add_option("--convert-bin", o.convert_bin,
                  "serve .bin weights as this format under converted names (safetensors: pytorch_model.bin is "
                  "served as model.safetensors, its index rewritten)")
      ->check(CLI::IsMember({"safetensors"}));
  extra_commands().push_back({cmd, [](const modelcdr::Engine&) {
                                auto colon = listen.rfind(':');
                                if (colon == std::string::npos) {
                                  std::fprintf(stderr, "modelcdr serve: --listen needs HOST:PORT\n");
                                  return 2;
                                }
                                o.host = listen.substr(0, colon);
                                if (o.host.size() > 2 && o.host.front() == '[') o.host = o.host.substr(1, o.host.size() - 2);
                                try {
                                  o.port = std::stoi(listen.substr(colon + 1));
                                } catch (...) {
                                  o.port = -1;
                                }
                                if (o.port < 0 || o.port > 65535) {
                                  std::fprintf(stderr, "modelcdr serve: --listen %s: bad port\n", listen.c_str());
                                  return 2;
                                }
                                return launch_serve(o);
                              }});
}
