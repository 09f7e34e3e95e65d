// Heap, stack, a large anonymous region with a pattern, a PROT_READ page, and a guard
// (PROT_NONE) region: all must hold the same bytes and protections after restore.
#include <sys/mman.h>

#include <cstdint>
#include <cstring>
#include <vector>

#include "tp.hpp"

int main(int argc, char** argv) {
  tp::init(argc, argv);
  const size_t kBig = 64 << 20;
  auto* big = static_cast<uint64_t*>(mmap(nullptr, kBig, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
  for (size_t i = 0; i < kBig / 8; i += 512) big[i] = i * 2654435761u;  // every 4th page touched
  std::vector<uint32_t> heap(100000);
  for (size_t i = 0; i < heap.size(); i++) heap[i] = uint32_t(i ^ 0x5a5a);
  volatile char stackBuf[8192];
  for (int i = 0; i < 8192; i++) stackBuf[i] = char(i * 7);
  auto* ro = static_cast<char*>(mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
  std::strcpy(ro, "read-only page");
  mprotect(ro, 4096, PROT_READ);
  auto* none = static_cast<char*>(mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
  std::strcpy(none, "hidden");
  mprotect(none, 4096, PROT_NONE);
  tp::ready();
  tp::waitGo();
  bool ok = true;
  for (size_t i = 0; i < kBig / 8; i++) {
    uint64_t want = (i % 512 == 0) ? i * 2654435761u : 0;
    if (big[i] != want) {
      ok = false;
      break;
    }
  }
  tp::check(ok, "anonymous region pattern");
  ok = true;
  for (size_t i = 0; i < heap.size(); i++) ok = ok && heap[i] == uint32_t(i ^ 0x5a5a);
  tp::check(ok, "heap contents");
  ok = true;
  for (int i = 0; i < 8192; i++) ok = ok && stackBuf[i] == char(i * 7);
  tp::check(ok, "stack contents");
  tp::check(std::strcmp(ro, "read-only page") == 0, "read-only page");
  mprotect(none, 4096, PROT_READ);
  tp::check(std::strcmp(none, "hidden") == 0, "PROT_NONE page contents");
  // The heap must still grow after restore (brk restored).
  std::vector<char> more(50 << 20, 'x');
  tp::check(more[12345] == 'x', "heap growth");
  return tp::finish();
}
