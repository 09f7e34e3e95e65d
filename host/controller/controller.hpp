#pragma once
// One measured run: scenario -> sandbox -> probe -> checkpoint -> restore -> fidelity -> record.
// runOnce() is a plain library call (crbench run, crbench compare): it always returns a record,
// for failed and unsupported runs too, and tears down everything it started.
#include <filesystem>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "core/json.hpp"
#include "core/result.hpp"

namespace crb {

struct RunSpec {
  std::string scenario;                // name (scenarios/<name>.toml) or path
  std::vector<std::string> params;     // "key=value" scenario parameter overrides
  std::string runtime = "container";   // container | vm
  std::string engine = "pause";
  std::string mode;                    // "" = the engine's first supported mode
  std::map<std::string, std::string> engineOptions;  // --engine-opt k=v
  std::filesystem::path resultsDir;    // "" = defaultResultsDir()
  bool writeRecord = true;
  std::string runId;                   // "" = generated
  double probeRateHz = 1000;
  int warmupMs = 300;        // probing before the checkpoint
  // Lengthen the warm-up to 2 s past the scenario's last program start delay (`crbench run`
  // without --warmup-ms; compare computes its own), so "before" is the steady state.
  bool warmupPastStartDelays = false;
  int settleMs = 300;        // probing after the restore, before the "after" digest
  int dirtyWindowMs = 1000;  // the workload's dirty rate is measured over this window (0 = not)
  int firstReplyTimeoutMs = 20000;
  // Where checkpoint images go: <imageRoot>/<run-id> (0700). "" = /var/tmp/crbench/images.
  std::filesystem::path imageRoot;
  bool keepImage = false;    // else removed after its size was measured
  bool verbose = false;
  std::function<void(const std::string&)> progress;  // one line per phase, for humans
  // Polled between phases and during waits: true ends the run as failed ("interrupted") after
  // tearing everything down (crbench run sets it from SIGINT/SIGTERM).
  std::function<bool()> cancelled;
};

struct RunOutcome {
  std::string runId;
  std::string status;  // ok | failed | unsupported
  Json record;
  std::filesystem::path recordPath;  // empty when not written
  std::string writeError;            // the record could not be written (the run itself may be ok)
};

// Checks that need no sandbox, so a CLI can refuse bad input before anything starts: the scenario
// loads, the runtime and engine exist, the engine has the mode for this runtime, the results
// directory is writable. Errors carry exit code 2 (usage) and say what to fix.
Status validateRunSpec(const RunSpec& spec);

RunOutcome runOnce(const RunSpec& spec);

}  // namespace crb
