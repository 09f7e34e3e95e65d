// crb-counter: the smallest workload whose restore is checkable from the outside.
//
// It keeps a buffer whose content is a pure function of a tick counter. Every tick it increments the
// counter, rewrites one page of the buffer from the new count, recomputes a checksum over the whole
// buffer from memory and atomically replaces a small state file ("count=.. checksum=.. pid=..").
// After a restore, `--verify` waits for a tick produced by the restored process and recomputes the
// expected checksum for that count independently: it only matches if the buffer in memory came back
// intact. A restart instead of a restore would start counting from zero again.
//
//   crb-counter [--hz N] [--mib N] [--state PATH]     run the workload
//   crb-counter --read PATH [count|checksum|pid|mib]  print the state (or one field)
//   crb-counter --verify PATH [--timeout-ms N]        exit 0 iff the workload's memory matches its count
#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <cinttypes>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

namespace {

constexpr size_t kPageWords = 4096 / sizeof(uint64_t);

uint64_t mix(uint64_t x) {  // splitmix64 finaliser: cheap, deterministic, well spread
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

// Content of word i of page p after the page was last written at tick t (t = 0: initial fill).
uint64_t wordValue(uint64_t t, size_t i) { return mix((t << 32) ^ i); }

uint64_t checksum(const uint64_t* buf, size_t words) {
  uint64_t h = 0xcbf29ce484222325ULL;
  for (size_t i = 0; i < words; ++i) h = (h ^ buf[i]) * 0x100000001b3ULL;
  return h;
}

// The tick that last wrote page p by tick `count`: ticks write pages 0,1,2,.. round-robin from tick 1.
uint64_t lastWriter(uint64_t count, size_t p, size_t pages) {
  if (count < p + 1) return 0;
  return count - ((count - (p + 1)) % pages);
}

uint64_t expectedChecksum(uint64_t count, size_t words) {
  size_t pages = words / kPageWords;
  uint64_t h = 0xcbf29ce484222325ULL;
  for (size_t p = 0; p < pages; ++p) {
    uint64_t t = lastWriter(count, p, pages);
    for (size_t j = 0; j < kPageWords; ++j) h = (h ^ wordValue(t, p * kPageWords + j)) * 0x100000001b3ULL;
  }
  return h;
}

struct State {
  uint64_t count = 0, checksum = 0, mib = 0;
  long pid = 0;
};

bool readState(const char* path, State& s) {
  FILE* f = std::fopen(path, "r");
  if (!f) return false;
  int n = std::fscanf(f, "count=%" SCNu64 " checksum=%" SCNx64 " pid=%ld mib=%" SCNu64, &s.count,
                      &s.checksum, &s.pid, &s.mib);
  std::fclose(f);
  return n == 4;
}

int64_t nowNs() {
  timespec t{};
  ::clock_gettime(CLOCK_MONOTONIC, &t);
  return static_cast<int64_t>(t.tv_sec) * 1000000000LL + t.tv_nsec;
}

volatile sig_atomic_t gStop = 0;
void onTerm(int) { gStop = 1; }

bool writeState(const std::string& path, const State& s) {
  std::string tmp = path + ".tmp";
  char line[160];
  int len = std::snprintf(line, sizeof line, "count=%" PRIu64 " checksum=%016" PRIx64 " pid=%ld mib=%" PRIu64 "\n",
                          s.count, s.checksum, s.pid, s.mib);
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return false;
  bool ok = ::write(fd, line, len) == len;
  ::close(fd);
  // rename keeps readers from ever seeing a half-written state
  return ok && ::rename(tmp.c_str(), path.c_str()) == 0;
}

int run(long hz, long mib, const std::string& statePath) {
  size_t words = static_cast<size_t>(mib) * (1 << 20) / sizeof(uint64_t);
  size_t pages = words / kPageWords;
  auto* buf = static_cast<uint64_t*>(::mmap(nullptr, words * sizeof(uint64_t), PROT_READ | PROT_WRITE,
                                            MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
  if (buf == MAP_FAILED) {
    std::fprintf(stderr, "crb-counter: cannot map %ld MiB: %s\n", mib, std::strerror(errno));
    return 1;
  }
  for (size_t i = 0; i < words; ++i) buf[i] = wordValue(0, i);
  struct sigaction sa {};
  sa.sa_handler = onTerm;
  ::sigaction(SIGTERM, &sa, nullptr);
  ::sigaction(SIGINT, &sa, nullptr);
  State s;
  s.pid = ::getpid();
  s.mib = static_cast<uint64_t>(mib);
  std::printf("crb-counter: pid %ld, %ld MiB, %ld ticks/s, state %s\n", s.pid, mib, hz, statePath.c_str());
  std::fflush(stdout);
  const int64_t periodNs = 1000000000LL / hz;
  int64_t next = nowNs();
  while (!gStop) {
    s.count++;
    size_t p = (s.count - 1) % pages;
    for (size_t j = 0; j < kPageWords; ++j) buf[p * kPageWords + j] = wordValue(s.count, p * kPageWords + j);
    s.checksum = checksum(buf, words);
    if (!writeState(statePath, s)) {
      std::fprintf(stderr, "crb-counter: cannot write %s: %s\n", statePath.c_str(), std::strerror(errno));
      return 1;
    }
    // Absolute deadlines keep the rate at `hz` despite the work per tick; after a freeze (a
    // checkpoint) the schedule restarts from now instead of bursting to catch up, so the dirty-page
    // rate stays what the scenario declares.
    next += periodNs;
    int64_t now = nowNs();
    if (next < now) next = now;
    timespec until{static_cast<time_t>(next / 1000000000LL), static_cast<long>(next % 1000000000LL)};
    while (::clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &until, nullptr) == EINTR && !gStop) {
    }
  }
  return 0;
}

// The state file appears with the first tick: right after the sandbox started, wait for it a
// little instead of failing a check on a start-up race.
bool readStateWaiting(const char* path, State& s, long timeoutMs) {
  for (long waited = 0;; waited += 5) {
    if (readState(path, s)) return true;
    if (waited >= timeoutMs) return false;
    timespec d{0, 5000000};
    ::nanosleep(&d, nullptr);
  }
}

int readCmd(const char* path, const char* field) {
  State s;
  if (!readStateWaiting(path, s, 2000)) {
    std::fprintf(stderr, "crb-counter: cannot read state %s (is the counter running?)\n", path);
    return 1;
  }
  if (!field) std::printf("count=%" PRIu64 " checksum=%016" PRIx64 " pid=%ld mib=%" PRIu64 "\n", s.count, s.checksum, s.pid, s.mib);
  else if (!std::strcmp(field, "count")) std::printf("%" PRIu64 "\n", s.count);
  else if (!std::strcmp(field, "checksum")) std::printf("%016" PRIx64 "\n", s.checksum);
  else if (!std::strcmp(field, "pid")) std::printf("%ld\n", s.pid);
  else if (!std::strcmp(field, "mib")) std::printf("%" PRIu64 "\n", s.mib);
  else {
    std::fprintf(stderr, "crb-counter: unknown field '%s' (count, checksum, pid, mib)\n", field);
    return 2;
  }
  return 0;
}

int verifyCmd(const char* path, long timeoutMs) {
  State first;
  if (!readStateWaiting(path, first, timeoutMs)) {
    std::fprintf(stderr, "crb-counter: cannot read state %s (is the counter running?)\n", path);
    return 1;
  }
  // Wait for a tick written after we started, i.e. by the process that runs now (after a restore),
  // so the checksum comes from its memory and not from a state file restored from the image.
  State s = first;
  for (long waited = 0; s.count == first.count; waited += 5) {
    if (waited >= timeoutMs) {
      std::fprintf(stderr, "FAIL: count stuck at %" PRIu64 " for %ld ms: the counter is not running\n", first.count, timeoutMs);
      return 1;
    }
    timespec d{0, 5000000};
    ::nanosleep(&d, nullptr);
    State n;
    if (readState(path, n)) s = n;
  }
  uint64_t want = expectedChecksum(s.count, s.mib * (1 << 20) / sizeof(uint64_t));
  if (s.count < first.count) {
    std::printf("FAIL: count went back from %" PRIu64 " to %" PRIu64 ": the counter restarted\n", first.count, s.count);
    return 1;
  }
  if (want != s.checksum) {
    std::printf("FAIL: count %" PRIu64 ": memory checksum %016" PRIx64 " != expected %016" PRIx64 ": buffer not restored intact\n",
                s.count, s.checksum, want);
    return 1;
  }
  std::printf("OK: count %" PRIu64 " checksum %016" PRIx64 " matches (pid %ld)\n", s.count, s.checksum, s.pid);
  return 0;
}

long number(const char* flag, const char* v, long lo, long hi) {
  char* end = nullptr;
  long n = v ? std::strtol(v, &end, 10) : 0;
  if (!v || *end || n < lo || n > hi) {
    std::fprintf(stderr, "crb-counter: %s expects an integer in %ld..%ld\n", flag, lo, hi);
    std::exit(2);
  }
  return n;
}

}  // namespace

int main(int argc, char** argv) {
  long hz = 100, mib = 4, timeoutMs = 5000;
  std::string state = "/tmp/counter.state";
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    const char* next = i + 1 < argc ? argv[i + 1] : nullptr;
    if (a == "--read" && next) return readCmd(next, i + 2 < argc ? argv[i + 2] : nullptr);
    if (a == "--verify" && next) {
      if (i + 3 < argc && !std::strcmp(argv[i + 2], "--timeout-ms")) timeoutMs = number("--timeout-ms", argv[i + 3], 1, 600000);
      return verifyCmd(next, timeoutMs);
    }
    if (a == "--hz") hz = number("--hz", next, 1, 10000), ++i;
    else if (a == "--mib") mib = number("--mib", next, 1, 65536), ++i;
    else if (a == "--state" && next) state = next, ++i;
    else {
      std::fprintf(stderr, "usage: crb-counter [--hz N] [--mib N] [--state PATH]\n"
                           "       crb-counter --read PATH [count|checksum|pid|mib]\n"
                           "       crb-counter --verify PATH [--timeout-ms N]\n");
      return 2;
    }
  }
  return run(hz, mib, state);
}
