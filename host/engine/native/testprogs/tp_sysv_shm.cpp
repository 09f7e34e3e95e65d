// SysV shared memory in crbench's IPC namespace: a private segment attached at a chosen address
// and inherited by a child that also attaches it read-only elsewhere; a keyed segment; a segment
// removed (IPC_RMID) while attached, whose content lives only in the tree. After restore: same
// ids, addresses, contents, and parent and child still share the pages.
#include <sys/ipc.h>
#include <sys/mman.h>
#include <sys/shm.h>
#include <sys/wait.h>

#include <cstring>

#include "tp.hpp"

int main(int argc, char** argv) {
  tp::init(argc, argv);
  const size_t sz = 3 * 4096;
  int a = shmget(IPC_PRIVATE, sz, IPC_CREAT | 0600);
  key_t keyC = 0x7c000000 | (getpid() & 0xffffff);
  int cId = shmget(keyC, 4096, IPC_CREAT | IPC_EXCL | 0640);
  int b = shmget(IPC_PRIVATE, 8192, IPC_CREAT | 0600);
  auto* pa = static_cast<char*>(shmat(a, reinterpret_cast<void*>(0x600000000000ull), 0));
  auto* pb = static_cast<char*>(shmat(b, nullptr, 0));
  auto* pc = static_cast<char*>(shmat(cId, nullptr, 0));
  tp::check(pa == reinterpret_cast<char*>(0x600000000000ull) && pb != (void*)-1 && pc != (void*)-1, "attach");
  for (size_t i = 0; i < sz; i++) pa[i] = char(i * 7);
  std::strcpy(pb, "only-in-the-tree");
  std::strcpy(pc + 100, "keyed");
  shmctl(b, IPC_RMID, nullptr);
  mprotect(pa + 4096, 4096, PROT_READ);  // one attach, three mappings
  int cp[2];
  pipe(cp);
  pid_t child = fork();
  if (child == 0) {
    auto* ro = static_cast<char*>(shmat(a, nullptr, SHM_RDONLY));
    tp::waitGo();
    int ok = ro[5] == char(35) && pa[5] == char(35);
    pa[0] = 'K';  // the parent must see this
    write(cp[1], &ok, sizeof ok);
    _exit(0);
  }
  tp::ready();
  tp::waitGo();
  int kidOk = 0;
  read(cp[0], &kidOk, sizeof kidOk);
  tp::check(kidOk, "child sees the segment at both its attaches");
  tp::check(pa[0] == 'K', "a write by the child is seen by the parent (shared pages)");
  bool same = true;
  for (size_t i = 1; i < sz; i++) same = same && pa[i] == char(i * 7);
  tp::check(same, "private segment content");
  char line[512];
  bool roMiddle = false;
  FILE* maps = fopen("/proc/self/maps", "r");
  while (fgets(line, sizeof line, maps))
    if (strtoull(line, nullptr, 16) == 0x600000001000ull) roMiddle = std::strncmp(std::strchr(line, ' ') + 1, "r--s", 4) == 0;
  fclose(maps);
  tp::check(roMiddle, "mprotect()ed middle page of the attach is read-only");
  tp::check(std::strcmp(pb, "only-in-the-tree") == 0, "removed segment content (%s)", pb);
  tp::check(std::strcmp(pc + 100, "keyed") == 0, "keyed segment content");
  tp::check(shmget(keyC, 0, 0) == cId, "key finds the same id (%d, was %d)", shmget(keyC, 0, 0), cId);
  shmid_ds ds{};
  tp::check(shmctl(b, IPC_STAT, &ds) == 0 && (ds.shm_perm.mode & SHM_DEST) && ds.shm_segsz == 8192,
            "removed segment still removed, same id and size");
  shmctl(cId, IPC_STAT, &ds);
  tp::check((ds.shm_perm.mode & 0777) == 0640, "mode kept (%o)", ds.shm_perm.mode & 0777);
  int st = 0;
  waitpid(child, &st, 0);
  shmctl(a, IPC_STAT, &ds);
  tp::check(ds.shm_nattch == 3, "attach count (one per mapping) after the child left (%lu)", (unsigned long)ds.shm_nattch);
  shmctl(a, IPC_RMID, nullptr);
  shmctl(cId, IPC_RMID, nullptr);
  return tp::finish();
}
