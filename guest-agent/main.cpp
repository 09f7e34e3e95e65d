// crbench-agent entry: picks the mode (container PID 1, VM /init, or a plain process for tests),
// prepares the system for that mode and runs the event loop.
#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <string>

#include "agent.hpp"

namespace agent {

int64_t monoNs() {
  timespec t{};
  ::clock_gettime(CLOCK_MONOTONIC, &t);
  return static_cast<int64_t>(t.tv_sec) * 1000000000LL + t.tv_nsec;
}

int64_t wallNs() {
  timespec t{};
  ::clock_gettime(CLOCK_REALTIME, &t);
  return static_cast<int64_t>(t.tv_sec) * 1000000000LL + t.tv_nsec;
}

uint64_t fnv1a(const std::string& s, uint64_t h) {
  for (unsigned char c : s) h = (h ^ c) * 0x100000001b3ULL;
  return h;
}

std::string hex64(uint64_t v) {
  char b[17];
  std::snprintf(b, sizeof b, "%016llx", static_cast<unsigned long long>(v));
  return b;
}

bool readText(const std::string& path, std::string& out, size_t limit) {
  out.clear();
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return false;
  char buf[16384];
  for (;;) {
    ssize_t n = ::read(fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    out.append(buf, static_cast<size_t>(n));
    if (out.size() >= limit) break;
  }
  int saved = errno;
  ::close(fd);
  errno = saved;
  return true;
}

void logf(const char* fmt, ...) {
  char line[1024];
  int64_t ns = monoNs();
  int n = std::snprintf(line, sizeof line, "[%5lld.%03lld] crbench-agent: ", static_cast<long long>(ns / 1000000000LL),
                        static_cast<long long>(ns / 1000000 % 1000));
  va_list ap;
  va_start(ap, fmt);
  int m = std::vsnprintf(line + n, sizeof line - n - 1, fmt, ap);
  va_end(ap);
  size_t len = std::min(sizeof line - 2, static_cast<size_t>(n + std::max(m, 0)));
  line[len++] = '\n';
  [[maybe_unused]] ssize_t w = ::write(1, line, len);
}

}  // namespace agent

namespace {

void usage() {
  std::fprintf(stderr,
               "usage: crbench-agent [--runtime container|vm] [--no-init] [--listen ADDR]\n"
               "                     [--echo-port N] [--control-port N] [--config FILE] [--verbose]\n"
               "As PID 1 it prepares the system (mounts; in a VM also modules and network), then starts\n"
               "the programs of the scenario config and answers UDP echo and the control protocol.\n");
}

int port(const char* flag, const char* v) {
  char* end = nullptr;
  long p = v ? std::strtol(v, &end, 10) : -1;
  if (!v || *end || p < 1 || p > 65535) {
    std::fprintf(stderr, "crbench-agent: %s expects a port 1..65535\n", flag);
    std::exit(2);
  }
  return static_cast<int>(p);
}

}  // namespace

int main(int argc, char** argv) {
  agent::Options o;
  bool modeGiven = false;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    const char* next = i + 1 < argc ? argv[i + 1] : nullptr;
    if (a == "--runtime" && next) {
      std::string m = argv[++i];
      if (m == "container") o.mode = agent::Mode::Container;
      else if (m == "vm") o.mode = agent::Mode::Vm;
      else {
        std::fprintf(stderr, "crbench-agent: --runtime %s: expected container or vm\n", m.c_str());
        return 2;
      }
      modeGiven = true;
    } else if (a == "--no-init") {
      o.mode = agent::Mode::NoInit;
      modeGiven = true;
    } else if (a == "--listen" && next) {
      o.listen = argv[++i];
    } else if (a == "--echo-port") {
      o.echoPort = port("--echo-port", next), ++i;
    } else if (a == "--control-port") {
      o.controlPort = port("--control-port", next), ++i;
    } else if (a == "--config" && next) {
      o.config = argv[++i];
    } else if (a == "--verbose") {
      o.verbose = true;
    } else if (a == "--help" || a == "-h") {
      usage();
      return 0;
    } else if (a == "--") {
      continue;  // the kernel passes init arguments after "--" on its command line
    } else {
      std::fprintf(stderr, "crbench-agent: unknown argument '%s'\n", a.c_str());
      usage();
      return 2;
    }
  }
  if (!modeGiven) {
    // The kernel starts /init with no arguments: PID 1 without /proc mounted is the VM's initramfs.
    if (::getpid() == 1) o.mode = ::access("/proc/self", F_OK) == 0 ? agent::Mode::Container : agent::Mode::Vm;
  }
  if (o.mode != agent::Mode::NoInit && ::getpid() != 1)
    agent::logf("warning: running as pid %d, not as init; zombies of other parents are not ours to reap", ::getpid());
  setvbuf(stdout, nullptr, _IOLBF, 0);
  if (o.mode == agent::Mode::Container) agent::setupContainer();
  if (o.mode == agent::Mode::Vm) agent::setupVm();
  return agent::runAgent(o);
}
