#include <unistd.h>

#include <cstdio>
#include <iostream>

#include "cli/command.hpp"
#include "core/log.hpp"
#include "core/result.hpp"
#include "crbench_config.h"
#include "crbench_git.h"



int main(int argc, char** argv) {
  CLI::App app{"crbench: process-level checkpoint/restart vs VM snapshots, measured"};
  app.set_version_flag("--version", std::string(CRBENCH_VERSION) + " (" + CRBENCH_GIT_COMMIT + ")");
  app.require_subcommand(1);
  crb::GlobalOptions global;
  app.add_flag("-v,--verbose", global.verbose, "debug logging to stderr");
  std::function<int()> toRun;
  for (auto& [name, cmd] : crb::CommandRegistry::instance().all()) {
    CLI::App* sub = app.add_subcommand(name, cmd.description);
    auto fn = cmd.setup(*sub, global);
    sub->callback([&toRun, fn] { toRun = fn; });
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  crb::initLogging(global.verbose);
  return toRun ? toRun() : 0;
}
