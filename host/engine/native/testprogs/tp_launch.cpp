// Runs several self-checking test programs as one process tree (a container's workload is one
// tree under its agent), and checks them from outside, for scenarios/native-testprogs.toml.
//
//   tp_launch run DIR PROG...   start each PROG (found next to tp_launch) with go file DIR/PROG.go
//                               and its output in DIR/PROG.log; print READY once all are; reap
//                               them and stay (the tree's root must outlive its children)
//   tp_launch check DIR PROG    a scenario check, run once before the checkpoint and once after
//                               the restore: the first run only checks PROG is READY and notes
//                               that it ran; the second creates PROG's go file and waits for its
//                               verdict: exit 0 on PASS, 1 on FAIL (its output is printed)
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

namespace {

std::string slurp(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

bool exists(const std::string& p) {
  struct stat st;
  return ::stat(p.c_str(), &st) == 0;
}

void sleepMs(int ms) {
  timespec t{ms / 1000, (ms % 1000) * 1000000L};
  nanosleep(&t, nullptr);
}

std::string selfDir(const char* argv0) {
  char buf[4096] = {};
  ssize_t n = ::readlink("/proc/self/exe", buf, sizeof buf - 1);
  std::string p = n > 0 ? std::string(buf, size_t(n)) : std::string(argv0);
  auto slash = p.rfind('/');
  return slash == std::string::npos ? "." : p.substr(0, slash);
}

int run(const std::string& dir, const std::vector<std::string>& progs, const std::string& bindir) {
  ::mkdir(dir.c_str(), 0700);
  for (auto& name : progs) {
    std::string log = dir + "/" + name + ".log", go = dir + "/" + name + ".go";
    ::unlink(go.c_str());
    pid_t p = ::fork();
    if (p == 0) {
      int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      int in = ::open("/dev/null", O_RDONLY);
      if (fd < 0 || in < 0) _exit(127);
      ::dup2(in, 0);
      ::dup2(fd, 1);
      ::dup2(fd, 2);
      if (fd > 2) ::close(fd);
      if (in > 2) ::close(in);
      std::string path = bindir + "/" + name;
      ::execl(path.c_str(), name.c_str(), go.c_str(), static_cast<char*>(nullptr));
      std::fprintf(stderr, "exec %s: %s\n", path.c_str(), std::strerror(errno));
      _exit(127);
    }
    if (p < 0) {
      std::printf("fork for %s: %s\n", name.c_str(), std::strerror(errno));
      return 1;
    }
  }
  for (auto& name : progs) {
    std::string log = dir + "/" + name + ".log";
    for (int i = 0; slurp(log).find("READY") == std::string::npos; i++) {
      if (i > 3000) {
        std::printf("%s never became READY: %s\n", name.c_str(), slurp(log).c_str());
        return 1;
      }
      sleepMs(10);
    }
  }
  std::printf("READY %zu programs in %s\n", progs.size(), dir.c_str());
  std::fflush(stdout);
  for (;;) {
    int st = 0;
    pid_t p = ::waitpid(-1, &st, 0);
    if (p < 0 && errno == ECHILD) break;
  }
  for (;;) ::pause();
}

int check(const std::string& dir, const std::string& name) {
  std::string log = dir + "/" + name + ".log", armed = dir + "/" + name + ".checked";
  if (!exists(armed)) {
    std::string out = slurp(log);
    for (int i = 0; i < 3000 && out.find("READY") == std::string::npos; i++) {
      sleepMs(10);
      out = slurp(log);
    }
    int fd = ::open(armed.c_str(), O_WRONLY | O_CREAT, 0644);
    if (fd >= 0) ::close(fd);
    bool ready = out.find("READY") != std::string::npos;
    std::printf("%s %s (before the checkpoint)\n", name.c_str(), ready ? "ready" : "NOT ready");
    return ready ? 0 : 1;
  }
  std::string go = dir + "/" + name + ".go";
  int fd = ::open(go.c_str(), O_WRONLY | O_CREAT, 0644);
  if (fd >= 0) ::close(fd);
  for (int i = 0; i < 6000; i++) {  // up to 60 s: the program checks its whole state
    std::string out = slurp(log);
    if (out.find("PASS") != std::string::npos || out.find("FAIL") != std::string::npos) {
      std::fputs(out.c_str(), stdout);
      return out.find("FAIL") == std::string::npos ? 0 : 1;
    }
    sleepMs(10);
  }
  std::printf("%s gave no verdict within 60 s: %s\n", name.c_str(), slurp(log).c_str());
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  setvbuf(stdout, nullptr, _IONBF, 0);
  if (argc >= 4 && std::strcmp(argv[1], "run") == 0)
    return run(argv[2], std::vector<std::string>(argv + 3, argv + argc), selfDir(argv[0]));
  if (argc == 4 && std::strcmp(argv[1], "check") == 0) return check(argv[2], argv[3]);
  std::fprintf(stderr, "usage: %s run DIR PROG... | check DIR PROG\n", argv[0]);
  return 2;
}
