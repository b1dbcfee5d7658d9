// The first request for a file that is not built yet: the rebuild is streamed to that client
// while it is written, instead of built first and sent after (bench/bench_serve.sh measures the
// latency). The size and the ETag are not known before the rebuild ends, so the answer is
// chunked and carries neither; its end (the last chunk) is sent only once the bytes written are
// a complete rebuild that will be served, and a build that fails before that closes the
// connection without it, so the client sees a broken download, never a short file. The cache
// is filled exactly as without a reader (cache.hpp): the stream only reads the build's file.
// HEAD and Range requests, conversions (refused only once written), and everything once
// built, are answered from the cache entry
// with Content-Length and ETag (huggingface_hub asks HEAD first, so it always gets those).
#pragma once
#include <httplib.h>

#include <optional>
#include <string>

#include "serve/gateway.hpp"

namespace modelcdr::serve {

// Answers `req` (a GET without Range of a file `gw.lookup` found unbuilt): streams the build,
// or, when the build ends before writing anything (a refusal, an error, another instance built
// it), answers as `serve` does for a built entry.
using ServeBuilt = void (*)(const httplib::Request&, httplib::Response&, const Resolved&, const std::string&);
void stream_first_build(const httplib::Request& req, httplib::Response& res, Gateway& gw, const std::string& repo,
                        const std::string& revision, const std::string& path, std::optional<OutputFormat> format,
                        const Snapshot& snap, ServeBuilt serve);

// Waits (up to `limit_s`) for the builds streamed by this process to end, before the gateway goes.
void wait_for_streamed_builds(unsigned limit_s);

}  // namespace modelcdr::serve
