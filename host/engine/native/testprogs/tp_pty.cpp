// A pty whose master and slave are both in the tree: the parent holds the master; a child is the
// session leader with the slave as its controlling terminal and hands the foreground to a
// grandchild in its own process group, which sets raw-ish termios and a window size. After
// restore: the same pty number, and the grandchild (still the foreground) reads a key typed into
// the master, checks termios, window size, session and foreground group, and answers through it.
#include <fcntl.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/wait.h>
#include <termios.h>

#include <cstring>
#include <string>

#include "tp.hpp"

static std::string readLine(int fd) {
  std::string s;
  char ch;
  while (read(fd, &ch, 1) == 1) {
    if (ch == '\n') break;
    if (ch != '\r') s += ch;
  }
  return s;
}

int main(int argc, char** argv) {
  tp::init(argc, argv);
  int m = posix_openpt(O_RDWR | O_NOCTTY);
  grantpt(m);
  unlockpt(m);
  std::string name = ptsname(m);
  pid_t leader = fork();
  if (leader == 0) {
    setsid();
    int s = open(name.c_str(), O_RDWR);  // first tty opened by a session leader: controlling terminal
    pid_t fg = fork();
    if (fg == 0) {
      setpgid(0, 0);
      while (tcgetpgrp(s) != getpgrp()) usleep(1000);
      termios t{};
      tcgetattr(s, &t);
      t.c_lflag &= ~(ECHO | ICANON);
      t.c_cc[VMIN] = 1;
      tcsetattr(s, TCSANOW, &t);
      winsize ws{37, 101, 0, 0};
      ioctl(s, TIOCSWINSZ, &ws);
      write(s, "R\n", 2);
      char key = 0;
      read(s, &key, 1);
      std::string bad;
      tcgetattr(s, &t);
      if (t.c_lflag & (ECHO | ICANON)) bad += " termios";
      ioctl(s, TIOCGWINSZ, &ws);
      if (ws.ws_row != 37 || ws.ws_col != 101) bad += " winsize";
      if (tcgetsid(s) != getppid()) bad += " session";
      if (tcgetpgrp(s) != getpgrp()) bad += " foreground";
      int t2 = open("/dev/tty", O_RDWR);  // only works with a controlling terminal
      if (t2 < 0) bad += " no-controlling-terminal";
      std::string out = key == 'q' && bad.empty() ? "OK\n" : "BAD" + bad + " key=" + key + "\n";
      write(s, out.data(), out.size());
      _exit(0);
    }
    setpgid(fg, fg);
    tcsetpgrp(s, fg);
    int st;
    waitpid(fg, &st, 0);
    _exit(0);
  }
  tp::check(readLine(m) == "R", "the foreground child set up the terminal");
  tp::ready();
  tp::waitGo();
  int n = -1;
  ioctl(m, TIOCGPTN, &n);
  tp::check(("/dev/pts/" + std::to_string(n)) == name, "same pty number (%s, now %d)", name.c_str(), n);
  write(m, "q", 1);
  std::string answer = readLine(m);
  tp::check(answer == "OK", "the foreground child's checks: %s", answer.c_str());
  int st;
  waitpid(leader, &st, 0);
  return tp::finish();
}
