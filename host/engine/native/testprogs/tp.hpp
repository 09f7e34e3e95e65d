// Shared by the native engine's self-checking test programs. Protocol with the harness:
// the program builds its state, prints "READY <pid>", then waits until the file named by argv[1]
// exists (it is created after dump -> restore), checks its state, prints PASS or FAIL: <why>,
// and exits 0 only on PASS.
#pragma once
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cstdarg>
#include <cstdio>
#include <cstdlib>

namespace tp {
inline const char* goFile = nullptr;
inline int failures = 0;

inline void init(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s GO-FILE\n", argv[0]);
    std::exit(2);
  }
  goFile = argv[1];
  setvbuf(stdout, nullptr, _IONBF, 0);
}
inline void ready() { std::printf("READY %d\n", getpid()); }
inline bool goExists() {
  struct stat st;
  return stat(goFile, &st) == 0;
}
inline void waitGo() {
  while (!goExists()) {
    timespec t{0, 20 * 1000 * 1000};
    nanosleep(&t, nullptr);
  }
}
inline void check(bool ok, const char* fmt, ...) {
  if (ok) return;
  failures++;
  std::printf("FAIL: ");
  va_list ap;
  va_start(ap, fmt);
  std::vprintf(fmt, ap);
  va_end(ap);
  std::printf("\n");
}
inline int finish() {
  std::printf(failures ? "FAIL (%d checks)\n" : "PASS\n", failures);
  return failures ? 1 : 0;
}
}  // namespace tp
