#pragma once
// `crbench compare`: every valid runtime × engine × mode for one scenario, N repeats interleaved
// round-robin (so slow drift of the machine spreads over all combinations instead of biasing one),
// one warm-up round first whose runs are recorded but left out of the statistics. Combinations
// that cannot run (engine unavailable here, mode unsupported) are rows with their reason: that is
// data, not an error. Bad input is refused before anything starts.
#include <filesystem>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "core/json.hpp"
#include "core/result.hpp"
#include "engine/engine.hpp"

namespace crb {

struct Combination {
  std::string runtime, engine, mode;
  std::string status;  // run | unsupported | unavailable
  std::string reason;  // why not, for the last two
  std::string key() const { return runtime + "/" + engine + "/" + (mode.empty() ? "-" : mode); }
};

struct CompareRequest {
  std::string scenario;
  std::vector<std::string> params;  // key=value overrides
  int repeats = 5;
  bool repeatsGiven = false;
  bool warmup = true;
  bool quick = false;
  std::vector<std::string> engines, runtimes, modes;  // empty = all
  std::filesystem::path resultsDir;                    // "" = defaultResultsDir()
  std::filesystem::path reportDir;                     // "" = no report
  std::string commandLine;                             // for the summary / report
  // Polled before each run: true stops the compare there (a signal); the runs not started are
  // counted in the summary's "interrupted" block, and a run cut short is marked by its runner.
  std::function<bool()> cancelled;
};

// What the planner knows of each engine (from EngineRegistry, or made up by a test).
struct EngineInfo {
  std::string name;
  Capabilities caps;
};
// Only the engines named in `only` (all when empty) are probed, and of those only the ones that
// can work on one of `runtimes` (all when empty): probing the libvirt engine starts a daemon,
// which a compare of other engines or of the container runtime alone must not pay for.
std::vector<EngineInfo> registeredEngines(const std::vector<std::string>& only = {},
                                          const std::vector<std::string>& runtimes = {});

// Checks the request against the engines and the scenario's runtimes and lists the combinations.
// Errors (exit code 2) name the bad value and the valid ones.
Result<std::vector<Combination>> planMatrix(const CompareRequest& req, const std::vector<EngineInfo>& engines,
                                            const std::vector<std::string>& scenarioRuntimes);

// One scheduled run: which combination, which repeat (0 = warm-up when enabled).
struct Slot {
  size_t combo;
  int repeat;
  bool warmup;
  bool refused = false;  // a combination that cannot run: the runner only records why
};
// Round-robin order: warm-up round, then repeat 1 of every combination, repeat 2 ...
std::vector<Slot> schedule(const std::vector<Combination>& combos, int repeats, bool warmup);

// Runs one slot and returns the run record (failed and unsupported runs too).
using RunFunction = std::function<Json(const Combination&, const Slot&)>;

struct CompareResult {
  Json summary;                   // schema crbench-compare v1
  std::vector<Json> records;      // every run, warm-ups included (marked)
  std::vector<std::string> recordPaths;
  std::vector<std::string> writeErrors;
};

// `run` is called for every scheduled slot, then once per refused combination (Slot::refused) so
// its reason is recorded like any run. `onRecord` sees each record as soon as it is complete (with
// its "compare" block), to write it before the next run starts.
CompareResult runCompare(const CompareRequest& req, const std::vector<Combination>& combos, const RunFunction& run,
                         const std::function<void(const std::string&)>& progress = {},
                         const std::function<void(const Json&)>& onRecord = {});

// The side-by-side table for stdout.
std::string formatTable(const Json& summary);

}  // namespace crb
