// Holds a SysV semaphore "lock" taken with SEM_UNDO (the kernel gives it back when the process
// dies), in an IPC namespace of its own: the undo adjustment cannot be read, so the dump must be
// refused naming the set and leave this process running, which it proves by answering PASS (its
// lock still held) when the go file appears.
#include <sched.h>
#include <sys/ipc.h>
#include <sys/sem.h>

#include <cstdio>

#include "tp.hpp"

int main(int argc, char** argv) {
  tp::init(argc, argv);
  if (unshare(CLONE_NEWIPC) != 0) {
    perror("unshare(CLONE_NEWIPC)");
    return 1;
  }
  int sem = semget(0x5e3d, 1, IPC_CREAT | 0600);
  semctl(sem, 0, SETVAL, 1);
  sembuf take{0, -1, SEM_UNDO};
  if (semop(sem, &take, 1) != 0) {
    perror("semop");
    return 1;
  }
  tp::ready();
  tp::waitGo();
  tp::check(semctl(sem, 0, GETVAL) == 0, "the lock is no longer held");
  return tp::finish();
}
