#include <cstdio>

#include "cli/command.hpp"
#include "doctor/checks.hpp"

namespace crb {
namespace {
std::function<int()> setupDoctor(CLI::App& app, GlobalOptions& global) {
  app.add_flag("--json", global.json, "machine-readable report on stdout");
  return [&global] {
    Json report = doctor::collectAll();
    if (global.json)
      std::printf("%s\n", report.dump(2).c_str());
    else
      std::fputs(doctor::renderTable(report).c_str(), stdout);
    // A report, not a gate: what is unavailable is in the output, the command itself succeeded.
    return 0;
  };
}
}  // namespace
CRB_REGISTER_COMMAND(
    doctor, "doctor",
    "what this host can measure and why not: accelerator, QEMU, namespaces, freezer, "
    "PAGEMAP_SCAN, userfaultfd, libvirt, every engine's capabilities",
    setupDoctor);
}  // namespace crb
