// crbench report RESULTS... -o DIR: report.html (self-contained, inline SVG) + report.md
#include <cstdio>

#include "cli/command.hpp"
#include "report/report.hpp"

namespace crb {
namespace {

struct ReportArgs {
  std::vector<std::string> inputs;
  std::string out;
  std::string title;
  std::string command, wrapper;
};

std::function<int()> setupReport(CLI::App& app, GlobalOptions&) {
  auto a = std::make_shared<ReportArgs>();
  app.add_option("results", a->inputs, "run record files or directories (results/runs)")->required();
  app.add_option("-o,--output", a->out, "directory for report.html and report.md")->required();
  app.add_option("--title", a->title, "page title (default: crbench: <scenario>)");
  app.add_option("--command", a->command,
                 "the crbench command that made the runs, for the Reproduce section (default: from the compare summary "
                 "among the inputs, else derived from the runs)");
  app.add_option("--wrapper-command", a->wrapper,
                 "a script that reruns everything on the page (e.g. scripts/publish.sh ...), shown in Reproduce too");
  return [a]() -> int {
    std::vector<std::filesystem::path> in(a->inputs.begin(), a->inputs.end());
    RunSet set = loadRuns(in);
    ReportOptions opts;
    opts.title = a->title;
    opts.command = a->command;
    opts.wrapperCommand = a->wrapper;
    auto out = writeReport(set, opts, a->out);
    if (!out.ok()) return reportError(out.error());
    // Input problems are printed and shown in the page; what could be read is still rendered.
    for (auto& p : out->problems) std::fprintf(stderr, "crbench: warning: %s\n", p.c_str());
    std::printf("%s\n%s\n(%zu runs)\n", out->html.c_str(), out->markdown.c_str(), out->runs);
    return 0;
  };
}

}  // namespace
CRB_REGISTER_COMMAND(report, "report", "render run records as an HTML page with charts and a Markdown twin", setupReport);
}  // namespace crb
