#pragma once
// crbench-agent: init and workload supervisor inside every sandbox (container PID 1, VM /init).
// Protocol: docs/agent-protocol.md. Kept single-threaded with plain poll(), one UDP socket and one
// listening TCP socket, because checkpoint engines dump the agent together with the workload: every
// extra kernel object (threads, epoll, timerfd, signalfd) is one more thing each engine must restore.
#include <nlohmann/json.hpp>

#include <cstdint>
#include <string>
#include <vector>

namespace agent {

using Json = nlohmann::json;

enum class Mode { NoInit, Container, Vm };

struct Options {
  Mode mode = Mode::NoInit;
  std::string listen = "0.0.0.0";
  int echoPort = 7700;
  int controlPort = 7701;
  std::string config = "/etc/crbench/scenario.json";
  bool verbose = false;
};

// Logs one line to stdout with the agent's monotonic timestamp. Lifecycle only: in the VM stdout
// is a serial console at ~10 bytes/ms, so per-request logging would stall the loop.
void logf(const char* fmt, ...) __attribute__((format(printf, 1, 2)));

int64_t monoNs();
int64_t wallNs();
uint64_t fnv1a(const std::string& s, uint64_t h = 0xcbf29ce484222325ULL);
std::string hex64(uint64_t v);
bool readText(const std::string& path, std::string& out, size_t limit = 1 << 20);

// init.cpp: what PID 1 must prepare before anything runs. Errors are logged, not fatal: a missing
// mount degrades the digest, it must not take the sandbox down.
void setupContainer();
void setupVm();
void bringUpLoopback();

// digest.cpp: the per-process state summary. `onlyTreeOf` > 0 limits it to that pid and its
// descendants (--no-init on a host, where /proc shows every host process).
Json processDigest(int onlyTreeOf);

int runAgent(const Options& opts);

}  // namespace agent
