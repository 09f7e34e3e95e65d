#pragma once
// Running other programs (qemu, criu, apt tools, workload commands) with timeouts, captured output,
// and resource usage, without a shell.
#include <sys/types.h>

#include <chrono>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "core/result.hpp"

namespace crb {

struct RunOptions {
  std::chrono::milliseconds timeout{std::chrono::seconds(60)};
  std::optional<std::string> stdinData;
  std::map<std::string, std::string> extraEnv;
  std::string cwd;
  bool captureStdout = true;
  bool captureStderr = true;
  // File descriptors (in this process) to pass to the child unchanged (cleared of CLOEXEC).
  std::vector<int> inheritFds;
};

struct RunResult {
  int exitCode = -1;      // exit status, or -1 when killed by a signal
  int termSignal = 0;     // signal that ended it, if any
  bool timedOut = false;  // killed by us after RunOptions::timeout
  std::string out;
  std::string err;
  double wallSeconds = 0;
  double cpuSeconds = 0;  // user + system of the child (and its reaped children)
  long peakRssKiB = 0;
  bool succeeded() const { return exitCode == 0 && !timedOut; }
  // One-line description for error messages: "exit 1: <last stderr line>" / "timed out after 5 s".
  std::string describe() const;
};

// Run argv[0] (searched in PATH) to completion. Returns an error only when it could not start.
Result<RunResult> runCommand(const std::vector<std::string>& argv, const RunOptions& opts = {});

// Start a process in the background; stdout/stderr go to `logPath` (or /dev/null when empty).
Result<pid_t> spawnBackground(const std::vector<std::string>& argv, const std::string& logPath = {},
                              const RunOptions& opts = {});

// Wait for pid to exit with a deadline; sends SIGKILL at the deadline. Returns the wait status.
int waitOrKill(pid_t pid, std::chrono::milliseconds timeout);

bool processAlive(pid_t pid);

std::string joinArgs(const std::vector<std::string>& argv);

}  // namespace crb
