// Dump throughput of the native engine on a 1 GiB anonymous working set, next to the
// process_vm_readv bandwidth of a plain copy of the same memory measured in the same run.
// Images go to tmpfs (/dev/shm, no fdatasync) for the ratio; the disk-bound figure (image dir
// under $CRBENCH_BENCH_DIR or /var/tmp, fdatasync) is reported beside it. Needs root.
#include <benchmark/benchmark.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <vector>

#include "engine/native/native.hpp"

namespace {
constexpr size_t kSize = size_t(1) << 30;
pid_t child = -1;
uintptr_t childAddr = 0;
double bestCopy = 0, bestDumpTmpfs = 0, bestDumpDisk = 0;

bool startChild() {
  int p[2];
  if (pipe(p) != 0) return false;
  child = fork();
  if (child == 0) {
    auto* m = static_cast<char*>(mmap(nullptr, kSize, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
    for (size_t i = 0; i < kSize; i += 4096) std::memset(m + i, int(i >> 12) | 1, 4096);
    uintptr_t a = reinterpret_cast<uintptr_t>(m);
    (void)!write(p[1], &a, sizeof a);
    close_range(3, ~0u, 0);  // hold nothing the dump would refuse (inherited pipes)
    for (;;) pause();
  }
  close(p[1]);
  bool ok = read(p[0], &childAddr, sizeof childAddr) == sizeof childAddr;
  close(p[0]);
  return ok;
}

void BM_ProcessVmReadvCopy(benchmark::State& state) {
  std::vector<char> buf(8 << 20);
  for (auto _ : state) {
    for (size_t off = 0; off < kSize; off += buf.size()) {
      iovec l{buf.data(), buf.size()}, r{reinterpret_cast<void*>(childAddr + off), buf.size()};
      if (process_vm_readv(child, &l, 1, &r, 1, 0) != ssize_t(buf.size())) state.SkipWithError("process_vm_readv failed");
    }
    benchmark::DoNotOptimize(buf.data());
  }
  state.SetBytesProcessed(int64_t(state.iterations()) * int64_t(kSize));
  double gbs = double(kSize) * double(state.iterations()) / 1e9;
  (void)gbs;
}

void dumpBench(benchmark::State& state, const std::filesystem::path& base, bool sync, double* best) {
  uint64_t bytes = 0;
  int i = 0;
  for (auto _ : state) {
    auto dir = base / ("crbench-native-bench-" + std::to_string(getpid()) + "-" + std::to_string(i++));
    std::filesystem::create_directories(dir);
    crb::native::DumpOptions o;
    o.leaveRunning = true;
    o.sync = sync;
    auto t0 = std::chrono::steady_clock::now();
    auto r = crb::native::dumpTree(child, dir, o);
    double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    state.PauseTiming();
    std::filesystem::remove_all(dir);
    state.ResumeTiming();
    if (!r.ok()) {
      state.SkipWithError(r.error().text().c_str());
      return;
    }
    bytes += r->bytesWritten;
    *best = std::max(*best, double(r->bytesWritten) / s / 1e9);
  }
  state.SetBytesProcessed(int64_t(bytes));
}

void BM_NativeDumpTmpfs(benchmark::State& state) { dumpBench(state, "/dev/shm", false, &bestDumpTmpfs); }
void BM_NativeDumpDiskSync(benchmark::State& state) {
  const char* d = std::getenv("CRBENCH_BENCH_DIR");
  dumpBench(state, d ? d : "/var/tmp", true, &bestDumpDisk);
}

void copyWrapper(benchmark::State& state) {
  auto t0 = std::chrono::steady_clock::now();
  BM_ProcessVmReadvCopy(state);
  double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (state.iterations()) bestCopy = std::max(bestCopy, double(kSize) * double(state.iterations()) / s / 1e9);
}
}  // namespace

int main(int argc, char** argv) {
  if (geteuid() != 0) {
    std::fprintf(stderr, "native_dump_bench: needs root (ptrace); skipped\n");
    return 77;
  }
  if (!startChild()) return 1;
  benchmark::RegisterBenchmark("process_vm_readv_copy_1GiB", copyWrapper)->Iterations(3)->Unit(benchmark::kMillisecond)->UseRealTime();
  benchmark::RegisterBenchmark("native_dump_1GiB_tmpfs", BM_NativeDumpTmpfs)->Iterations(3)->Unit(benchmark::kMillisecond)->UseRealTime();
  benchmark::RegisterBenchmark("native_dump_1GiB_disk_fdatasync", BM_NativeDumpDiskSync)->Iterations(1)->Unit(benchmark::kMillisecond)->UseRealTime();
  benchmark::Initialize(&argc, argv);
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  kill(child, SIGKILL);
  waitpid(child, nullptr, 0);
  std::printf("\nprocess_vm_readv plain copy: %.2f GB/s\nnative dump to tmpfs:        %.2f GB/s  (ratio %.2f, target >= 0.8)\n"
              "native dump to disk+fdatasync: %.2f GB/s\n",
              bestCopy, bestDumpTmpfs, bestCopy > 0 ? bestDumpTmpfs / bestCopy : 0.0, bestDumpDisk);
  return 0;
}
