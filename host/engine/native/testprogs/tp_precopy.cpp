// Memory rewritten at a set rate while it is checkpointed (pre-copy, COW): every page holds a
// pattern derived from its index and its generation, and the generation table lives in the same
// process. A page copied in an early round and dirtied later but not copied again, or a table
// from another moment than the pages, shows as a mismatch of some byte.
//
//   tp_precopy GO-FILE [SIZE-MIB [RATE-MIB-S [private|shared|memfd|memfd-open|fork|spawn]]]
// Prints READY once every page is written, keeps rewriting pages in order at RATE; when GO-FILE
// appears it checks every byte of every page (PASS/FAIL), rewrites for another 200 ms, checks
// again and exits. `shared` / `memfd`: the pages and the generation table are shared memory
// (shared anonymous / a memfd, closed after mmap or kept open) and a forked child rewrites the
// odd pages while the parent rewrites the even ones, so writes through two processes' mappings of
// one object must all be caught. With `fork` (lazy restore: memory still being served) it first
// forks a child that checks every byte itself, and discards one page (MADV_DONTNEED), which must
// read as zeros. With `spawn`, SIGUSR1 makes it fork a child (then, e.g., between a COW dump's
// arming and its freeze) that holds its copy of the memory, checks every byte of it once GO-FILE
// appears and exits; the parent goes on writing and checks that the child passed.
#include <signal.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>
#include <time.h>

#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

#include "tp.hpp"

namespace {
constexpr size_t kWords = 4096 / 8;

uint64_t base(uint64_t page, uint64_t gen) {
  uint64_t z = page * 0x9E3779B97F4A7C15ull + gen * 0xC2B2AE3D27D4EB4Full + 1;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  return z ^ (z >> 31);
}

void fill(uint64_t* p, uint64_t page, uint64_t gen) {
  uint64_t b = base(page, gen);
  for (size_t w = 0; w < kWords; w++) p[w] = b + w * 0x100000001B3ull;
}

volatile sig_atomic_t spawnAsked = 0;
void onUsr1(int) { spawnAsked = 1; }

double now() {
  timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return double(t.tv_sec) + double(t.tv_nsec) * 1e-9;
}
}  // namespace

int main(int argc, char** argv) {
  tp::init(argc, argv);
  size_t mib = argc > 2 ? size_t(std::atol(argv[2])) : 64;
  double rate = argc > 3 ? std::atof(argv[3]) : 16;
  std::string kind = argc > 4 ? argv[4] : "private";
  bool shared = kind == "shared" || kind == "memfd" || kind == "memfd-open";
  size_t pages = mib * 256;
  // Shared: pages, then the generation table and the write count, in one object.
  size_t bytes = pages * 4096 + (shared ? (pages + 1) * 8 : 0);
  int fd = -1;
  if (kind.rfind("memfd", 0) == 0) {
    fd = memfd_create("tp_precopy", 0);
    if (fd < 0 || ftruncate(fd, off_t(bytes)) != 0) return 2;
  }
  int flags = shared ? (fd >= 0 ? MAP_SHARED : MAP_SHARED | MAP_ANONYMOUS) : MAP_PRIVATE | MAP_ANONYMOUS;
  auto* mem = static_cast<uint64_t*>(mmap(nullptr, bytes, PROT_READ | PROT_WRITE, flags, fd, 0));
  if (mem == MAP_FAILED) return 2;
  if (kind == "memfd") close(fd);  // memfd-open keeps it: a write(2) could change the object unseen
  std::vector<uint64_t> ownGen(shared ? 0 : pages, 0);
  uint64_t* gen = shared ? mem + pages * kWords : ownGen.data();
  uint64_t ownWrites = 0;
  uint64_t* writesAt = shared ? gen + pages : &ownWrites;
  for (size_t i = 0; i < pages; i++) fill(mem + i * kWords, i, 0);
  auto writes = [&] { return __atomic_load_n(writesAt, __ATOMIC_SEQ_CST); };

  auto check = [&](const char* when) {
    size_t bad = 0, first = SIZE_MAX;
    uint64_t sum = 0;
    for (size_t i = 0; i < pages; i++) {
      sum += gen[i];
      uint64_t b = base(i, gen[i]);
      const uint64_t* p = mem + i * kWords;
      for (size_t w = 0; w < kWords; w++)
        if (p[w] != b + w * 0x100000001B3ull) {
          if (first == SIZE_MAX) first = i;
          bad++;
          break;
        }
    }
    tp::check(bad == 0, "%s: %zu of %zu pages differ from their generation's pattern (first: page %zu)", when, bad,
              pages, first);
    tp::check(sum == writes(), "%s: generation table sums to %llu, %llu writes were made", when,
              (unsigned long long)sum, (unsigned long long)writes());
  };

  // Shared: a child rewrites the odd pages, the parent the even ones, each at half the rate.
  pid_t child = 0;
  size_t first = 0, stride = 1;
  if (shared) {
    child = fork();
    if (child < 0) return 2;
    first = child == 0 ? 1 : 0;
    stride = 2;
    rate /= 2;
  }
  if (child > 0 || !shared) tp::ready();
  // Rewrite pages in order at `rate` MiB/s; look for GO-FILE every 64 pages.
  const double perPage = rate > 0 ? 4096.0 / (rate * 1048576.0) : 0.02;
  size_t cursor = first;
  double next = now();
  auto step = [&]() {
    if (rate > 0) {
      fill(mem + cursor * kWords, cursor, gen[cursor] + 1);
      gen[cursor]++;
      __atomic_fetch_add(writesAt, 1, __ATOMIC_SEQ_CST);
      cursor += stride;
      if (cursor >= pages) cursor = first;
    }
    next += perPage;
    double d = next - now();
    if (d > 0.0005) {
      timespec t{time_t(d), long((d - double(time_t(d))) * 1e9)};
      nanosleep(&t, nullptr);
    } else if (d < -1) {
      next = now();  // fell far behind (stopped for a checkpoint): do not burst to catch up
    }
  };
  pid_t spawned = 0;
  if (kind == "spawn") signal(SIGUSR1, onUsr1);
  for (size_t n = 0;; n++) {
    if ((rate <= 0 || n % 64 == 0) && tp::goExists()) break;
    if (spawnAsked && !spawned) {
      spawned = fork();
      if (spawned < 0) return 2;
      if (spawned == 0) {
        while (!tp::goExists()) usleep(10000);
        check("in the child forked on SIGUSR1");
        _exit(tp::failures ? 1 : 0);
      }
    }
    step();
  }
  if (child == 0 && shared) _exit(0);  // the parent checks, once the child stopped writing
  if (child > 0) {
    int st = 0;
    tp::check(waitpid(child, &st, 0) == child && WIFEXITED(st) && WEXITSTATUS(st) == 0, "the writing child exited 0");
    first = 0;
    stride = 1;
    rate *= 2;
  }
  if (argc > 4 && std::string_view(argv[4]) == "fork") {
    uint64_t* last = mem + (pages - 1) * kWords;
    madvise(last, 4096, MADV_DONTNEED);
    bool zero = true;
    for (size_t w = 0; w < kWords; w++) zero = zero && last[w] == 0;
    tp::check(zero, "a page discarded with MADV_DONTNEED does not read as zeros");
    fill(last, pages - 1, gen[pages - 1]);
    pid_t ch = fork();
    if (ch == 0) {
      check("in a child forked after restore");
      _exit(tp::failures ? 1 : 0);
    }
    int st = 0;
    waitpid(ch, &st, 0);
    tp::check(WIFEXITED(st) && WEXITSTATUS(st) == 0, "the child forked after restore found wrong pages");
  }
  if (kind == "spawn") {
    int st = 0;
    tp::check(spawned > 0, "SIGUSR1 came (a child was forked)");
    tp::check(spawned > 0 && waitpid(spawned, &st, 0) == spawned && WIFEXITED(st) && WEXITSTATUS(st) == 0,
              "the child forked on SIGUSR1 found its pages intact");
  }
  check("after restore");
  double until = now() + 0.2;
  while (now() < until) step();
  check("after 200 ms more writing");
  return tp::finish();
}
