#include "core/proc.hpp"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <thread>

#include "core/clock.hpp"
#include "core/fsutil.hpp"

extern char** environ;

namespace crb {

std::string RunResult::describe() const {
  if (timedOut) return fmt::format("timed out after {:.1f} s", wallSeconds);
  std::string tail = err.empty() ? out : err;
  while (!tail.empty() && (tail.back() == '\n' || tail.back() == ' ')) tail.pop_back();
  auto pos = tail.rfind('\n');
  if (pos != std::string::npos) tail = tail.substr(pos + 1);
  if (termSignal) return fmt::format("killed by signal {}{}{}", termSignal, tail.empty() ? "" : ": ", tail);
  return fmt::format("exit {}{}{}", exitCode, tail.empty() ? "" : ": ", tail);
}

std::string joinArgs(const std::vector<std::string>& argv) {
  std::string s;
  for (auto& a : argv) {
    if (!s.empty()) s += ' ';
    bool quote = a.empty() || a.find_first_of(" \t'\"$") != std::string::npos;
    s += quote ? "'" + a + "'" : a;
  }
  return s;
}

namespace {
struct ChildSetup {
  std::vector<std::string> envStore;
  std::vector<char*> envp;
  std::vector<char*> argvp;
};

void prepare(ChildSetup& cs, const std::vector<std::string>& argv, const RunOptions& opts) {
  std::map<std::string, std::string> env;
  for (char** e = environ; *e; ++e) {
    std::string kv(*e);
    auto eq = kv.find('=');
    if (eq != std::string::npos) env[kv.substr(0, eq)] = kv.substr(eq + 1);
  }
  for (auto& [k, v] : opts.extraEnv) env[k] = v;
  for (auto& [k, v] : env) cs.envStore.push_back(k + "=" + v);
  for (auto& s : cs.envStore) cs.envp.push_back(s.data());
  cs.envp.push_back(nullptr);
  for (auto& a : argv) cs.argvp.push_back(const_cast<char*>(a.c_str()));
  cs.argvp.push_back(nullptr);
}

}  // namespace

Result<RunResult> runCommand(const std::vector<std::string>& argv, const RunOptions& opts) {
  if (argv.empty()) return makeError("runCommand: empty command");
  int outp[2] = {-1, -1}, errp[2] = {-1, -1}, inp[2] = {-1, -1}, execp[2] = {-1, -1};
  if (::pipe2(outp, O_CLOEXEC) || ::pipe2(errp, O_CLOEXEC) || ::pipe2(inp, O_CLOEXEC) ||
      ::pipe2(execp, O_CLOEXEC))
    return sysError("pipe", errno);
  ChildSetup cs;
  prepare(cs, argv, opts);
  auto start = Clock::now();
  pid_t pid = ::fork();
  if (pid < 0) return sysError("fork for " + argv[0], errno);
  if (pid == 0) {
    ::dup2(inp[0], 0);
    int devnull = ::open("/dev/null", O_WRONLY);
    ::dup2(opts.captureStdout ? outp[1] : devnull, 1);
    ::dup2(opts.captureStderr ? errp[1] : devnull, 2);
    // Report exec failure through execp: it is CLOEXEC so a successful exec closes it.
    ::setpgid(0, 0);
    for (int fd : opts.inheritFds) {
      int fl = ::fcntl(fd, F_GETFD);
      if (fl >= 0) ::fcntl(fd, F_SETFD, fl & ~FD_CLOEXEC);
    }
    if (!opts.cwd.empty() && ::chdir(opts.cwd.c_str()) != 0) _exit(126);
    ::signal(SIGPIPE, SIG_DFL);
    ::execvpe(cs.argvp[0], cs.argvp.data(), cs.envp.data());
    int e = errno;
    (void)!::write(execp[1], &e, sizeof e);
    _exit(127);
  }
  ::close(outp[1]);
  ::close(errp[1]);
  ::close(inp[0]);
  ::close(execp[1]);
  int execErr = 0;
  if (::read(execp[0], &execErr, sizeof execErr) == sizeof execErr) {
    ::close(execp[0]);
    ::close(outp[0]);
    ::close(errp[0]);
    ::close(inp[1]);
    ::waitpid(pid, nullptr, 0);
    return makeError(fmt::format("cannot run {}: {}", argv[0], std::strerror(execErr)),
                     execErr == ENOENT ? "is it installed? run scripts/setup.sh" : "");
  }
  ::close(execp[0]);
  std::thread writer;
  if (opts.stdinData) {
    std::string data = *opts.stdinData;
    int wfd = inp[1];
    writer = std::thread([data, wfd] {
      size_t off = 0;
      while (off < data.size()) {
        ssize_t n = ::write(wfd, data.data() + off, data.size() - off);
        if (n <= 0) break;
        off += static_cast<size_t>(n);
      }
      ::close(wfd);
    });
  } else {
    ::close(inp[1]);
  }
  RunResult rr;
  auto deadline = start + opts.timeout;
  pollfd pfds[2] = {{outp[0], POLLIN, 0}, {errp[0], POLLIN, 0}};
  int open = 2;
  bool killed = false;
  char buf[65536];
  while (open > 0) {
    auto now = Clock::now();
    if (!killed && now >= deadline) {
      ::kill(-pid, SIGKILL);
      ::kill(pid, SIGKILL);
      killed = true;
      rr.timedOut = true;
    }
    int ms = killed ? 200 : static_cast<int>(std::chrono::duration_cast<std::chrono::milliseconds>(deadline - now).count()) + 1;
    int n = ::poll(pfds, 2, ms);
    if (n < 0 && errno != EINTR) break;
    if (n == 0 && killed) break;  // grandchildren holding pipes after kill
    for (int i = 0; i < 2; i++) {
      if (pfds[i].fd < 0 || !(pfds[i].revents & (POLLIN | POLLHUP | POLLERR))) continue;
      ssize_t r = ::read(pfds[i].fd, buf, sizeof buf);
      if (r <= 0) {
        ::close(pfds[i].fd);
        pfds[i].fd = -1;
        open--;
      } else {
        (i == 0 ? rr.out : rr.err).append(buf, static_cast<size_t>(r));
      }
    }
  }
  for (auto& p : pfds)
    if (p.fd >= 0) ::close(p.fd);
  int status = 0;
  struct rusage ru {};
  for (;;) {
    pid_t w = ::wait4(pid, &status, killed ? 0 : WNOHANG, &ru);
    if (w == pid) break;
    if (w < 0 && errno != EINTR) break;
    if (w == 0) {
      if (Clock::now() >= deadline && !killed) {
        ::kill(-pid, SIGKILL);
        ::kill(pid, SIGKILL);
        killed = true;
        rr.timedOut = true;
      } else {
        std::this_thread::sleep_for(std::chrono::milliseconds(2));
      }
    }
  }
  if (writer.joinable()) writer.join();
  rr.wallSeconds = secondsSince(start);
  rr.cpuSeconds = static_cast<double>(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
                  static_cast<double>(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
  rr.peakRssKiB = ru.ru_maxrss;
  if (WIFEXITED(status)) rr.exitCode = WEXITSTATUS(status);
  if (WIFSIGNALED(status)) rr.termSignal = WTERMSIG(status);
  return rr;
}

Result<pid_t> spawnBackground(const std::vector<std::string>& argv, const std::string& logPath,
                              const RunOptions& opts) {
  if (argv.empty()) return makeError("spawnBackground: empty command");
  ChildSetup cs;
  prepare(cs, argv, opts);
  int execp[2];
  if (::pipe2(execp, O_CLOEXEC)) return sysError("pipe", errno);
  pid_t pid = ::fork();
  if (pid < 0) return sysError("fork for " + argv[0], errno);
  if (pid == 0) {
    int in = ::open("/dev/null", O_RDONLY);
    int out = logPath.empty() ? ::open("/dev/null", O_WRONLY)
                              : ::open(logPath.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0600);
    ::dup2(in, 0);
    ::dup2(out, 1);
    ::dup2(out, 2);
    ::setpgid(0, 0);
    for (int fd : opts.inheritFds) {
      int fl = ::fcntl(fd, F_GETFD);
      if (fl >= 0) ::fcntl(fd, F_SETFD, fl & ~FD_CLOEXEC);
    }
    if (!opts.cwd.empty() && ::chdir(opts.cwd.c_str()) != 0) _exit(126);
    ::signal(SIGPIPE, SIG_DFL);
    ::execvpe(cs.argvp[0], cs.argvp.data(), cs.envp.data());
    int e = errno;
    (void)!::write(execp[1], &e, sizeof e);
    _exit(127);
  }
  ::close(execp[1]);
  int execErr = 0;
  bool failed = ::read(execp[0], &execErr, sizeof execErr) == sizeof execErr;
  ::close(execp[0]);
  if (failed) {
    ::waitpid(pid, nullptr, 0);
    return makeError(fmt::format("cannot run {}: {}", argv[0], std::strerror(execErr)),
                     execErr == ENOENT ? "is it installed? run scripts/setup.sh" : "");
  }
  return pid;
}

int waitOrKill(pid_t pid, std::chrono::milliseconds timeout) {
  auto deadline = Clock::now() + timeout;
  int status = 0;
  for (;;) {
    pid_t w = ::waitpid(pid, &status, WNOHANG);
    if (w == pid) return status;
    if (w < 0) return -1;
    if (Clock::now() >= deadline) {
      ::kill(pid, SIGKILL);
      ::waitpid(pid, &status, 0);
      return status;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
}

bool processAlive(pid_t pid) { return pid > 0 && (::kill(pid, 0) == 0 || errno == EPERM); }

}  // namespace crb
