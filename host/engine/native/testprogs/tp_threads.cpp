// Threads with live registers: each worker keeps a distinct pattern in its AVX-512 (or AVX2 /
// SSE) registers across the dump, in a spin loop that never touches memory, then checks them.
// The main thread joins them (needs clear_child_tid restored) and checks thread names.
#include <immintrin.h>
#include <pthread.h>
#include <sys/prctl.h>

#include <atomic>
#include <cstring>

#include "tp.hpp"

static std::atomic<int> started{0};
static std::atomic<bool> go{false};
static std::atomic<int> bad{0};
static bool hasAvx512 = false;

__attribute__((target("avx512f"))) static bool avx512Spin(long seed) {
  __m512i a = _mm512_set1_epi64(seed), b = _mm512_set1_epi64(seed * 3 + 1);
  __m512i c = _mm512_set1_epi64(~seed);
  asm volatile("" : "+v"(a), "+v"(b), "+v"(c));
  started++;
  while (!go.load(std::memory_order_relaxed)) asm volatile("" : "+v"(a), "+v"(b), "+v"(c));
  alignas(64) long out[24];
  _mm512_store_si512(out, a);
  _mm512_store_si512(out + 8, b);
  _mm512_store_si512(out + 16, c);
  for (int i = 0; i < 8; i++)
    if (out[i] != seed || out[8 + i] != seed * 3 + 1 || out[16 + i] != ~seed) return false;
  return true;
}

static bool sseSpin(long seed) {
  __m128i a = _mm_set1_epi64x(seed), b = _mm_set1_epi64x(seed * 3 + 1);
  asm volatile("" : "+x"(a), "+x"(b));
  started++;
  while (!go.load(std::memory_order_relaxed)) asm volatile("" : "+x"(a), "+x"(b));
  alignas(16) long out[4];
  _mm_store_si128(reinterpret_cast<__m128i*>(out), a);
  _mm_store_si128(reinterpret_cast<__m128i*>(out + 2), b);
  return out[0] == seed && out[1] == seed && out[2] == seed * 3 + 1 && out[3] == seed * 3 + 1;
}

static void* worker(void* arg) {
  long seed = reinterpret_cast<long>(arg);
  char name[16];
  std::snprintf(name, sizeof name, "worker-%ld", seed);
  prctl(PR_SET_NAME, name);
  bool ok = hasAvx512 ? avx512Spin(seed * 0x1234567) : sseSpin(seed * 0x1234567);
  if (!ok) bad++;
  return reinterpret_cast<void*>(ok ? 1 : 2);
}

int main(int argc, char** argv) {
  tp::init(argc, argv);
  __builtin_cpu_init();
  hasAvx512 = __builtin_cpu_supports("avx512f");
  const int n = 4;
  pthread_t th[n];
  for (long i = 0; i < n; i++) pthread_create(&th[i], nullptr, worker, reinterpret_cast<void*>(i + 1));
  while (started < n) usleep(1000);
  tp::ready();
  std::printf("registers: %s\n", hasAvx512 ? "avx512" : "sse");
  tp::waitGo();
  // Names of the threads, as the kernel holds them.
  for (int i = 0; i < n; i++) {
    char name[16] = {}, want[16];
    pthread_getname_np(th[i], name, sizeof name);
    std::snprintf(want, sizeof want, "worker-%d", i + 1);
    tp::check(std::strcmp(name, want) == 0, "thread name %s, want %s", name, want);
  }
  go = true;
  for (int i = 0; i < n; i++) {
    void* rv = nullptr;
    pthread_join(th[i], &rv);
    tp::check(rv == reinterpret_cast<void*>(1), "thread %d registers", i + 1);
  }
  tp::check(bad == 0, "vector registers of %d threads", int(bad));
  return tp::finish();
}
