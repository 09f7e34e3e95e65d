// A session leader with two process groups: the leader's own and one led by its first child
// that the second child joined. After restore, ids must match.
#include <sys/wait.h>

#include "tp.hpp"

int main(int argc, char** argv) {
  tp::init(argc, argv);
  pid_t leader = fork();
  if (leader == 0) {
    setsid();
    int p[2];
    pipe(p);
    pid_t a = fork();
    if (a == 0) {
      setpgid(0, 0);
      while (!tp::goExists()) usleep(20000);
      _exit(getpgid(0) == getpid() && getsid(0) == getppid() ? 0 : 1);
    }
    setpgid(a, a);
    pid_t b = fork();
    if (b == 0) {
      setpgid(0, a);
      while (!tp::goExists()) usleep(20000);
      _exit(getpgid(0) == a && getsid(0) == getppid() ? 0 : 1);
    }
    setpgid(b, a);
    usleep(100000);
    write(1, "", 0);
    while (!tp::goExists()) usleep(20000);
    int sa = 0, sb = 0;
    waitpid(a, &sa, 0);
    waitpid(b, &sb, 0);
    bool ok = getsid(0) == getpid() && WIFEXITED(sa) && WEXITSTATUS(sa) == 0 && WIFEXITED(sb) && WEXITSTATUS(sb) == 0;
    _exit(ok ? 0 : 1);
  }
  usleep(300000);
  tp::ready();
  tp::waitGo();
  int st = 0;
  waitpid(leader, &st, 0);
  tp::check(WIFEXITED(st) && WEXITSTATUS(st) == 0, "session and process groups (status %#x)", st);
  return tp::finish();
}
