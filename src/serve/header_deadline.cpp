#include "serve/header_deadline.hpp"

#include <arpa/inet.h>
#include <dirent.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <vector>

namespace modelcdr::serve {

namespace {

// The peer of a connected socket accepted on `port`, as "ip|port" (httplib's spelling of the
// address); empty for anything else (files, the listening socket, the upstream client's sockets).
std::string peer_of(int fd, int port) {
  sockaddr_storage local{}, peer{};
  socklen_t ll = sizeof(local), pl = sizeof(peer);
  if (::getsockname(fd, reinterpret_cast<sockaddr*>(&local), &ll) != 0) return "";
  int local_port = local.ss_family == AF_INET    ? ntohs(reinterpret_cast<sockaddr_in*>(&local)->sin_port)
                   : local.ss_family == AF_INET6 ? ntohs(reinterpret_cast<sockaddr_in6*>(&local)->sin6_port)
                                                 : -1;
  if (local_port != port || ::getpeername(fd, reinterpret_cast<sockaddr*>(&peer), &pl) != 0) return "";
  char ip[INET6_ADDRSTRLEN] = {};
  int peer_port = 0;
  if (peer.ss_family == AF_INET) {
    auto* a = reinterpret_cast<sockaddr_in*>(&peer);
    ::inet_ntop(AF_INET, &a->sin_addr, ip, sizeof(ip));
    peer_port = ntohs(a->sin_port);
  } else {
    auto* a = reinterpret_cast<sockaddr_in6*>(&peer);
    ::inet_ntop(AF_INET6, &a->sin6_addr, ip, sizeof(ip));
    peer_port = ntohs(a->sin6_port);
  }
  return std::string(ip) + "|" + std::to_string(peer_port);
}

std::vector<int> open_descriptors() {
  std::vector<int> fds;
  DIR* d = ::opendir("/proc/self/fd");
  if (!d) return fds;
  const int own = ::dirfd(d);
  while (dirent* e = ::readdir(d)) {
    char* end = nullptr;
    long fd = std::strtol(e->d_name, &end, 10);
    if (end != e->d_name && *end == '\0' && fd != own) fds.push_back(int(fd));
  }
  ::closedir(d);
  return fds;
}

}  // namespace

HeaderDeadline::HeaderDeadline(int port, std::chrono::milliseconds deadline)
    : port_(port), deadline_(deadline), thread_([this] { loop(); }) {}

HeaderDeadline::~HeaderDeadline() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  thread_.join();
}

void HeaderDeadline::request_arrived(const std::string& ip, int port) {
  std::lock_guard<std::mutex> lock(mu_);
  Conn& c = conns_[key(ip, port)];
  c.busy = true;
  c.touched = std::chrono::steady_clock::now();  // a connection no scan has met yet is kept
}

void HeaderDeadline::answered(const std::string& ip, int port) {
  std::lock_guard<std::mutex> lock(mu_);
  Conn& c = conns_[key(ip, port)];
  c.busy = false;
  c.since = c.touched = std::chrono::steady_clock::now();
}

void HeaderDeadline::loop() {
  // Four looks per deadline: a dripping client is dropped within 1.25 deadlines.
  const auto every = std::max(deadline_ / 4, std::chrono::milliseconds(50));
  std::unique_lock<std::mutex> lock(mu_);
  while (!stop_) {
    cv_.wait_for(lock, every);
    if (stop_) break;
    lock.unlock();
    scan();
    lock.lock();
  }
}

void HeaderDeadline::scan() {
  const auto now = std::chrono::steady_clock::now();
  std::vector<std::pair<std::string, int>> live;  // peer, a duplicate of its descriptor
  for (int fd : open_descriptors()) {
    // A duplicate refers to the socket found even if `fd` is closed and reused meanwhile, so
    // the shutdown below can only ever reach the connection that was judged.
    int dup = ::fcntl(fd, F_DUPFD_CLOEXEC, 0);
    if (dup < 0) continue;
    std::string peer = peer_of(dup, port_);
    if (peer.empty()) ::close(dup);
    else live.emplace_back(std::move(peer), dup);
  }
  std::lock_guard<std::mutex> lock(mu_);
  for (auto& [peer, dup] : live) {
    auto [it, fresh] = conns_.try_emplace(peer);
    Conn& c = it->second;
    if (fresh) c.since = now;
    c.touched = now;
    if (!c.busy && now - c.since > deadline_) {
      ::shutdown(dup, SHUT_RDWR);  // the server's read fails and it closes the connection
      std::fprintf(stderr, "modelcdr serve: dropped %s: request headers not complete within %lld ms\n", peer.c_str(),
                   static_cast<long long>(deadline_.count()));
      c.since = now;  // one message per connection
    }
    ::close(dup);
  }
  // Gone: neither found by this scan nor told of since it began (closed connections).
  for (auto it = conns_.begin(); it != conns_.end();)
    it = it->second.touched >= now ? std::next(it) : conns_.erase(it);
}

}  // namespace modelcdr::serve
