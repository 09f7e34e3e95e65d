#pragma once
// Which CRIU binary the engine uses and whether it really works on this host.
//
// `criu check` passing is not enough here: CRIU < 4.2 stops its parasite with a hardware
// breakpoint, and in nested VMs ptrace accepts the breakpoint but it never fires, so every dump
// hangs forever. The probe therefore also dumps and restores a canary process under a hard
// timeout; on a hang it kills CRIU, makes sure the canary is neither traced nor stopped, and says
// precisely why the engine is unavailable. Results are cached per binary (path, mtime, size) and
// kernel under <root>/.cache/criu-probe so `crbench doctor` and `crbench run` do not redo it.
#include <sys/types.h>

#include <chrono>
#include <string>

#include "core/json.hpp"
#include "core/result.hpp"

namespace crb::criu {

struct CriuBinary {
  std::string path;    // absolute path (a wrapper script for the unpacked prefix)
  std::string source;  // "engine-opt criu", "CRBENCH_CRIU", ".deps/criu", "system"
};

// --engine-opt criu=PATH, else $CRBENCH_CRIU, else <root>/.deps/criu/bin/criu, else criu in PATH.
Result<CriuBinary> findCriu(const Json& engineOptions = Json::object());

struct ProbeResult {
  std::string binary;
  std::string version;       // "4.2.1"
  bool usable = false;
  std::string reason;        // why not usable (precise, with the fix)
  bool lazyPages = false;    // criu check --feature uffd-noncoop
  std::string lazyReason;    // CRIU's words when not
  bool dirtyTracking = false;  // criu check --feature mem_dirty_track (pre-dump needs it)
  std::string dirtyReason;     // CRIU's words when not
  double checkMs = 0, canaryDumpMs = 0, canaryRestoreMs = 0;
  bool canaryReleased = true;  // nothing left traced or stopped after the probe
  bool fromCache = false;
  Json toJson() const;
  static ProbeResult fromJson(const Json& j);
};

struct ProbeOptions {
  std::chrono::milliseconds dumpTimeout{std::chrono::seconds(15)};
  std::chrono::milliseconds restoreTimeout{std::chrono::seconds(15)};
  bool useCache = true;
};

ProbeResult probeCriu(const CriuBinary& bin, const ProbeOptions& opts = {});

// Do ptrace hardware (execute) breakpoints fire on this host? Measured with a child process:
// sets DR0/DR7 through PTRACE_POKEUSER on a function the child then calls.
// Returns "fire", "do not fire", or "rejected: <errno>".
std::string hardwareBreakpointSelfTest();

// Release a process CRIU may have left half-dumped: wait for ptrace to let go of every thread,
// SIGCONT it. Returns an empty string when it is neither traced nor stopped, else what is wrong.
std::string releaseProcess(pid_t pid, std::chrono::milliseconds timeout = std::chrono::seconds(3));

// Thread states of a process: the first TracerPid != 0 and whether any thread is stopped (T/t).
struct TraceState {
  bool exists = false;
  pid_t tracer = 0;
  bool stopped = false;
};
TraceState traceState(pid_t pid);

}  // namespace crb::criu
