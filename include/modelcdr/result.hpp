// Result<T>: the library's error channel. Errors are values, never exceptions, so every
// stage has to decide what to do with a failure of the previous one.
#pragma once
#include <cstdint>
#include <string>
#include <utility>
#include <variant>

#include "modelcdr/rules.hpp"

namespace modelcdr {

// One error: what rule was broken, where. `where` is "entry offset N" style text that the
// caller prefixes with the file name when it reaches the user.
struct Error {
  Rule rule{};          // e.g. Rule::pickle_truncated (catalogue: src/report/rules.def)
  std::string message;  // human text: "GLOBAL 'posix system' is not allowed"
  std::string entry;    // container entry (zip member) or empty for a bare file
  uint64_t offset = 0;  // byte offset inside the entry (or the file)
  bool has_offset = false;  // false: the error is about the file as a whole (no "offset" printed)

  std::string describe() const {
    std::string s;
    if (!entry.empty()) s += entry + " ";
    if (has_offset) s += "offset " + std::to_string(offset) + ": ";
    return s + message + " [" + std::string(rule_id(rule)) + "]";
  }
};

// Without an offset: an error about the whole file (no position to name).
inline Error make_error(Rule rule, std::string message) {
  return Error{rule, std::move(message), {}, 0, false};
}
inline Error make_error(Rule rule, std::string message, uint64_t offset, std::string entry = {}) {
  return Error{rule, std::move(message), std::move(entry), offset, true};
}

template <class T>
class [[nodiscard]] Result {
 public:
  Result(T value) : v_(std::move(value)) {}
  Result(Error error) : v_(std::move(error)) {}
  bool ok() const { return v_.index() == 0; }
  explicit operator bool() const { return ok(); }
  T& value() & { return std::get<0>(v_); }
  const T& value() const& { return std::get<0>(v_); }
  T&& value() && { return std::get<0>(std::move(v_)); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  const Error& error() const { return std::get<1>(v_); }

 private:
  std::variant<T, Error> v_;
};

struct Ok {};
using Status = Result<Ok>;
inline Status ok_status() { return Ok{}; }

}  // namespace modelcdr

// Propagate an error from an expression returning Result<...>.
#define MCDR_TRY(expr)                                   \
  do {                                                   \
    auto mcdr_try_r_ = (expr);                           \
    if (!mcdr_try_r_.ok()) return mcdr_try_r_.error();   \
  } while (0)

#define MCDR_CONCAT_INNER(a, b) a##b
#define MCDR_CONCAT(a, b) MCDR_CONCAT_INNER(a, b)
#define MCDR_ASSIGN_OR_RETURN_IMPL(tmp, lhs, expr) \
  auto tmp = (expr);                               \
  if (!tmp.ok()) return tmp.error();               \
  lhs = std::move(tmp).value()
#define MCDR_ASSIGN(lhs, expr) \
  MCDR_ASSIGN_OR_RETURN_IMPL(MCDR_CONCAT(mcdr_r_, __LINE__), lhs, expr)
