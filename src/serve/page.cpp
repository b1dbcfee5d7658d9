#include "serve/page.hpp"

#include <fstream>
#include <nlohmann/json.hpp>

#include "serve/gateway.hpp"
#include "serve/http_util.hpp"

using json = nlohmann::json;

namespace modelcdr::serve {

namespace {

constexpr size_t kMaxRepos = 200, kMaxRemovedShown = 20;

// What the rebuild removed, from the entry's report: "rule: message" lines.
std::string removed_list(const Entry& e) {
  std::ifstream f(e.report_path());
  json r = json::parse(f, nullptr, false);
  if (r.is_discarded() || !r.contains("files") || r["files"].empty()) return "";
  std::string out;
  size_t n = 0;
  for (const auto& item : r["files"][0].value("removed", json::array())) {
    if (++n > kMaxRemovedShown) break;
    out += "<li>" + html_escape(item.value("rule", "")) + ": " + html_escape(item.value("message", "")) + "</li>";
  }
  return out.empty() ? "" : "<ul class=removed>" + out + "</ul>";
}

std::string file_row(Gateway& gw, const Snapshot& snap, const RepoFile& f) {
  std::string report = "/api/reports/" + snap.repo + "/" + snap.commit + "/" + f.path;
  std::string row = "<tr><td class=path>" + html_escape(f.path) + "</td><td>" + std::to_string(f.size) + "</td>";
  auto e = gw.known(snap, f.path);
  if (!e) return row + "<td class=verdict>not built yet</td><td></td><td></td></tr>";
  std::string verdict = e->verdict;
  if (!e->served) verdict += " (" + e->code + ")";
  row += "<td class=verdict>" + html_escape(verdict) + "</td><td>" +
         (e->served ? html_escape(e->message.empty() ? std::to_string(e->removed) + " removed" : e->message)
                    : html_escape(e->message)) +
         removed_list(*e) + "</td>";
  return row + "<td><a href=\"" + html_escape(report) + "\">report</a></td></tr>";
}

}  // namespace

std::string render_page(Gateway& gw) {
  std::string body;
  auto stats = gw.cache().stats();
  body += "<p id=cache>Cache: " + std::to_string(stats.entries) + " entries (" + std::to_string(stats.refused) +
          " refusals), " + std::to_string(stats.bytes) + " bytes, in " + html_escape(gw.cache().dir()) + "</p>";
  auto repos = gw.origin().list_repos();
  if (!repos.ok()) {
    body += "<p>Repositories cannot be listed: " + html_escape(repos.error().message) + "</p>";
  } else {
    size_t n = 0;
    for (const auto& repo : *repos) {
      if (++n > kMaxRepos) break;
      auto snap = gw.snapshot(repo, "main");
      body += "<section class=repo><h2>" + html_escape(repo) + "</h2>";
      if (!snap.ok()) {
        body += "<p>" + html_escape(snap.error().message) + "</p></section>";
        continue;
      }
      body += "<p>revision main = " + html_escape(snap->commit) +
              "</p><table><tr><th>file</th><th>bytes in</th><th>verdict</th><th>what was removed</th><th></th></tr>";
      for (const auto& f : snap->files) body += file_row(gw, *snap, f);
      body += "</table></section>";
    }
  }
  return "<!doctype html><html><head><meta charset=utf-8><title>modelcdr serve</title><style>"
         "body{font-family:sans-serif;margin:2em}td,th{padding:.2em .8em;text-align:left;vertical-align:top}"
         ".removed{margin:0;font-size:90%}</style></head><body><h1>modelcdr serve</h1>"
         "<p>Every model file here is served as a modelcdr rebuild; other files only when proven inert. Source: " +
         html_escape(gw.origin().describe()) + "</p>" + body + "</body></html>";
}

}  // namespace modelcdr::serve
