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

#include <fcntl.h>
#include <sys/resource.h>

#include <algorithm>
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
// Each tmpfs dump next to a process_vm_readv pass of the same memory made just before it: on a
// shared machine the load drifts between the reference benchmark and the dumps, a pair does not.
std::vector<double> pairedRatios;

double copyOncePerSecond() {
  static std::vector<char> buf(8 << 20);
  auto t0 = std::chrono::steady_clock::now();
  for (size_t off = 0; off < kSize; off += buf.size()) {
    iovec l{buf.data(), buf.size()}, r{reinterpret_cast<void*>(childAddr + off), buf.size()};
    if (process_vm_readv(child, &l, 1, &r, 1, 0) != ssize_t(buf.size())) return 0;
  }
  return double(kSize) / std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / 1e9;
}
std::vector<double> restoreMs;
long dumperRssSmallKiB = 0, dumperRssLargeKiB = 0;

// A small real process: sleep(1), stdio on /dev/null, in its own session.
pid_t startSmall() {
  pid_t p = fork();
  if (p == 0) {
    setsid();
    int n = open("/dev/null", O_RDWR);
    dup2(n, 0), dup2(n, 1), dup2(n, 2);
    close_range(3, ~0u, 0);
    execl("/bin/sleep", "sleep", "100000", static_cast<char*>(nullptr));
    _exit(127);
  }
  usleep(20000);  // let it reach its sleep
  return p;
}

// Restore time of a small process: dump (stop-and-copy) once per iteration, time the restore only.
void BM_RestoreSmallProcess(benchmark::State& state) {
  for (auto _ : state) {
    state.PauseTiming();
    pid_t p = startSmall();
    auto dir = std::filesystem::path("/dev/shm") / ("crbench-native-restore-" + std::to_string(getpid()));
    std::filesystem::remove_all(dir);
    std::filesystem::create_directories(dir);
    crb::native::DumpOptions o;
    o.sync = false;
    auto d = crb::native::dumpTree(p, dir, o);
    if (!d.ok()) kill(p, SIGKILL);
    waitpid(p, nullptr, 0);  // killed by the dump: free its pid
    if (!d.ok()) {
      state.SkipWithError(d.error().text().c_str());
      return;
    }
    state.ResumeTiming();
    auto t0 = std::chrono::steady_clock::now();
    crb::native::RestoreOptions ro;
    ro.detach = true;
    auto r = crb::native::restoreTree(dir, ro);
    double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    state.PauseTiming();
    if (r.ok()) {
      kill(r->rootPid, SIGKILL);
      waitpid(r->rootPid, nullptr, 0);
    }
    std::filesystem::remove_all(dir);
    state.ResumeTiming();
    if (!r.ok()) {
      state.SkipWithError(r.error().text().c_str());
      return;
    }
    restoreMs.push_back(ms);
  }
}

// Peak RSS of `crbench cr dump --leave-running` (a separate process, so only the dumper's own
// memory counts) dumping `pid`.
long dumperPeakRssKiB(pid_t pid) {
  char exe[4096];
  ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
  if (n <= 0) return -1;
  exe[n] = 0;
  auto crbench = std::filesystem::path(exe).parent_path().parent_path() / "crbench";
  auto dir = std::filesystem::path("/dev/shm") / ("crbench-native-rss-" + std::to_string(getpid()));
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  pid_t c = fork();
  if (c == 0) {
    int nul = open("/dev/null", O_RDWR);
    dup2(nul, 1), dup2(nul, 2);
    std::string p = std::to_string(pid);
    execl(crbench.c_str(), "crbench", "cr", "dump", "--leave-running", "--no-sync", "--tree", p.c_str(), "--images",
          dir.c_str(), static_cast<char*>(nullptr));
    _exit(127);
  }
  int st = 0;
  rusage ru{};
  wait4(c, &st, 0, &ru);
  std::filesystem::remove_all(dir);
  return WIFEXITED(st) && WEXITSTATUS(st) == 0 ? ru.ru_maxrss : -1;
}

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
    double ref = 0;
    if (!sync) {
      state.PauseTiming();
      ref = copyOncePerSecond();
      state.ResumeTiming();
    }
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
    if (ref > 0) pairedRatios.push_back(double(r->bytesWritten) / s / 1e9 / ref);
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
  benchmark::RegisterBenchmark("native_dump_1GiB_tmpfs", BM_NativeDumpTmpfs)->Iterations(5)->Unit(benchmark::kMillisecond)->UseRealTime();
  benchmark::RegisterBenchmark("native_dump_1GiB_disk_fdatasync", BM_NativeDumpDiskSync)->Iterations(1)->Unit(benchmark::kMillisecond)->UseRealTime();
  benchmark::RegisterBenchmark("native_restore_small_process", BM_RestoreSmallProcess)->Iterations(10)->Unit(benchmark::kMillisecond)->UseRealTime();
  benchmark::Initialize(&argc, argv);
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  pid_t small = startSmall();
  dumperRssSmallKiB = dumperPeakRssKiB(small);
  kill(small, SIGKILL);
  waitpid(small, nullptr, 0);
  dumperRssLargeKiB = dumperPeakRssKiB(child);
  kill(child, SIGKILL);
  waitpid(child, nullptr, 0);
  // The figures depend on what else runs (2 shared cores here): say how loaded the machine was.
  if (FILE* f = std::fopen("/proc/loadavg", "r")) {
    double l1 = 0;
    if (std::fscanf(f, "%lf", &l1) == 1) std::printf("\nload average (1 min) after the runs: %.2f on %ld CPUs\n", l1, sysconf(_SC_NPROCESSORS_ONLN));
    std::fclose(f);
  }
  if (bestCopy > 0)
    std::printf("\nprocess_vm_readv plain copy: %.2f GB/s\nnative dump to tmpfs:        %.2f GB/s  (ratio %.2f, target >= 0.8)\n"
              "native dump to disk+fdatasync: %.2f GB/s\n",
              bestCopy, bestDumpTmpfs, bestCopy > 0 ? bestDumpTmpfs / bestCopy : 0.0, bestDumpDisk);
  if (!pairedRatios.empty()) {
    std::sort(pairedRatios.begin(), pairedRatios.end());
    std::printf("paired (each dump / a process_vm_readv pass just before it, %zu pairs): median ratio %.2f, "
                "best %.2f (target >= 0.8)\n",
                pairedRatios.size(), pairedRatios[pairedRatios.size() / 2], pairedRatios.back());
  }
  if (!restoreMs.empty()) {
    std::sort(restoreMs.begin(), restoreMs.end());
    double med = restoreMs[restoreMs.size() / 2];
    std::printf("native restore of a small process (sleep, %zu runs): median %.2f ms, best %.2f ms  "
                "(target <= 20 ms: median/target %.2f)\n",
                restoreMs.size(), med, restoreMs.front(), med / 20.0);
  }
  if (dumperRssSmallKiB > 0 && dumperRssLargeKiB > 0)
    std::printf("dumper peak RSS (crbench cr dump): %ld KiB for sleep, %ld KiB for the 1 GiB working set  "
                "(large/small %.2f; target: independent of the workload's size, 1.0)\n",
                dumperRssSmallKiB, dumperRssLargeKiB, double(dumperRssLargeKiB) / double(dumperRssSmallKiB));
  else
    std::printf("dumper peak RSS: could not run `crbench cr dump` next to this benchmark\n");
  return 0;
}
