#pragma once
// Reading run records (results schema v1, host/results/) for reports and comparisons. Everything
// that knows where a figure sits inside a record lives here, so the renderer and the compare
// table read the same numbers the same way.
#include <filesystem>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "core/json.hpp"
#include "core/result.hpp"

namespace crb {

struct CheckOutcome {
  std::string name;
  std::string result;  // pass | fail | not-applicable
  std::string detail;
};

struct RunView {
  std::string file;  // where it was read from ("" when in memory)
  std::string runId, scenario, runtime, engine, mode, status;  // status: ok | failed | unsupported
  std::string error, errorPhase;
  bool warmup = false;  // a compare warm-up run: kept in results, left out of statistics
  std::optional<double> downtimeMs, checkpointMs, restoreMs, firstReplyMs;
  std::optional<double> checkpointDowntimeMs;  // probe gap overlapping the checkpoint only
  std::optional<double> imageBytes, imageAllocatedBytes;
  std::optional<double> engineCpuSeconds;  // checkpoint + restore, engine helpers and our thread
  std::string fidelityVerdict;             // pass | fail | none
  std::vector<CheckOutcome> checks;
  const Json* record = nullptr;  // the whole record (owned by the RunSet)
  // "container/criu/stop-and-copy": the unit rows of every table are made of.
  std::string key() const { return runtime + "/" + engine + "/" + (mode.empty() ? "-" : mode); }
  int fidelityPassed() const;
  int fidelityTotal() const;  // pass + fail (not-applicable does not count)
};

RunView viewRun(const Json& record, const std::string& file = {});

// A metric every table and chart shows, in one place: how to read it and how to print it.
struct Metric {
  std::string id;     // downtime_ms ...
  std::string title;  // "Downtime"
  std::string unit;   // "ms", "MiB", "s"
  double scale = 1;   // raw value * scale = shown value
  std::function<std::optional<double>(const RunView&)> get;
};
const std::vector<Metric>& reportMetrics();

// Records read from files or directories (every *.json inside, not recursive). Files that are not
// readable run records become problems with a clear message; the rest is still returned.
struct RunSet {
  std::vector<Json> records;           // stable storage for RunView::record
  std::vector<RunView> runs;
  std::vector<Json> compareSummaries;  // crbench-compare summaries found among the inputs
  std::vector<std::string> problems;   // "file: what is wrong (what to do)"
  std::vector<std::string> inputs;
};

RunSet loadRuns(const std::vector<std::filesystem::path>& inputs);
// Add one record already in memory (compare passes its runs this way); returns a problem or "".
std::string addRecord(RunSet& set, Json record, const std::string& file);
// Rebuild RunView::record pointers after records were appended.
void relink(RunSet& set);

}  // namespace crb
