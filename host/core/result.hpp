#pragma once
// Errors are values: every fallible function returns Result<T> (or Status). No exception crosses a
// module boundary. An Error says what failed, on which object, and what the user can do about it.
#include <fmt/format.h>

#include <string>
#include <utility>
#include <variant>

namespace crb {

struct Error {
  std::string message;  // what failed, naming the object ("scenario file x.toml line 3: ...")
  std::string hint;     // what to do about it; may be empty
  int exitCode = 1;     // exit status a CLI should use for this error

  std::string text() const { return hint.empty() ? message : message + " (" + hint + ")"; }
  // Prefix the message with context from an outer layer.
  Error context(const std::string& outer) const {
    Error e = *this;
    e.message = outer + ": " + message;
    return e;
  }
};

inline Error makeError(std::string message, std::string hint = {}, int exitCode = 1) {
  return Error{std::move(message), std::move(hint), exitCode};
}

// Exit code 3 marks "this engine/host cannot do this" as opposed to "it tried and failed": an
// engine refusing a workload at checkpoint time (an object it cannot save) returns this, and the
// run is recorded as `unsupported` with the reason instead of `failed`.
constexpr int kUnsupportedExitCode = 3;
inline Error makeUnsupported(std::string message, std::string hint = {}) {
  return Error{std::move(message), std::move(hint), kUnsupportedExitCode};
}

// errno-based error: "<what>: <strerror>"
Error sysError(const std::string& what, int err);

struct Ok {};

template <class T>
class [[nodiscard]] Result {
 public:
  Result(T value) : v_(std::in_place_index<0>, std::move(value)) {}
  Result(Error e) : v_(std::in_place_index<1>, std::move(e)) {}

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
  T valueOr(T fallback) const { return ok() ? value() : fallback; }

 private:
  std::variant<T, Error> v_;
};

using Status = Result<Ok>;

inline Status success() { return Ok{}; }

}  // namespace crb

// Propagate an error from an expression returning Result<...>; evaluates to nothing.
#define CRB_CHECK(expr)                                        \
  do {                                                         \
    auto crb_check_r_ = (expr);                                \
    if (!crb_check_r_.ok()) return crb_check_r_.error();       \
  } while (0)

#define CRB_CONCAT_INNER(a, b) a##b
#define CRB_CONCAT(a, b) CRB_CONCAT_INNER(a, b)
// Assign the value of a Result to `lhs` or return its error.
#define CRB_ASSIGN(lhs, expr) CRB_ASSIGN_IMPL(CRB_CONCAT(crb_assign_r_, __LINE__), lhs, expr)
#define CRB_ASSIGN_IMPL(tmp, lhs, expr) \
  auto tmp = (expr);                    \
  if (!tmp.ok()) return tmp.error();    \
  lhs = std::move(tmp).value()
