// A deadline for a request's headers (`serve --header-timeout`): a client that drips its
// request a byte at a time never trips the per-read timeout, and cpp-httplib 0.11 has no
// whole-request deadline, so a watchdog thread does it. It finds the gateway's connections
// itself (the sockets of this process whose local port is the listening port: httplib hands
// out no per-connection hook), learns from the server's pre-routing handler and logger when a
// connection's request has arrived and its answer has gone, and shuts down (never closes: the
// server's thread owns the descriptor) a connection whose headers are not complete within the
// deadline of its opening or of the previous answer.
#pragma once
#include <chrono>
#include <condition_variable>
#include <map>
#include <mutex>
#include <string>
#include <thread>

namespace modelcdr::serve {

class HeaderDeadline {
 public:
  HeaderDeadline(int port, std::chrono::milliseconds deadline);
  ~HeaderDeadline();  // stops the watchdog
  HeaderDeadline(const HeaderDeadline&) = delete;
  HeaderDeadline& operator=(const HeaderDeadline&) = delete;

  // From the server's threads, with the client's address as httplib reports it.
  void request_arrived(const std::string& ip, int port);  // headers are complete: no deadline while it is answered
  void answered(const std::string& ip, int port);         // the next request's headers are due in `deadline`

 private:
  struct Conn {
    std::chrono::steady_clock::time_point since;
    bool busy = false;
    std::chrono::steady_clock::time_point touched;  // last found by a scan or told of by the server
  };
  void loop();
  void scan();
  static std::string key(const std::string& ip, int port) { return ip + "|" + std::to_string(port); }

  const int port_;
  const std::chrono::milliseconds deadline_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;
  std::map<std::string, Conn> conns_;  // by peer address: unique per live connection to port_
  std::thread thread_;
};

}  // namespace modelcdr::serve
