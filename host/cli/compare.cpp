// crbench compare <scenario> [--repeats N] [--engines a,b] [--runtimes container,vm] [--modes m,n]
//                 [--param k=v] [--quick] [--results DIR] [--report DIR] [--json]
#include <unistd.h>

#include <algorithm>
#include <csignal>
#include <cstdio>

#include "cli/command.hpp"
#include "compare/compare.hpp"
#include "controller/controller.hpp"
#include "core/fsutil.hpp"
#include "core/interrupt.hpp"
#include "core/paths.hpp"
#include "core/privilege.hpp"
#include "report/report.hpp"
#include "results/results.hpp"
#include "scenario/scenario.hpp"

namespace crb {
namespace {

struct CompareArgs {
  CompareRequest req;
  std::string results, report;
  bool json = false;
  bool noWarmup = false;
};

std::string commandLine(const CompareArgs& a) {
  auto join = [](const std::vector<std::string>& v) {
    std::string o;
    for (auto& s : v) o += (o.empty() ? "" : ",") + s;
    return o;
  };
  const CompareRequest& r = a.req;
  std::string c = "crbench compare " + r.scenario + " --repeats " + std::to_string(r.repeats);
  if (!r.engines.empty()) c += " --engines " + join(r.engines);
  if (!r.runtimes.empty()) c += " --runtimes " + join(r.runtimes);
  if (!r.modes.empty()) c += " --modes " + join(r.modes);
  for (auto& p : r.params) c += " --param " + p;
  if (r.quick) c += " --quick";
  if (a.noWarmup) c += " --no-warmup";
  return c;
}

// The record of a combination that cannot run: same schema as every run, status unsupported.
Json refusalRecord(const CompareRequest& req, const Combination& c) {
  Json rec = newRunRecord(newRunId(req.scenario, c.runtime, c.engine));
  rec["status"] = "unsupported";
  rec["error"] = {{"message", c.reason}, {"phase", "capabilities"}};
  rec["runtime"] = c.runtime;
  rec["engine"] = c.engine;
  rec["mode"] = c.mode == "-" ? Json(nullptr) : Json(c.mode);
  rec["scenario"] = {{"name", req.scenario}, {"params_overrides", req.params}};
  rec["timings_ms"] = Json::object();
  rec["fidelity"] = {{"verdict", "none"}, {"checks", Json::array()}};
  rec["downtime_ms"] = nullptr;
  rec["environment"] = environmentFacts();
  noteRunEnd(rec);
  rec["finished_at"] = isoTimeNow();
  return rec;
}

std::function<int()> setupCompare(CLI::App& app, GlobalOptions& global) {
  auto a = std::make_shared<CompareArgs>();
  app.add_option("scenario", a->req.scenario, "scenario name (scenarios/<name>.toml) or file")->required();
  CLI::Option* repeatsOpt = app.add_option("--repeats", a->req.repeats, "measured runs per combination (default 5)");
  app.add_option("--engines", a->req.engines, "engines to compare (default: all built in)")->delimiter(',');
  app.add_option("--runtimes", a->req.runtimes, "container, vm (default: both)")->delimiter(',');
  app.add_option("--modes", a->req.modes, "engine modes (default: every mode of each engine)")->delimiter(',');
  app.add_option("--param", a->req.params, "scenario parameter override key=value (repeatable)");
  app.add_flag("--quick", a->req.quick, "one run per combination, one mode per engine, no warm-up");
  app.add_flag("--no-warmup", a->noWarmup, "do not run (and discard) a warm-up round first");
  app.add_option("--results", a->results, "directory for the run records (default: results/runs)");
  app.add_option("--report", a->report, "also write report.html and report.md into this directory");
  app.add_flag("--json", a->json, "print the compare summary as JSON instead of the table");
  return [a, &global, repeatsOpt]() -> int {
    CompareRequest& req = a->req;
    // --quick changes the repeats only when they were not given.
    if (req.quick && !repeatsOpt->count()) req.repeats = 1;
    if (auto st = requireRoot("crbench compare"); !st.ok()) return reportError(st.error());
    // A peer that goes away (libvirtd restarted under us, a QMP or agent socket closed by a dying
    // guest) must fail the run that used it, not kill the whole compare with SIGPIPE and leave its
    // sandbox behind; libvirt asks its clients to ignore SIGPIPE for the same reason.
    std::signal(SIGPIPE, SIG_IGN);
    // SIGINT/SIGTERM/SIGHUP: stop after the current step; the run in progress tears its sandbox
    // down, the engines (and the libvirt daemon crbench started) are released as they go out of
    // scope, the records and the summary are written, and the exit code is 128 + the signal.
    // Installed before the engines are probed: that may start a daemon too.
    InterruptGuard guard;
    req.cancelled = [] { return interrupted(); };
    req.warmup = !(a->noWarmup || req.quick);
    req.resultsDir = a->results.empty() ? defaultResultsDir() : fs::path(a->results);
    if (!a->report.empty()) req.reportDir = a->report;
    req.commandLine = commandLine(*a);

    // Everything the user can get wrong is checked here, before the first sandbox starts.
    auto sc = loadScenario(req.scenario, req.params);
    if (!sc.ok()) {
      Error e = sc.error();
      e.exitCode = 2;
      return reportError(e);
    }
    if (auto st = checkWritableDir(req.resultsDir); !st.ok())
      return reportError(makeError(st.error().message, "pass a writable directory with --results DIR", 2));
    if (!req.reportDir.empty())
      if (auto st = checkWritableDir(req.reportDir); !st.ok())
        return reportError(makeError(st.error().message, "pass a writable directory with --report DIR", 2));
    auto plan = planMatrix(req, registeredEngines(req.engines, req.runtimes), sc->runtimes);
    if (!plan.ok()) return reportError(plan.error());
    for (auto& c : *plan) {
      if (c.status != "run") continue;
      RunSpec spec;
      spec.scenario = req.scenario;
      spec.params = req.params;
      spec.runtime = c.runtime;
      spec.engine = c.engine;
      spec.mode = c.mode;
      spec.resultsDir = req.resultsDir;
      if (auto st = validateRunSpec(spec); !st.ok()) return reportError(st.error());
    }

    // The "before" state must be the workload's steady state, not its start-up: programs with a
    // start delay (Xvfb clients) or a first status after a second (the pty driver) need time before
    // the digest, so probing before the checkpoint lasts at least 2 s past the last start delay.
    double lastDelay = 0;
    for (auto& prog : sc->programs) lastDelay = std::max(lastDelay, prog.startDelaySeconds);
    int warmupMs = std::max(RunSpec{}.warmupMs, int(2000 + lastDelay * 1000));
    bool tty = ::isatty(STDERR_FILENO);
    auto progress = [tty, &global](const std::string& s) {
      if (tty || global.verbose) std::fprintf(stderr, "%s\n", s.c_str());
    };
    std::vector<std::string> writeErrors;
    auto run = [&](const Combination& c, const Slot& slot) -> Json {
      if (slot.refused) return refusalRecord(req, c);
      RunSpec spec;
      spec.scenario = req.scenario;
      spec.params = req.params;
      spec.runtime = c.runtime;
      spec.engine = c.engine;
      spec.mode = c.mode;
      spec.resultsDir = req.resultsDir;
      spec.writeRecord = false;  // written below with its compare block
      spec.warmupMs = warmupMs;
      spec.cancelled = req.cancelled;
      spec.verbose = global.verbose;
      if (global.verbose) spec.progress = [](const std::string& s) { std::fprintf(stderr, "    %s\n", s.c_str()); };
      return runOnce(spec).record;
    };
    auto onRecord = [&](const Json& rec) {
      auto p = writeRunRecord(rec, req.resultsDir);
      if (!p.ok()) writeErrors.push_back(p.error().text());
    };
    CompareResult res = runCompare(req, *plan, run, progress, onRecord);
    int sig = interruptSignal();
    if (sig) res.summary["interrupted"]["signal"] = signalName(sig);
    std::string summaryName = res.summary["id"].get<std::string>() + ".compare.json";
    fs::path summaryPath = req.resultsDir / summaryName;
    if (auto st = writeFileAtomic(summaryPath, res.summary.dump(1) + "\n"); !st.ok()) writeErrors.push_back(st.error().text());

    if (a->json) {
      std::printf("%s\n", res.summary.dump(1).c_str());
    } else {
      std::printf("%s: %d repeats%s, results in %s\n\n", req.scenario.c_str(), req.repeats,
                  req.warmup ? " (+1 warm-up, discarded)" : "", req.resultsDir.c_str());
      std::printf("%s", formatTable(res.summary).c_str());
      if (sig)
        std::printf("\ninterrupted by %s (runs not started: %d); the figures cover the finished runs only\n",
                    signalName(sig).c_str(), res.summary["interrupted"].value("runs_not_started", 0));
      std::printf("\nsummary: %s\n", summaryPath.c_str());
    }
    if (!req.reportDir.empty()) {
      RunSet set;
      for (auto& r : res.records)
        if (auto p = addRecord(set, r, "(this compare)"); !p.empty()) set.problems.push_back(p);
      set.compareSummaries.push_back(res.summary);
      set.inputs.push_back(req.resultsDir.string());
      ReportOptions ro;
      ro.command = req.commandLine;
      auto out = writeReport(set, ro, req.reportDir);
      if (!out.ok())
        writeErrors.push_back("report: " + out.error().text());
      else
        std::fprintf(stderr, "report: %s (and report.md)\n", out->html.c_str());
    }
    for (auto& e : writeErrors) std::fprintf(stderr, "crbench: error: %s\n", e.c_str());
    if (sig) return signalExitCode(sig);
    if (!writeErrors.empty()) return 1;
    // Failures are data, shown in the table; but a compare where nothing at all worked is an error.
    for (auto& row : res.summary["combinations"])
      if (row["n"].get<int>() > 0) return 0;
    std::fprintf(stderr, "crbench: no combination completed a single run (see the status column)\n");
    return 1;
  };
}

}  // namespace
CRB_REGISTER_COMMAND(compare, "compare",
                     "run a scenario with every runtime x engine x mode, N interleaved repeats, side-by-side table",
                     setupCompare);
}  // namespace crb
