#pragma once
// Restore fidelity v1: named checks, each pass / fail / not-applicable with a detail line.
//   - from the agent's state digests taken before the checkpoint and after the restore:
//     process tree (pid, parent, name), fd tables (number, kind, path; offsets), memory-map
//     summary, cwd, resource limits, and whether the workload digest command still works;
//   - the scenario's own checks (commands the agent runs before and after), judged by `expect`:
//     same | increases | changed | exit-zero.
// The agent process itself serves the digest request while it is taken, so its fd table and heap
// legitimately differ between the two digests: it is compared in the process tree only.
#include <string>
#include <utility>
#include <vector>

#include "core/json.hpp"
#include "scenario/scenario.hpp"

namespace crb {

// Unsupported: the check applies but this runtime/engine offers no way to run it (reason in detail).
enum class Verdict { Pass, Fail, NotApplicable, Unsupported };
std::string toString(Verdict v);

struct FidelityCheck {
  FidelityCheck(std::string n = {}, Verdict v = Verdict::NotApplicable, std::string d = {}, Json f = nullptr)
      : name(std::move(n)), verdict(v), detail(std::move(d)), figures(std::move(f)) {}
  std::string name;
  Verdict verdict = Verdict::NotApplicable;
  std::string detail;
  Json figures;  // measured numbers behind the verdict (rest-of-system checks); null when none
  Json toJson() const;
};

// The outcome of running one scenario check command inside the sandbox (agent "exec" reply).
struct CheckRun {
  bool ran = false;       // false: the agent could not run it (error says why)
  std::string error;
  Json exitCode;          // integer, or null when killed by a signal
  std::string out;
  Json toJson() const;
};

std::vector<FidelityCheck> compareDigests(const Json& before, const Json& after);
FidelityCheck judgeScenarioCheck(const ScenarioCheck& check, const CheckRun& before, const CheckRun& after);

// "pass" when no check failed (not-applicable ones do not count), else "fail"; "none" if empty.
std::string overallVerdict(const std::vector<FidelityCheck>& checks);
Json toJson(const std::vector<FidelityCheck>& checks);

}  // namespace crb
