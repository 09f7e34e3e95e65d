// crb-shmipc: processes sharing SysV and POSIX shared memory, each guarded by a semaphore of the
// same family. Workers add to a shared total and to their own slot under the lock, so at any
// moment total == sum(slots) for each segment; a restore that loses a segment, duplicates it per
// process, or drops a semaphore's value breaks that identity (or deadlocks, which `check` reports).
//   crb-shmipc run [--workers N] [--state DIR]
//   crb-shmipc check [--state DIR]      exit 0 when both segments are consistent
//   crb-shmipc progress                 prints the SysV total
#include <semaphore.h>
#include <sys/ipc.h>
#include <sys/mman.h>
#include <sys/sem.h>
#include <sys/shm.h>
#include <sys/wait.h>
#include <time.h>

#include <cinttypes>
#include <cstdint>

#include "common.hpp"

namespace {

constexpr key_t kSysvKey = 0x43524231;  // "CRB1"
constexpr const char* kPosixShm = "/crb-ipc";
constexpr const char* kPosixSem = "/crb-ipc-sem";
constexpr int kMaxWorkers = 8;

struct Shared {
  uint64_t total;
  uint64_t slot[kMaxWorkers];
  int workers;
};

union semun {
  int val;
};

bool sysvLock(int semid, int delta) {
  sembuf op{0, short(delta), SEM_UNDO};
  timespec ts{5, 0};
  while (semtimedop(semid, &op, 1, delta < 0 ? &ts : nullptr) != 0)
    if (errno != EINTR) return false;
  return true;
}

bool posixLock(sem_t* s) {
  timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  ts.tv_sec += 5;
  while (sem_timedwait(s, &ts) != 0)
    if (errno != EINTR) return false;
  return true;
}

struct Handles {
  Shared* sysv = nullptr;
  Shared* posix = nullptr;
  int semid = -1;
  sem_t* psem = SEM_FAILED;
};

Handles attach(bool create) {
  Handles h;
  int flags = create ? (IPC_CREAT | 0600) : 0600;
  int shmid = shmget(kSysvKey, sizeof(Shared), flags);
  if (shmid < 0) crbw::die(std::string("crb-shmipc: shmget: ") + std::strerror(errno));
  void* p = shmat(shmid, nullptr, 0);
  if (p == reinterpret_cast<void*>(-1))
    crbw::die(std::string("crb-shmipc: shmat: ") + std::strerror(errno));
  h.sysv = static_cast<Shared*>(p);
  h.semid = semget(kSysvKey, 1, flags);
  if (h.semid < 0) crbw::die(std::string("crb-shmipc: semget: ") + std::strerror(errno));
  int fd = shm_open(kPosixShm, create ? (O_CREAT | O_RDWR) : O_RDWR, 0600);
  if (fd < 0)
    crbw::die(std::string("crb-shmipc: shm_open ") + kPosixShm + ": " + std::strerror(errno) +
              " (POSIX shm needs /dev/shm mounted in the sandbox)");
  if (create && ftruncate(fd, sizeof(Shared)) != 0) crbw::die("crb-shmipc: ftruncate failed");
  p = mmap(nullptr, sizeof(Shared), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (p == MAP_FAILED) crbw::die(std::string("crb-shmipc: mmap: ") + std::strerror(errno));
  close(fd);
  h.posix = static_cast<Shared*>(p);
  h.psem = create ? sem_open(kPosixSem, O_CREAT, 0600, 1) : sem_open(kPosixSem, 0);
  if (h.psem == SEM_FAILED) crbw::die(std::string("crb-shmipc: sem_open: ") + std::strerror(errno));
  return h;
}

int run(int argc, char** argv) {
  int workers = std::atoi(crbw::opt(argc, argv, "--workers", "2").c_str());
  std::string state = crbw::opt(argc, argv, "--state", "/tmp/crb-shmipc");
  if (workers < 1 || workers > kMaxWorkers) crbw::die("crb-shmipc: --workers must be 1..8");
  ::mkdir(state.c_str(), 0755);
  // Start from a clean slate: leftovers of an earlier run would make the totals meaningless.
  shm_unlink(kPosixShm);
  sem_unlink(kPosixSem);
  if (int id = shmget(kSysvKey, 0, 0); id >= 0) shmctl(id, IPC_RMID, nullptr);
  if (int id = semget(kSysvKey, 0, 0); id >= 0) semctl(id, 0, IPC_RMID);
  Handles h = attach(true);
  semun arg{1};
  semctl(h.semid, 0, SETVAL, arg);
  std::memset(h.sysv, 0, sizeof(Shared));
  std::memset(h.posix, 0, sizeof(Shared));
  h.sysv->workers = h.posix->workers = workers;
  crbw::writePid(state + "/pid");
  for (int w = 0; w < workers; ++w) {
    if (fork() == 0) {
      for (;;) {
        if (!sysvLock(h.semid, -1)) crbw::die("crb-shmipc worker: SysV semaphore wait failed");
        ++h.sysv->total;
        ++h.sysv->slot[w];
        sysvLock(h.semid, +1);
        if (!posixLock(h.psem)) crbw::die("crb-shmipc worker: POSIX semaphore wait failed");
        ++h.posix->total;
        ++h.posix->slot[w];
        sem_post(h.psem);
        crbw::sleepSeconds(0.002);
      }
    }
  }
  // The parent stays as the group's supervisor; a dead worker is an error the check reports.
  int st;
  pid_t dead = wait(&st);
  crbw::writeStatus(state + "/status", "dead_worker=" + std::to_string(dead) + "\n");
  return 1;
}

int check(int argc, char** argv) {
  std::string state = crbw::opt(argc, argv, "--state", "/tmp/crb-shmipc");
  std::string st = crbw::readText(state + "/status");
  if (!st.empty()) {
    std::printf("FAIL: %s", st.c_str());
    return 1;
  }
  Handles h = attach(false);
  // Take both locks so the snapshot is consistent; a lock that cannot be taken is a finding.
  if (!sysvLock(h.semid, -1)) crbw::die("FAIL: SysV semaphore cannot be taken within 5 s");
  Shared s = *h.sysv;
  sysvLock(h.semid, +1);
  if (!posixLock(h.psem)) crbw::die("FAIL: POSIX semaphore cannot be taken within 5 s");
  Shared p = *h.posix;
  sem_post(h.psem);
  uint64_t ss = 0, ps = 0;
  for (int w = 0; w < kMaxWorkers; ++w) ss += s.slot[w], ps += p.slot[w];
  bool ok = ss == s.total && ps == p.total && s.total > 0 && p.total > 0 && s.workers == p.workers;
  std::printf("workers=%d sysv_total=%" PRIu64 " sysv_slots=%" PRIu64 " posix_total=%" PRIu64
              " posix_slots=%" PRIu64 " %s\n",
              s.workers, s.total, ss, p.total, ps, ok ? "consistent" : "INCONSISTENT");
  return ok ? 0 : 1;
}

int progress(int, char**) {
  Handles h = attach(false);
  std::printf("%" PRIu64 "\n", h.sysv->total);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  return crbw::dispatch(argc, argv, {{"run", run}, {"check", check}, {"progress", progress}},
                        "usage: crb-shmipc run|check|progress [--workers N] [--state DIR]\n");
}
