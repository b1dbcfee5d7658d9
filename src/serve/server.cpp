// The HTTP front end (cpp-httplib, Debian's libcpp-httplib-dev; docs/SERVE.md says why): the
// Hub routes huggingface_hub and transformers call, the reports, and the web page.
#include <fcntl.h>
#include <sys/socket.h>
#include <signal.h>
#include <unistd.h>

#include <httplib.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <memory>
#include <optional>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <thread>

#include "modelcdr/api.hpp"
#include "serve/gateway.hpp"
#include "serve/header_deadline.hpp"
#include "serve/http_util.hpp"
#include "serve/names.hpp"
#include "serve/page.hpp"
#include "serve/serve.hpp"
#include "serve/stream.hpp"
#include "serve/upstream.hpp"

using json = nlohmann::json;

namespace modelcdr::serve {

namespace {

constexpr size_t kChunk = 1 << 20;

void send_result_error(httplib::Response& res, const Error& e) { send_error(res, status_for(e.rule), e.rule, e.message); }

// The model-info document: only fields this gateway vouches for (never an upstream's xet,
// LFS or storage links), so a client has nothing to fetch around the gateway with.
json model_info(const Snapshot& snap) {
  json siblings = json::array();
  for (const auto& f : snap.files) siblings.push_back({{"rfilename", f.path}});
  return {{"_id", snap.repo}, {"id", snap.repo},       {"modelId", snap.repo},
          {"author", snap.repo.substr(0, snap.repo.find('/'))},     {"sha", snap.commit},
          {"private", false}, {"disabled", false},     {"gated", false},
          {"tags", json::array()}, {"siblings", siblings}};
}

json tree(const Snapshot& snap, const std::string& under, bool recursive) {
  json out = json::array();
  std::string prefix = under.empty() ? "" : under + "/";
  std::set<std::string> dirs;
  for (const auto& f : snap.files) {
    if (f.path.compare(0, prefix.size(), prefix) != 0) continue;
    std::string rest = f.path.substr(prefix.size());
    auto slash = rest.find('/');
    if (!recursive && slash != std::string::npos) {
      dirs.insert(prefix + rest.substr(0, slash));
      continue;
    }
    for (auto at = rest.find('/'); recursive && at != std::string::npos; at = rest.find('/', at + 1))
      dirs.insert(prefix + rest.substr(0, at));
    out.push_back({{"type", "file"}, {"oid", sha256_hex(snap.commit + f.path).substr(0, 40)}, {"size", f.size}, {"path", f.path}});
  }
  for (const auto& d : dirs)
    out.push_back({{"type", "directory"}, {"oid", sha256_hex(snap.commit + d).substr(0, 40)}, {"size", 0}, {"path", d}});
  return out;
}

std::string repo_of(const httplib::Request& req) { return std::string(req.matches[1]) + "/" + std::string(req.matches[2]); }

// Streams [first, first + length) of `path` through a descriptor held by the response.
void send_file(httplib::Response& res, const std::string& path, uint64_t first, uint64_t length) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return send_error(res, 503, Rule::io_read, "cannot open the cached file");
  auto holder = std::shared_ptr<int>(new int(fd), [](int* p) {
    ::close(*p);
    delete p;
  });
  res.set_content_provider(
      size_t(length), "application/octet-stream",
      [holder, first](size_t offset, size_t want, httplib::DataSink& sink) {
        static thread_local std::vector<char> buf(kChunk);
        ssize_t n = ::pread(*holder, buf.data(), std::min(want, kChunk), off_t(first + offset));
        if (n <= 0) return false;  // the connection is closed: the client sees a short body
        return sink.write(buf.data(), size_t(n));
      },
      [holder](bool) {});
}

void serve_resolved(const httplib::Request& req, httplib::Response& res, const Resolved& r, const std::string& path) {
  res.set_header("X-Repo-Commit", r.snap.commit);
  res.set_header("X-Modelcdr-Report", "/api/reports/" + r.snap.repo + "/" + r.snap.commit + "/" + path);
  if (!r.entry.served) return send_error(res, 403, r.entry.code, "refused by modelcdr: " + r.entry.message);
  res.set_header("ETag", "\"" + r.entry.sha256 + "\"");
  res.set_header("Accept-Ranges", "bytes");
  res.set_header("X-Modelcdr-Verdict", r.entry.verdict);
  uint64_t first = 0, length = r.entry.size;
  if (req.has_header("Range")) {
    auto range = parse_range(req.get_header_value("Range"), r.entry.size);
    if (!range) {
      res.set_header("Content-Range", "bytes */" + std::to_string(r.entry.size));
      return send_error(res, 416, Rule::hub_range_not_satisfiable,
                        "range " + req.get_header_value("Range") + " is not within the file's " +
                            std::to_string(r.entry.size) + " bytes");
    }
    first = range->first;
    length = range->last - range->first + 1;
    res.status = 206;
    res.set_header("Content-Range", "bytes " + std::to_string(range->first) + "-" + std::to_string(range->last) + "/" +
                                        std::to_string(r.entry.size));
  }
  if (length == 0) {
    res.set_content("", "application/octet-stream");
    return;
  }
  send_file(res, r.entry.data_path(), first, length);
}

void add_routes(httplib::Server& svr, Gateway& gw) {
  const std::string seg = "([^/]+)";
  svr.Get("/api/models/" + seg + "/" + seg, [&](const httplib::Request& req, httplib::Response& res) {
    auto snap = gw.snapshot(repo_of(req), "main");
    if (!snap.ok()) return send_result_error(res, snap.error());
    res.set_content(model_info(*snap).dump(), "application/json");
  });
  svr.Get("/api/models/" + seg + "/" + seg + "/revision/" + seg, [&](const httplib::Request& req, httplib::Response& res) {
    auto snap = gw.snapshot(repo_of(req), req.matches[3]);
    if (!snap.ok()) return send_result_error(res, snap.error());
    res.set_content(model_info(*snap).dump(), "application/json");
  });
  svr.Get("/api/models/" + seg + "/" + seg + "/tree/" + seg + "(?:/(.*))?",
          [&](const httplib::Request& req, httplib::Response& res) {
            std::string under = req.matches[4];
            if (!under.empty() && !valid_file_path(under))
              return send_error(res, 404, kEntryNotFound, "not a folder this gateway serves: " + under);
            auto snap = gw.snapshot(repo_of(req), req.matches[3]);
            if (!snap.ok()) return send_result_error(res, snap.error());
            bool recursive = req.get_param_value("recursive") == "true" || req.get_param_value("recursive") == "1";
            res.set_content(tree(*snap, under, recursive).dump(), "application/json");
          });
  svr.Get("/" + seg + "/" + seg + "/resolve/" + seg + "/(.+)", [&](const httplib::Request& req, httplib::Response& res) {
    std::string path = req.matches[4];
    std::optional<OutputFormat> format;
    if (req.has_param("format")) {
      const std::string f = req.get_param_value("format");
      if (f != "safetensors")
        return send_error(res, 400, Rule::hub_bad_request, "format=" + header_safe(f) + ": the gateway converts to safetensors only");
      format = OutputFormat::safetensors;
    }
    if (req.method == "GET" && !req.has_header("Range")) {
      // Built already: from the cache. Not yet: streamed to this client while it is built.
      auto look = gw.lookup(repo_of(req), req.matches[3], path, format);
      if (!look.ok()) return send_result_error(res, look.error());
      if (look->entry) return serve_resolved(req, res, Resolved{look->snap, *look->entry}, path);
      return stream_first_build(req, res, gw, repo_of(req), req.matches[3], path, format, look->snap, serve_resolved);
    }
    auto r = gw.resolve(repo_of(req), req.matches[3], path, format);
    if (!r.ok()) return send_result_error(res, r.error());
    serve_resolved(req, res, *r, path);
  });
  svr.Get("/api/reports/" + seg + "/" + seg + "/" + seg + "/(.+)", [&](const httplib::Request& req, httplib::Response& res) {
    auto r = gw.resolve(repo_of(req), req.matches[3], req.matches[4]);
    if (!r.ok()) return send_result_error(res, r.error());
    std::ifstream f(r->entry.report_path());
    std::stringstream ss;
    ss << f.rdbuf();
    res.set_header("X-Repo-Commit", r->snap.commit);
    res.set_content(ss.str(), "application/json");
  });
  svr.Get("/", [&](const httplib::Request&, httplib::Response& res) {
    res.set_header("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'");
    res.set_content(render_page(gw), "text/html; charset=utf-8");
  });
}

// SIGINT/SIGTERM stop the server from a thread of its own (no work in a signal handler).
std::thread stop_on_signal(httplib::Server& svr) {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  return std::thread([&svr, set] {
    int sig = 0;
    sigwait(&set, &sig);
    svr.stop();
  });
}

bool parse_url(const std::string& url) { return url.rfind("http://", 0) == 0 || url.rfind("https://", 0) == 0; }

}  // namespace

int run(const ServeOptions& o) {
  if (o.store.empty() == o.upstream.empty()) {
    std::cerr << "modelcdr serve: give exactly one of --store DIR and --upstream URL\n";
    return 2;
  }
  if (!o.upstream.empty() && (!parse_url(o.upstream) || o.cache.empty())) {
    std::cerr << "modelcdr serve: --upstream needs an http(s):// URL and --cache DIR\n";
    return 2;
  }
  if (!o.store.empty() && !std::filesystem::is_directory(o.store)) {
    std::cerr << "modelcdr serve: --store " << o.store << ": not a folder\n";
    return 2;
  }
  std::string cache_dir = o.cache.empty() ? o.store + "/.modelcdr-cache" : o.cache;
  Cache cache(cache_dir);
  if (auto s = cache.init(); !s.ok()) {
    std::cerr << "modelcdr serve: " << s.error().message << "\n";
    return 2;
  }
  std::optional<OutputFormat> convert_bin;
  if (o.convert_bin == "safetensors") convert_bin = OutputFormat::safetensors;
  else if (!o.convert_bin.empty()) {
    std::cerr << "modelcdr serve: --convert-bin " << o.convert_bin << ": only safetensors\n";
    return 2;
  }
  // The setting changes what the store's files are served as, so it enters the commit id.
  std::string salt = std::string("modelcdr ") + kVersion + (convert_bin ? " convert-bin=safetensors" : "");
  auto origin = o.store.empty() ? make_upstream(o.upstream, cache_dir) : make_local_store(o.store, salt);
  Gateway gw(std::move(origin), std::move(cache), convert_bin);

  httplib::Server svr;
  unsigned threads = o.threads;
  svr.new_task_queue = [threads] { return new httplib::ThreadPool(threads); };
  svr.set_read_timeout(time_t(o.read_timeout_s), 0);
  svr.set_write_timeout(60, 0);
  svr.set_keep_alive_timeout(time_t(o.idle_timeout_s));
  svr.set_payload_max_length(64 * 1024);  // the gateway takes no uploads
  svr.set_tcp_nodelay(true);
  // httplib's default adds SO_REUSEPORT, which lets a second instance share the port silently
  // (the kernel then splits requests between them); a busy port must be an error instead.
  svr.set_socket_options([](int sock) {
    int yes = 1;
    ::setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof(yes));
  });
  // Made once the port is known (below); the handlers only run after that.
  std::unique_ptr<HeaderDeadline> deadline;
  svr.set_logger([&deadline](const httplib::Request& req, const httplib::Response& res) {
    std::fprintf(stderr, "%s %s %d\n", req.method.c_str(), header_safe(req.path).c_str(), res.status);
    if (deadline) deadline->answered(req.remote_addr, req.remote_port);
  });
  svr.set_pre_routing_handler([&deadline](const httplib::Request& req, httplib::Response&) {
    // Range is answered by serve_resolved() alone: httplib 0.11 would apply a parsed range
    // again, unclamped, to whatever body a handler sets (errors included).
    const_cast<httplib::Request&>(req).ranges.clear();
    // A GET or HEAD is complete with its headers; any other method still has a body to send,
    // so its deadline keeps running.
    if (deadline && (req.method == "GET" || req.method == "HEAD")) deadline->request_arrived(req.remote_addr, req.remote_port);
    return httplib::Server::HandlerResponse::Unhandled;
  });
  // Answers httplib gives by itself (a malformed request, a Range it cannot parse, an unknown
  // route) get the same error headers as the gateway's own.
  svr.set_error_handler(httplib::Server::HandlerWithResponse([](const httplib::Request&, httplib::Response& res) {
    if (res.has_header("X-Error-Code")) return httplib::Server::HandlerResponse::Unhandled;
    const int st = res.status;
    const Rule code = st == 404 ? Rule::hub_entry_not_found : st == 416 ? Rule::hub_range_not_satisfiable : Rule::hub_bad_request;
    const char* why = st == 404   ? "no such route or file"
                      : st == 416 ? "the Range header is malformed or asks for several ranges"
                                  : "malformed or oversized request";
    send_error(res, st, code, why);
    return httplib::Server::HandlerResponse::Handled;
  }));
  add_routes(svr, gw);
  int port = o.port;
  if (port == 0) port = svr.bind_to_any_port(o.host);
  else if (!svr.bind_to_port(o.host, port)) port = -1;
  if (port < 0) {
    std::cerr << "modelcdr serve: cannot listen on " << o.host << ":" << o.port << "\n";
    return 2;
  }
  std::cout << "modelcdr serve: listening on http://" << o.host << ":" << port << " (" << gw.origin().describe()
            << ", cache " << cache_dir << ")" << std::endl;
  auto stopper = stop_on_signal(svr);  // first: threads made after it inherit its signal mask
  deadline = std::make_unique<HeaderDeadline>(port, std::chrono::seconds(o.header_timeout_s));
  bool ok = svr.listen_after_bind();
  stopper.detach();
  wait_for_streamed_builds(60);  // their threads use the gateway
  return ok ? 0 : 2;
}

}  // namespace modelcdr::serve
