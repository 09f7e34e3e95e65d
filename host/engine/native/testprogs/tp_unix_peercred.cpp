// SO_PEERCRED across dump -> restore. A child listens on an abstract unix name; the parent holds
// a socketpair it created. After restore (go-file): a new connection to the listener must name
// the listening child (its pid; uid and gid stay 0: the dump of a process that changed its ids
// is refused here, "read rlimit ...: Operation not permitted"), as a client of a
// server that checks who it talks to would see it; the socketpair's SO_PEERCRED is printed
// ("PAIR <pid> <uid> <gid>", and "PAIR-BEFORE" before the dump) for the harness, which knows what
// the restore can and cannot carry there (docs/native-image.md).
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>

#include <cstddef>
#include <cstring>
#include <string>

#include "tp.hpp"

namespace {
socklen_t abstractName(sockaddr_un& a, pid_t owner) {
  a = sockaddr_un{};
  a.sun_family = AF_UNIX;
  std::string n = "crbench-tp-peercred-" + std::to_string(owner);
  std::memcpy(a.sun_path + 1, n.data(), n.size());
  return socklen_t(offsetof(sockaddr_un, sun_path) + 1 + n.size());
}

ucred peer(int fd) {
  ucred c{};
  socklen_t l = sizeof c;
  getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &c, &l);
  return c;
}
}  // namespace

int main(int argc, char** argv) {
  tp::init(argc, argv);
  pid_t self = getpid();
  int ready[2];
  if (pipe(ready) != 0) return 2;
  pid_t child = fork();
  if (child == 0) {
    close(ready[0]);
    int l = socket(AF_UNIX, SOCK_STREAM, 0);
    sockaddr_un a;
    socklen_t al = abstractName(a, self);
    if (bind(l, reinterpret_cast<sockaddr*>(&a), al) != 0 || listen(l, 4) != 0) {
      std::printf("FAIL: listen: %s\n", std::strerror(errno));
      _exit(1);
    }
    (void)!write(ready[1], "L", 1);
    tp::waitGo();
    int c = accept(l, nullptr, nullptr);
    ucred cr = peer(c);
    tp::check(c >= 0 && cr.pid == self, "the listener's accepted connection names pid %d, expected %d", cr.pid, self);
    _exit(tp::failures ? 1 : 0);
  }
  close(ready[1]);
  char b;
  if (read(ready[0], &b, 1) != 1) {
    std::printf("FAIL: the listener did not start\n");
    return 1;
  }
  int sp[2];
  socketpair(AF_UNIX, SOCK_STREAM, 0, sp);
  ucred before = peer(sp[0]);
  std::printf("PAIR-BEFORE %d %u %u\n", before.pid, before.uid, before.gid);
  tp::ready();
  tp::waitGo();

  int s = socket(AF_UNIX, SOCK_STREAM, 0);
  sockaddr_un a;
  socklen_t al = abstractName(a, self);
  tp::check(connect(s, reinterpret_cast<sockaddr*>(&a), al) == 0, "connect to the listener: %s", std::strerror(errno));
  ucred cr = peer(s);
  tp::check(cr.pid == child && cr.uid == getuid() && cr.gid == getgid(),
            "SO_PEERCRED of the listener is pid %d uid %u gid %u, expected pid %d uid %u gid %u", cr.pid, cr.uid, cr.gid,
            child, getuid(), getgid());
  ucred after = peer(sp[0]);
  std::printf("PAIR %d %u %u\n", after.pid, after.uid, after.gid);
  int st = 0;
  waitpid(child, &st, 0);
  tp::check(WIFEXITED(st) && WEXITSTATUS(st) == 0, "the listening child failed (status %d)", st);
  return tp::finish();
}
