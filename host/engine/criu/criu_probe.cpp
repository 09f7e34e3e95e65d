#include "engine/criu/criu_probe.hpp"

#include <fcntl.h>
#include <signal.h>
#include <stddef.h>
#include <sys/ptrace.h>
#include <sys/stat.h>
#include <sys/user.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <thread>

#include "core/clock.hpp"
#include "core/fsutil.hpp"
#include "core/log.hpp"
#include "core/paths.hpp"
#include "core/proc.hpp"
#include "engine/criu/criu_util.hpp"

namespace crb::criu {

namespace fs = std::filesystem;
using namespace std::chrono_literals;

Result<CriuBinary> findCriu(const Json& engineOptions) {
  auto check = [](const std::string& p, const std::string& src) -> Result<CriuBinary> {
    std::error_code ec;
    fs::path abs = fs::absolute(p, ec);
    if (ec || ::access(abs.c_str(), X_OK) != 0)
      return makeError(fmt::format("criu binary '{}' (from {}) is not an executable file", p, src),
                       "give the path of a criu >= 4.2, or run scripts/setup.d/criu.sh");
    return CriuBinary{abs.string(), src};
  };
  if (engineOptions.is_object() && engineOptions.contains("criu")) {
    const auto& v = engineOptions["criu"];
    if (!v.is_string() || v.get<std::string>().empty())
      return makeError("--engine-opt criu=PATH needs a path", "e.g. --engine-opt criu=/usr/sbin/criu");
    return check(v.get<std::string>(), "--engine-opt criu");
  }
  if (const char* e = std::getenv("CRBENCH_CRIU"); e && *e) return check(e, "CRBENCH_CRIU");
  fs::path local = depsDir() / "criu" / "bin" / "criu";
  if (::access(local.c_str(), X_OK) == 0) return CriuBinary{local.string(), ".deps/criu"};
  for (const char* d : {"/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"}) {
    fs::path p = fs::path(d) / "criu";
    if (::access(p.c_str(), X_OK) == 0) return CriuBinary{p.string(), "system"};
  }
  return makeError("no criu found (not in .deps/criu, not installed)",
                   "run scripts/setup.d/criu.sh (unpacks criu >= 4.2 into .deps/criu), or set CRBENCH_CRIU");
}

Json ProbeResult::toJson() const {
  return Json{{"binary", binary},
              {"version", version},
              {"usable", usable},
              {"reason", reason},
              {"lazy_pages", lazyPages},
              {"lazy_reason", lazyReason},
              {"dirty_tracking", dirtyTracking},
              {"dirty_reason", dirtyReason},
              {"check_ms", checkMs},
              {"canary_dump_ms", canaryDumpMs},
              {"canary_restore_ms", canaryRestoreMs},
              {"canary_released", canaryReleased}};
}

ProbeResult ProbeResult::fromJson(const Json& j) {
  ProbeResult r;
  r.binary = j.value("binary", "");
  r.version = j.value("version", "");
  r.usable = j.value("usable", false);
  r.reason = j.value("reason", "");
  r.lazyPages = j.value("lazy_pages", false);
  r.lazyReason = j.value("lazy_reason", "");
  r.dirtyTracking = j.value("dirty_tracking", false);
  r.dirtyReason = j.value("dirty_reason", "");
  r.checkMs = j.value("check_ms", 0.0);
  r.canaryDumpMs = j.value("canary_dump_ms", 0.0);
  r.canaryRestoreMs = j.value("canary_restore_ms", 0.0);
  r.canaryReleased = j.value("canary_released", true);
  return r;
}

TraceState traceState(pid_t pid) {
  TraceState ts;
  std::error_code ec;
  fs::path taskDir = fmt::format("/proc/{}/task", pid);
  for (auto& t : fs::directory_iterator(taskDir, ec)) {
    std::ifstream in(t.path() / "status");
    std::string line;
    while (std::getline(in, line)) {
      ts.exists = true;
      if (line.rfind("State:", 0) == 0) {
        auto s = line.find_first_not_of(" \t", 6);
        if (s != std::string::npos && (line[s] == 'T' || line[s] == 't')) ts.stopped = true;
        if (s != std::string::npos && (line[s] == 'Z' || line[s] == 'X')) ts.exists = false;
      } else if (line.rfind("TracerPid:", 0) == 0) {
        pid_t tp = std::atoi(line.c_str() + 10);
        if (tp && !ts.tracer) ts.tracer = tp;
      }
    }
  }
  return ts;
}

std::string releaseProcess(pid_t pid, std::chrono::milliseconds timeout) {
  auto deadline = Clock::now() + timeout;
  for (;;) {
    TraceState ts = traceState(pid);
    if (!ts.exists) return {};
    if (!ts.tracer) {
      // A seize leaves no group stop behind, but a killed CRIU may have stopped the tree itself.
      if (ts.stopped) ::kill(pid, SIGCONT);
      std::this_thread::sleep_for(5ms);
      ts = traceState(pid);
      if (!ts.exists || (!ts.tracer && !ts.stopped)) return {};
    }
    if (Clock::now() >= deadline)
      return ts.tracer ? fmt::format("pid {} still traced by pid {}", pid, ts.tracer)
                       : fmt::format("pid {} still stopped after SIGCONT", pid);
    std::this_thread::sleep_for(10ms);
  }
}

namespace {

__attribute__((noinline)) void hwbpTarget() { asm volatile("" ::: "memory"); }

std::string versionOf(const std::string& bin) {
  auto r = runCommand({bin, "--version"}, RunOptions{.timeout = 10s});
  if (!r || !r->succeeded()) return {};
  std::istringstream in(r->out);
  std::string line;
  while (std::getline(in, line))
    if (line.rfind("Version:", 0) == 0) {
      auto v = line.substr(8);
      v.erase(0, v.find_first_not_of(" \t"));
      return v.substr(0, v.find_first_of(" \t-"));
    }
  return {};
}

// "Error (criu/vdso.c:381): vdso: Unexpected rt vDSO area bounds" -> the text after the location.
std::string criuErrors(const std::string& text, size_t maxLines = 3) {
  std::istringstream in(text);
  std::string line, out;
  size_t n = 0;
  while (std::getline(in, line)) {
    auto e = line.find("Error (");
    if (e == std::string::npos) continue;
    // rlimit failure is printed on every run inside containers and does not matter.
    if (line.find("RLIMIT_NOFILE") != std::string::npos) continue;
    auto close = line.find("): ", e);
    std::string msg = close == std::string::npos ? line.substr(e) : line.substr(close + 3);
    if (n++ < maxLines) out += (out.empty() ? "" : "; ") + msg;
  }
  return out;
}

std::string lastLine(const std::string& text) {
  std::string t = text;
  while (!t.empty() && (t.back() == '\n' || t.back() == ' ')) t.pop_back();
  auto p = t.rfind('\n');
  return p == std::string::npos ? t : t.substr(p + 1);
}

std::string featureCheck(const std::string& bin, const char* feature, bool& ok) {
  auto r = runCommand({bin, "check", "--feature", feature}, RunOptions{.timeout = 30s});
  ok = r && r->succeeded();
  if (!r) return r.error().text();
  std::string all = r->out + r->err;
  std::istringstream in(all);
  std::string line, out;
  while (std::getline(in, line)) {
    if (line.find("RLIMIT_NOFILE") != std::string::npos || line.empty()) continue;
    auto close = line.find("): ");
    if ((line.rfind("Warn", 0) == 0 || line.rfind("Error", 0) == 0) && close != std::string::npos)
      line = line.substr(close + 3);
    out += (out.empty() ? "" : "; ") + line;
  }
  return out;
}

// A tiny process tree of one: session leader, no tty, fds on /dev/null, spinning in user space
// (where a parasite must be stopped, unlike a task asleep in a syscall). Our child, so we reap it.
pid_t startCanary() {
  const char* sl = ::access("/bin/sh", X_OK) == 0 ? "/bin/sh" : nullptr;
  if (!sl) return -1;
  pid_t pid = ::fork();
  if (pid != 0) return pid;
  ::setsid();
  int fd = ::open("/dev/null", O_RDWR);
  ::dup2(fd, 0);
  ::dup2(fd, 1);
  ::dup2(fd, 2);
  ::close_range(3, ~0U, 0);
  // argv[0] names it in ps; the loop ends by itself if nobody kills it.
  ::execl(sl, "crbench-criu-canary", "-c", "i=0; while [ $i -lt 2000000000 ]; do i=$((i+1)); done",
          static_cast<char*>(nullptr));
  _exit(127);
}

void reap(pid_t pid, std::chrono::milliseconds timeout) {
  auto deadline = Clock::now() + timeout;
  while (Clock::now() < deadline) {
    pid_t w = ::waitpid(pid, nullptr, WNOHANG);
    if (w == pid || (w < 0 && errno == ECHILD)) return;
    std::this_thread::sleep_for(2ms);
  }
}

void killAndReapCanary(pid_t pid) {
  releaseProcess(pid, 1s);
  ::kill(pid, SIGKILL);
  reap(pid, 3s);
}

fs::path cachePath(const CriuBinary& bin, std::string& key) {
  struct stat st {};
  ::stat(bin.path.c_str(), &st);
  struct utsname u {};
  ::uname(&u);
  // The wrapper of the unpacked prefix is rewritten whenever set-up rebuilds it, so its mtime
  // changes with the binary behind it.
  key = fmt::format("canary-v2|{}|{}.{}|{}|{}", bin.path, st.st_mtim.tv_sec, st.st_mtim.tv_nsec, st.st_size,
                    u.release);
  return cacheDir() / "criu-probe" / (contentHash(key) + ".json");
}

void runCanary(const CriuBinary& bin, const ProbeOptions& opts, ProbeResult& r) {
  char tmpl[] = "/tmp/crbench-criu-probe-XXXXXX";
  if (!::mkdtemp(tmpl)) {
    r.reason = "cannot create a temporary directory for the canary: " + std::string(std::strerror(errno));
    return;
  }
  fs::path dir = tmpl;
  pid_t canary = startCanary();
  if (canary < 0) {
    r.reason = "cannot start the canary process (no /bin/sh, or fork failed)";
    fs::remove_all(dir);
    return;
  }
  std::this_thread::sleep_for(20ms);  // let the shell reach its loop
  auto dump = runCommand({bin.path, "dump", "-t", std::to_string(canary), "-D", dir.string(), "-o",
                          "dump.log", "-v4"},
                         RunOptions{.timeout = opts.dumpTimeout});
  if (!dump) {
    r.reason = dump.error().text();
    killAndReapCanary(canary);
    fs::remove_all(dir);
    return;
  }
  r.canaryDumpMs = dump->wallSeconds * 1e3;
  std::string log = readFile(dir / "dump.log").valueOr("");
  if (dump->timedOut) {
    std::string left = releaseProcess(canary);
    r.canaryReleased = left.empty();
    std::string hw = hardwareBreakpointSelfTest();
    r.reason = fmt::format("criu {} hung in dump of a canary process (killed after {:.0f} s", r.version,
                           dump->wallSeconds);
    std::string ll = lastLine(log);
    if (!ll.empty()) r.reason += "; last log line: " + ll;
    r.reason += ")";
    if (hw == "do not fire")
      r.reason += ": hardware breakpoints do not fire on this host (ptrace self-test)";
    if (!versionAtLeast(r.version, 4, 2))
      r.reason += "; criu >= 4.2 needed (it falls back to syscall tracing): run scripts/setup.d/criu.sh";
    if (!left.empty()) r.reason += "; canary NOT released: " + left;
    killAndReapCanary(canary);
    fs::remove_all(dir);
    return;
  }
  if (!dump->succeeded()) {
    std::string errs = criuErrors(log);
    r.reason = fmt::format("criu {} failed to dump a canary process ({}){}", r.version, dump->describe(),
                           errs.empty() ? "" : ": " + errs);
    std::string left = releaseProcess(canary);
    r.canaryReleased = left.empty();
    if (!left.empty()) r.reason += "; canary NOT released: " + left;
    killAndReapCanary(canary);
    fs::remove_all(dir);
    return;
  }
  // Stop-and-copy: CRIU killed the canary; its pid must be free again for the restore.
  reap(canary, 3s);
  fs::path pidfile = dir / "restored.pid";
  auto rest = runCommand({bin.path, "restore", "-D", dir.string(), "-o", "restore.log", "-v4", "-d",
                          "--pidfile", pidfile.string()},
                         RunOptions{.timeout = opts.restoreTimeout});
  pid_t restored = std::atoi(readFile(pidfile).valueOr("0").c_str());
  if (!rest || !rest->succeeded()) {
    std::string rlog = readFile(dir / "restore.log").valueOr("");
    std::string errs = criuErrors(rlog);
    r.reason = fmt::format("criu {} failed to restore a canary process ({}){}", r.version,
                           rest ? rest->describe() : rest.error().text(), errs.empty() ? "" : ": " + errs);
  } else {
    r.canaryRestoreMs = rest->wallSeconds * 1e3;
    if (restored != canary)
      r.reason = fmt::format("criu {} restored the canary as pid {} instead of {}", r.version, restored, canary);
    else if (!processAlive(restored))
      r.reason = fmt::format("criu {} reported a restore but the canary (pid {}) is not running", r.version, restored);
    else
      r.usable = true;
  }
  // Whatever was restored is no longer our child (it was CRIU's): kill it by pid, checking it is
  // our canary first.
  for (pid_t p : {restored, canary}) {
    if (p <= 0) continue;
    std::string cmd = readFile(fmt::format("/proc/{}/cmdline", p)).valueOr("");
    if (cmd.rfind("crbench-criu-canary", 0) == 0) {
      std::string left = releaseProcess(p);
      if (!left.empty()) r.canaryReleased = false;
      ::kill(p, SIGKILL);
    }
  }
  fs::remove_all(dir);
}

}  // namespace

std::string hardwareBreakpointSelfTest() {
  pid_t c = ::fork();
  if (c < 0) return "rejected: fork failed";
  if (c == 0) {
    ::ptrace(PTRACE_TRACEME, 0, nullptr, nullptr);
    ::raise(SIGSTOP);
    hwbpTarget();
    _exit(0);
  }
  int st = 0;
  if (::waitpid(c, &st, 0) != c || !WIFSTOPPED(st)) {
    ::kill(c, SIGKILL);
    ::waitpid(c, nullptr, 0);
    return "rejected: child did not stop";
  }
  std::string verdict;
  errno = 0;
  auto addr = reinterpret_cast<void*>(&hwbpTarget);
  // DR7: local enable of DR0 (bit 0), condition 00 = instruction execution, length 00.
  if (::ptrace(PTRACE_POKEUSER, c, offsetof(struct user, u_debugreg[0]), addr) != 0 ||
      ::ptrace(PTRACE_POKEUSER, c, offsetof(struct user, u_debugreg[7]), reinterpret_cast<void*>(1)) != 0) {
    verdict = std::string("rejected: ") + std::strerror(errno);
    ::kill(c, SIGKILL);
    ::waitpid(c, nullptr, 0);
    return verdict;
  }
  ::ptrace(PTRACE_CONT, c, nullptr, nullptr);
  auto deadline = Clock::now() + 3s;
  for (;;) {
    pid_t w = ::waitpid(c, &st, WNOHANG);
    if (w == c) {
      if (WIFSTOPPED(st) && WSTOPSIG(st) == SIGTRAP) verdict = "fire";
      else if (WIFEXITED(st)) verdict = "do not fire";
      else verdict = "rejected: unexpected stop";
      break;
    }
    if (Clock::now() >= deadline) {
      verdict = "rejected: child neither trapped nor exited";
      break;
    }
    std::this_thread::sleep_for(1ms);
  }
  ::kill(c, SIGKILL);
  ::waitpid(c, nullptr, 0);
  return verdict;
}

ProbeResult probeCriu(const CriuBinary& bin, const ProbeOptions& opts) {
  std::string key;
  fs::path cache = cachePath(bin, key);
  if (opts.useCache) {
    auto text = readFile(cache);
    if (text) {
      try {
        Json j = Json::parse(*text);
        if (j.value("key", "") == key) {
          ProbeResult r = ProbeResult::fromJson(j["result"]);
          r.fromCache = true;
          return r;
        }
      } catch (const std::exception&) {
        // a broken cache entry is simply redone
      }
    }
  }
  ProbeResult r;
  r.binary = bin.path;
  r.version = versionOf(bin.path);
  if (r.version.empty()) {
    auto v = runCommand({bin.path, "--version"}, RunOptions{.timeout = 10s});
    r.reason = fmt::format("'{} --version' did not print a version ({})", bin.path,
                           v ? v->describe() : v.error().text());
    return r;  // not cached: nothing was learned about a binary that does not run
  }
  auto t0 = Clock::now();
  auto check = runCommand({bin.path, "check"}, RunOptions{.timeout = 30s});
  r.checkMs = msSince(t0);
  if (!check || !check->succeeded()) {
    std::string errs = check ? criuErrors(check->out + check->err) : check.error().text();
    r.reason = fmt::format("criu {}: 'criu check' failed ({}){}", r.version,
                           check ? check->describe() : "", errs.empty() ? "" : ": " + errs);
    if (errs.find("vDSO") != std::string::npos || errs.find("vdso") != std::string::npos)
      r.reason += " (this kernel's vDSO layout, e.g. [vvar_vclock], is newer than this CRIU)";
    if (!versionAtLeast(r.version, 4, 2))
      r.reason += "; criu >= 4.2 needed: run scripts/setup.d/criu.sh";
  } else {
    r.lazyReason = featureCheck(bin.path, "uffd-noncoop", r.lazyPages);
    r.dirtyReason = featureCheck(bin.path, "mem_dirty_track", r.dirtyTracking);
    runCanary(bin, opts, r);
  }
  Json entry{{"key", key}, {"result", r.toJson()}};
  if (auto s = makeDirs(cache.parent_path()); s.ok())
    (void)writeFileAtomic(cache, entry.dump(2) + "\n");
  return r;
}

}  // namespace crb::criu
