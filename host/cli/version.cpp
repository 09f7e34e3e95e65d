#include <cstdio>

#include "cli/command.hpp"
#include "crbench_config.h"
#include "crbench_git.h"
#include "engine/engine.hpp"

namespace crb {
namespace {
std::function<int()> setupVersion(CLI::App&, GlobalOptions&) {
  return [] {
    std::printf("crbench %s (commit %s)\nengines built in:", CRBENCH_VERSION, CRBENCH_GIT_COMMIT);
    for (auto& n : EngineRegistry::instance().names()) std::printf(" %s", n.c_str());
    std::printf("\n");
    return 0;
  };
}
}  // namespace
CRB_REGISTER_COMMAND(version, "version", "print version, commit and the engines built in", setupVersion);
}  // namespace crb
