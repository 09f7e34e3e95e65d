#pragma once
// `crbench report`: one self-contained HTML page (inline SVG, no network) and a Markdown twin
// from run records. Layout: environment, the command to reproduce, one table per metric (median,
// 95% CI, min, max, n, ratio to the best; lower is better), raw samples per engine, the probe
// trace around a checkpoint, scaling lines when a scenario parameter varies, the fidelity matrix,
// failed and unsupported runs, and any input problems.
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "core/result.hpp"
#include "report/runs.hpp"
#include "report/stats.hpp"

namespace crb {

// Runs of one runtime/engine/mode (and parameter values, when those vary) — one table row.
struct Group {
  std::string key;          // runtime/engine/mode[ params]
  std::string runtime, engine, mode, paramsLabel;
  std::vector<const RunView*> runs;  // warm-ups excluded
  size_t ok = 0, failed = 0, unsupported = 0;
  std::string reason;  // of the first unsupported/failed run
  std::vector<double> samples(const Metric& m) const;  // from ok runs only
};

// Parameters whose value differs between runs (they split groups and get scaling charts).
std::vector<std::string> varyingParams(const std::vector<RunView>& runs);
std::vector<Group> groupRuns(const std::vector<RunView>& runs);

struct ReportOptions {
  std::string title;
  std::string command;  // how to reproduce; derived from the runs when empty
  // A wrapper that reruns everything on the page (e.g. scripts/publish.sh ...), shown before the
  // crbench command it runs; "" = none.
  std::string wrapperCommand;
};

// The 1-minute load average of the runs (environment.load_avg_1m_start / _end): "min … max
// (median m) over n runs", or "not recorded" for records written before these fields existed.
std::string loadSummary(const std::vector<const RunView*>& runs, const char* field);

struct ReportOutput {
  std::filesystem::path html, markdown;
  std::vector<std::string> problems;  // shown in the report too
  size_t runs = 0;
};

std::string renderHtml(const RunSet& set, const ReportOptions& opts, std::vector<std::string>& problems);
std::string renderMarkdown(const RunSet& set, const ReportOptions& opts, std::vector<std::string>& problems);
// Keeps the scenario with most runs when several are mixed (a problem says so).
RunSet selectOneScenario(const RunSet& set, std::vector<std::string>& problems);
// Writes <dir>/report.html and <dir>/report.md atomically. Errors only when nothing can be
// written or there is no run at all.
Result<ReportOutput> writeReport(const RunSet& set, const ReportOptions& opts, const std::filesystem::path& dir);

}  // namespace crb
