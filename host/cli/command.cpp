#include "cli/command.hpp"

#include <cstdio>

#include "core/result.hpp"

namespace crb {
CommandRegistry& CommandRegistry::instance() {
  static CommandRegistry r;
  return r;
}

int reportError(const Error& e) {
  std::fprintf(stderr, "crbench: error: %s\n", e.message.c_str());
  if (!e.hint.empty()) std::fprintf(stderr, "crbench: hint: %s\n", e.hint.c_str());
  return e.exitCode ? e.exitCode : 1;
}
}  // namespace crb
