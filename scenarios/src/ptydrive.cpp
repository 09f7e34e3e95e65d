// crb-ptydrive: runs an editor (busybox vi) on a pseudo-terminal and types into it like a person:
// a new line every interval, a ":w" every few lines. The pty pair, the editor's terminal state and
// its unsaved buffer all have to survive a checkpoint for the saved file to keep growing as
// "line 1", "line 2", ... with nothing lost or repeated.
//   crb-ptydrive run [--file F] [--interval-ms MS] [--state DIR] -- EDITOR ARGS...
//   crb-ptydrive check [--file F] [--state DIR]   exit 0: editor alive, file lines in sequence
//   crb-ptydrive progress [--state DIR]           prints the number of lines typed
#include <poll.h>
#include <pty.h>
#include <sys/ioctl.h>
#include <sys/wait.h>

#include <vector>

#include "common.hpp"

namespace {

bool writeAll(int fd, const std::string& s) {
  size_t off = 0;
  while (off < s.size()) {
    ssize_t n = ::write(fd, s.data() + off, s.size() - off);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    off += size_t(n);
  }
  return true;
}

// Reads whatever the editor printed for up to `seconds`; returns the bytes seen.
size_t drain(int fd, double seconds) {
  size_t seen = 0;
  double end = crbw::nowSeconds() + seconds;
  for (;;) {
    double left = end - crbw::nowSeconds();
    if (left <= 0) break;
    pollfd p{fd, POLLIN, 0};
    int r = poll(&p, 1, int(left * 1000) + 1);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) break;
    char buf[4096];
    ssize_t n = ::read(fd, buf, sizeof buf);
    if (n <= 0) break;
    seen += size_t(n);
  }
  return seen;
}

int run(int argc, char** argv) {
  std::string file = crbw::opt(argc, argv, "--file", "/tmp/crb-edit.txt");
  double interval =
      std::strtod(crbw::opt(argc, argv, "--interval-ms", "200").c_str(), nullptr) / 1000.0;
  std::string state = crbw::opt(argc, argv, "--state", "/tmp/crb-ptydrive");
  std::vector<char*> editor;
  for (int i = 1; i < argc; ++i)
    if (std::string(argv[i]) == "--") {
      for (int j = i + 1; j < argc; ++j) editor.push_back(argv[j]);
      break;
    }
  if (editor.empty()) crbw::die("crb-ptydrive: give the editor after --, e.g. -- busybox vi");
  std::string fileArg = file;
  editor.push_back(fileArg.data());
  editor.push_back(nullptr);
  ::mkdir(state.c_str(), 0755);
  ::unlink(file.c_str());

  winsize ws{24, 80, 0, 0};
  int master = -1;
  pid_t child = forkpty(&master, nullptr, nullptr, &ws);
  if (child < 0) crbw::die(std::string("crb-ptydrive: forkpty: ") + std::strerror(errno));
  if (child == 0) {
    setenv("TERM", "vt100", 1);
    execvp(editor[0], editor.data());
    _exit(127);
  }
  crbw::writePid(state + "/pid");
  auto status = [&](int typed, int saved, const std::string& problem) {
    crbw::writeStatus(state + "/status",
                      "editor_pid=" + std::to_string(child) + "\ntyped=" + std::to_string(typed) +
                          "\nsaved=" + std::to_string(saved) + "\nproblem=" + problem + "\n");
  };
  drain(master, 1.0);  // let the editor draw its first screen
  int saved = 0;
  std::string problem;
  for (int line = 1;; ++line) {
    // o: open a line below, type, ESC back to command mode.
    // ESC followed at once by more keys reads as a terminal escape sequence to vi: pause after it.
    if (!writeAll(master, "oline " + std::to_string(line) + "\x1b"))
      problem = "write to pty failed";
    size_t echoed = drain(master, 0.05);
    if (line % 5 == 0) {
      writeAll(master, ":w\r");
      saved = line;
    }
    echoed += drain(master, interval);
    if (echoed == 0 && problem.empty())
      problem = "no echo from the editor after line " + std::to_string(line);
    int st;
    if (waitpid(child, &st, WNOHANG) == child) problem = "editor exited";
    status(line, saved, problem);
    if (!problem.empty()) {
      for (;;) crbw::sleepSeconds(1);
    }
  }
}

int check(int argc, char** argv) {
  std::string file = crbw::opt(argc, argv, "--file", "/tmp/crb-edit.txt");
  std::string st =
      crbw::readText(crbw::opt(argc, argv, "--state", "/tmp/crb-ptydrive") + "/status");
  if (st.empty()) crbw::die("crb-ptydrive check: no status (is the driver running?)");
  if (!crbw::field(st, "problem").empty()) {
    std::printf("FAIL: %s\n", crbw::field(st, "problem").c_str());
    return 1;
  }
  pid_t editor = std::atoi(crbw::field(st, "editor_pid").c_str());
  if (editor <= 0 || kill(editor, 0) != 0) {
    std::printf("FAIL: editor pid %d is not running\n", editor);
    return 1;
  }
  std::string text = crbw::readText(file);
  std::istringstream in(text);
  std::string l;
  int expect = 1;
  while (std::getline(in, l)) {
    if (l.empty()) continue;  // the empty first line of a new buffer
    if (l != "line " + std::to_string(expect)) {
      std::printf("FAIL: saved line %d is '%s'\n", expect, l.c_str());
      return 1;
    }
    ++expect;
  }
  std::printf("editor alive, %d lines saved in sequence\n", expect - 1);
  return 0;
}

// Lines typed (and echoed) so far: grows every interval, unlike the saved lines (every fifth).
int progress(int argc, char** argv) {
  return crbw::printStatusField(argc, argv, "/tmp/crb-ptydrive", "typed");
}

}  // namespace

int main(int argc, char** argv) {
  return crbw::dispatch(
      argc, argv, {{"run", run}, {"check", check}, {"progress", progress}},
      "usage: crb-ptydrive run|check|progress [--file F] [--interval-ms MS] -- EDITOR...\n");
}
