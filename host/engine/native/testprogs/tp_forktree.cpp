// A fork tree: parent and two children share an anonymous MAP_SHARED region and a pipe with data
// in flight; a grandchild; after restore the children read the pipe and write to shared memory,
// and the parent checks everything plus the children's exit statuses.
#include <sys/mman.h>
#include <sys/wait.h>

#include <cstring>

#include "tp.hpp"

int main(int argc, char** argv) {
  tp::init(argc, argv);
  auto* shm = static_cast<volatile int*>(mmap(nullptr, 4096 * 4, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0));
  shm[0] = 42;
  int p[2];
  pipe(p);
  const char msg[] = "data-in-flight";
  write(p[1], msg, sizeof msg);  // read by the child only after restore
  int priv = 7;
  pid_t kids[2];
  for (int k = 0; k < 2; k++) {
    kids[k] = fork();
    if (kids[k] == 0) {
      priv += k + 1;
      if (k == 1) {
        pid_t g = fork();
        if (g == 0) {
          while (!tp::goExists()) usleep(20000);
          shm[3] = 99;
          _exit(5);
        }
        shm[4] = g;
      }
      shm[1 + k] = -1;
      while (!tp::goExists()) usleep(20000);
      if (k == 0) {
        char buf[64] = {};
        ssize_t n = read(p[0], buf, sizeof buf);
        shm[1] = (n == sizeof msg && std::strcmp(buf, msg) == 0) ? 1 : 2;
      } else {
        int st = 0;
        waitpid(shm[4], &st, 0);
        shm[2] = (WIFEXITED(st) && WEXITSTATUS(st) == 5) ? 1 : 2;
      }
      _exit(priv == 7 + k + 1 ? 0 : 3);
    }
  }
  while (shm[1] != -1 || shm[2] != -1) usleep(1000);
  tp::ready();
  tp::waitGo();
  for (int k = 0; k < 2; k++) {
    int st = 0;
    waitpid(kids[k], &st, 0);
    tp::check(WIFEXITED(st) && WEXITSTATUS(st) == 0, "child %d exit status %#x", k, st);
  }
  tp::check(shm[0] == 42, "shared memory kept its value");
  tp::check(shm[1] == 1, "child read the pipe data in flight (%d)", shm[1]);
  tp::check(shm[2] == 1, "grandchild reaped by its restored parent (%d)", shm[2]);
  tp::check(shm[3] == 99, "grandchild wrote to the shared memory");
  return tp::finish();
}
