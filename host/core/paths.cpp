#include "core/paths.hpp"

#include <unistd.h>

#include <cstdlib>

#include "crbench_config.h"

namespace crb {

fs::path projectRoot() {
  if (const char* r = std::getenv("CRBENCH_ROOT"); r && *r) return r;
  return CRBENCH_SOURCE_ROOT;
}
fs::path depsDir() { return projectRoot() / ".deps"; }
fs::path cacheDir() {
  if (const char* r = std::getenv("CRBENCH_CACHE"); r && *r) return r;
  return projectRoot() / ".cache";
}
fs::path runtimeDir() {
  if (const char* r = std::getenv("CRBENCH_RUNTIME_DIR"); r && *r) return r;
  return "/run/crbench";
}
fs::path defaultResultsDir() { return projectRoot() / "results" / "runs"; }
fs::path buildDir() {
  std::error_code ec;
  auto exe = fs::read_symlink("/proc/self/exe", ec);
  if (!ec) {
    // tests live in subdirectories of the build dir; the binary at its top
    for (auto p = exe.parent_path(); !p.empty() && p != p.root_path(); p = p.parent_path())
      if (fs::exists(p / "build.ninja")) return p;
  }
  return CRBENCH_BUILD_ROOT;
}
fs::path guestAgentBinary() {
  if (const char* r = std::getenv("CRBENCH_GUEST_AGENT"); r && *r) return r;
  return buildDir() / "guest-agent" / "crbench-agent";
}
}  // namespace crb
