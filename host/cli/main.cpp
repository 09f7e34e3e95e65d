#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <iostream>

#include "cli/command.hpp"
#include "core/log.hpp"
#include "core/result.hpp"
#include "crbench_config.h"
#include "crbench_git.h"

namespace {

// Tool choices are environment variables underneath (the engines and runtimes read them, and
// child processes inherit them); these options are the spelling users expect. An absolute path is
// stored so a later chdir cannot change what it names.
void exportPath(const char* var, const std::string& value) {
  if (value.empty()) return;
  if (value.find('/') == std::string::npos) {  // a bare name is looked up in PATH
    ::setenv(var, value.c_str(), 1);
    return;
  }
  std::error_code ec;
  auto abs = std::filesystem::absolute(value, ec);
  ::setenv(var, (ec ? value : abs.string()).c_str(), 1);
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"crbench: process-level checkpoint/restart vs VM snapshots, measured"};
  app.set_version_flag("--version", std::string(CRBENCH_VERSION) + " (" + CRBENCH_GIT_COMMIT + ")");
  app.require_subcommand(1);
  crb::GlobalOptions global;
  app.add_flag("-v,--verbose", global.verbose, "debug logging to stderr");
  std::string kernel, criu, qemu;
  app.add_option("--kernel", kernel, "guest kernel (bzImage) for the vm runtime (default: .deps/kernel; $CRBENCH_KERNEL)");
  app.add_option("--criu", criu, "CRIU binary for the criu engine (default: probed; $CRBENCH_CRIU)");
  app.add_option("--qemu", qemu, "qemu-system-x86_64 for the vm runtime (default: from PATH; $CRBENCH_QEMU)");
  // Global options may also follow the subcommand: `crbench run counter --runtime vm --kernel K`.
  app.fallthrough();
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
  exportPath("CRBENCH_KERNEL", kernel);
  exportPath("CRBENCH_CRIU", criu);
  exportPath("CRBENCH_QEMU", qemu);
  return toRun ? toRun() : 0;
}
