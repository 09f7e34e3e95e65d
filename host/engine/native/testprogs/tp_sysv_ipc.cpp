// SysV semaphores, message queues and shared memory in an IPC namespace of the tree's own (as a
// container has): unshares one, fills it, and after restore finds every object under the same id
// and key with its values, messages (types and order) and content.
#include <sched.h>
#include <sys/ipc.h>
#include <sys/msg.h>
#include <sys/sem.h>
#include <sys/shm.h>

#include <cstring>
#include <string>

#include "tp.hpp"

struct Msg {
  long type;
  char text[64];
};

int main(int argc, char** argv) {
  tp::init(argc, argv);
  if (unshare(CLONE_NEWIPC) != 0) {
    perror("unshare(CLONE_NEWIPC)");
    return 1;
  }
  int filler = semget(IPC_PRIVATE, 1, IPC_CREAT | 0600);  // so ids are not all the first ones
  int sem = semget(0x1234, 3, IPC_CREAT | 0640);
  semctl(filler, 0, IPC_RMID);
  unsigned short vals[3] = {1, 5, 42};
  semctl(sem, 0, SETALL, vals);
  int q = msgget(0x5678, IPC_CREAT | 0600);
  int empty = msgget(IPC_PRIVATE, IPC_CREAT | 0600);
  const char* texts[] = {"one", "two", "three"};
  long types[] = {1, 2, 1};
  for (int i = 0; i < 3; i++) {
    Msg m{types[i], {}};
    std::strcpy(m.text, texts[i]);
    msgsnd(q, &m, std::strlen(texts[i]) + 1, 0);
  }
  int shm = shmget(0x9abc, 4096, IPC_CREAT | 0600);
  auto* p = static_cast<char*>(shmat(shm, nullptr, 0));
  std::strcpy(p, "ns-shm");
  tp::ready();
  tp::waitGo();
  tp::check(semget(0x1234, 0, 0) == sem, "semaphore key -> same id (%d, was %d)", semget(0x1234, 0, 0), sem);
  unsigned short now[3] = {};
  semctl(sem, 0, GETALL, now);
  tp::check(now[0] == 1 && now[1] == 5 && now[2] == 42, "semaphore values (%u %u %u)", now[0], now[1], now[2]);
  sembuf op{2, -2, IPC_NOWAIT};
  tp::check(semop(sem, &op, 1) == 0 && semctl(sem, 2, GETVAL) == 40, "semop works");
  tp::check(msgget(0x5678, 0) == q, "queue key -> same id");
  Msg m{};
  tp::check(msgrcv(q, &m, sizeof m.text, 2, IPC_NOWAIT) > 0 && std::strcmp(m.text, "two") == 0, "message of type 2");
  tp::check(msgrcv(q, &m, sizeof m.text, 0, IPC_NOWAIT) > 0 && m.type == 1 && std::strcmp(m.text, "one") == 0,
            "first message (%ld %s)", m.type, m.text);
  tp::check(msgrcv(q, &m, sizeof m.text, 0, IPC_NOWAIT) > 0 && std::strcmp(m.text, "three") == 0, "third message");
  tp::check(msgrcv(q, &m, sizeof m.text, 0, IPC_NOWAIT) < 0, "queue empty");
  msqid_ds ds{};
  tp::check(msgctl(empty, IPC_STAT, &ds) == 0 && ds.msg_qnum == 0, "empty private queue kept under its id");
  tp::check(std::strcmp(p, "ns-shm") == 0 && shmget(0x9abc, 0, 0) == shm, "segment in the namespace");
  return tp::finish();
}
