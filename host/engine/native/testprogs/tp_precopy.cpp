// Memory rewritten at a set rate while it is checkpointed (pre-copy, COW): every page holds a
// pattern derived from its index and its generation, and the generation table lives in the same
// process. A page copied in an early round and dirtied later but not copied again, or a table
// from another moment than the pages, shows as a mismatch of some byte.
//
//   tp_precopy GO-FILE [SIZE-MIB [RATE-MIB-S [fork]]]
// Prints READY once every page is written, keeps rewriting pages in order at RATE; when GO-FILE
// appears it checks every byte of every page (PASS/FAIL), rewrites for another 200 ms, checks
// again and exits. With `fork` (lazy restore: memory still being served) it first forks a child
// that checks every byte itself, and discards one page (MADV_DONTNEED), which must read as zeros.
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>

#include <cstdint>
#include <cstdlib>
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
  size_t pages = mib * 256;
  auto* mem = static_cast<uint64_t*>(
      mmap(nullptr, pages * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
  if (mem == MAP_FAILED) return 2;
  std::vector<uint64_t> gen(pages, 0);
  volatile uint64_t writes = 0;
  for (size_t i = 0; i < pages; i++) fill(mem + i * kWords, i, 0);

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
    tp::check(sum == writes, "%s: generation table sums to %llu, %llu writes were made", when,
              (unsigned long long)sum, (unsigned long long)writes);
  };

  tp::ready();
  // Rewrite pages in order at `rate` MiB/s; look for GO-FILE every 64 pages.
  const double perPage = rate > 0 ? 4096.0 / (rate * 1048576.0) : 0.02;
  size_t cursor = 0;
  double next = now();
  auto step = [&]() {
    if (rate > 0) {
      fill(mem + cursor * kWords, cursor, gen[cursor] + 1);
      gen[cursor]++;
      writes = writes + 1;
      cursor = (cursor + 1) % pages;
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
  for (size_t n = 0;; n++) {
    if ((rate <= 0 || n % 64 == 0) && tp::goExists()) break;
    step();
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
  check("after restore");
  double until = now() + 0.2;
  while (now() < until) step();
  check("after 200 ms more writing");
  return tp::finish();
}
