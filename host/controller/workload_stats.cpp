#include "controller/workload_stats.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstring>
#include <fstream>
#include <sstream>
#include <thread>

#include "core/clock.hpp"
#include "core/fsutil.hpp"
#include "runtime/container.hpp"
#include "runtime/vm.hpp"

namespace crb {
namespace {

constexpr uint64_t kPresent = 1ULL << 63, kSwapped = 1ULL << 62, kSoftDirty = 1ULL << 55;

Json unsupported(const std::string& method, const std::string& reason) {
  return Json{{"status", "unsupported"}, {"method", method}, {"reason", reason}};
}

// Soft-dirty pages of one process: every mapped page of its writable mappings with bit 55 set.
Result<uint64_t> softDirtyPages(pid_t pid) {
  std::string base = "/proc/" + std::to_string(pid);
  CRB_ASSIGN(std::string maps, readFile(base + "/maps"));
  Fd pm(::open((base + "/pagemap").c_str(), O_RDONLY | O_CLOEXEC));
  if (!pm.valid()) return sysError("open " + base + "/pagemap", errno);
  const long page = ::sysconf(_SC_PAGESIZE);
  uint64_t dirty = 0;
  std::istringstream in(maps);
  std::string line;
  std::vector<uint64_t> buf;
  while (std::getline(in, line)) {
    unsigned long start = 0, end = 0;
    char perms[8] = {};
    if (std::sscanf(line.c_str(), "%lx-%lx %7s", &start, &end, perms) != 3 || perms[1] != 'w') continue;
    for (unsigned long at = start; at < end;) {
      size_t n = std::min<size_t>((end - at) / page, 4096);
      buf.resize(n);
      ssize_t got = ::pread(pm.get(), buf.data(), n * 8, static_cast<off_t>(at / page * 8));
      if (got <= 0) break;
      for (size_t i = 0; i < static_cast<size_t>(got) / 8; i++)
        if ((buf[i] & (kPresent | kSwapped)) && (buf[i] & kSoftDirty)) dirty++;
      at += n * page;
    }
  }
  return dirty;
}

Json containerDirtyRate(ContainerSandbox& c, int windowMs) {
  const char* method = "soft-dirty (clear_refs 4 + pagemap bit 55) over the workload's processes";
  const SoftDirty& sd = softDirtySupport();
  if (!sd.works) return unsupported(method, sd.reason + "; dirty pages of a container can then only be tracked "
                                                        "with userfaultfd write-protect from inside the process "
                                                        "(the native engine's pre-copy, issue #9)");
  auto pids = c.pids();
  if (!pids.ok()) return unsupported(method, "cannot list the container's processes: " + pids.error().message);
  std::vector<pid_t> workload;
  for (pid_t p : *pids)
    if (p != c.initPid()) workload.push_back(p);  // the agent is not the workload
  if (workload.empty()) return unsupported(method, "the container runs no workload process besides the agent");
  auto t0 = Clock::now();
  for (pid_t p : workload)
    if (auto st = writeControlFile("/proc/" + std::to_string(p) + "/clear_refs", "4"); !st.ok())
      return unsupported(method, st.error().message);
  std::this_thread::sleep_for(std::chrono::milliseconds(windowMs));
  uint64_t pages = 0;
  for (pid_t p : workload) {
    auto d = softDirtyPages(p);
    if (!d.ok()) return unsupported(method, d.error().message);
    pages += *d;
  }
  double seconds = secondsSince(t0);
  uint64_t bytes = pages * static_cast<uint64_t>(::sysconf(_SC_PAGESIZE));
  return Json{{"status", "measured"},
              {"method", method},
              {"window_ms", seconds * 1e3},
              {"dirty_bytes", bytes},
              {"bytes_per_second", bytes / seconds},
              {"processes", workload.size()}};
}

Json vmDirtyRate(VmSandbox& vm, int windowMs) {
  const char* method = "QEMU calc-dirty-rate, page-sampling mode (4096 sampled pages per GiB of guest RAM, hashed at start and end of the window; whole guest)";
  // page-sampling, not dirty-bitmap: under TCG (QEMU 10.0) dirty-bitmap mode reported 0 MiB/s for a
  // guest writing 16 MiB/s, while page-sampling reported 15 MiB/s.
  auto& q = vm.qmp();
  auto t0 = Clock::now();
  auto started = q.execute("calc-dirty-rate",
                           Json{{"calc-time", windowMs}, {"calc-time-unit", "millisecond"}, {"mode", "page-sampling"}, {"sample-pages", 4096}});
  if (!started.ok()) return unsupported(method, "QEMU refused calc-dirty-rate: " + started.error().message);
  for (;;) {
    std::this_thread::sleep_for(std::chrono::milliseconds(std::max(20, windowMs / 4)));
    auto r = q.execute("query-dirty-rate", Json{{"calc-time-unit", "millisecond"}});
    if (!r.ok()) return unsupported(method, "query-dirty-rate failed: " + r.error().message);
    std::string status = r->value("status", std::string());
    if (status == "measured") {
      // QEMU reports MiB/s as an integer ("dirty-rate").
      double mibs = r->value("dirty-rate", 0.0);
      return Json{{"status", "measured"},
                  {"method", method},
                  {"window_ms", r->value("calc-time", static_cast<double>(windowMs))},
                  {"bytes_per_second", mibs * 1024 * 1024},
                  {"qemu", *r}};
    }
    if (msSince(t0) > windowMs + 10000)
      return unsupported(method, "QEMU did not finish calc-dirty-rate within the window + 10 s (status " + status + ")");
  }
}

}  // namespace

const SoftDirty& softDirtySupport() {
  static const SoftDirty cached = [] {
    SoftDirty s;
    const long page = ::sysconf(_SC_PAGESIZE);
    void* m = ::mmap(nullptr, page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) {
      s.reason = std::string("mmap for the soft-dirty self-test failed: ") + std::strerror(errno);
      return s;
    }
    static_cast<volatile char*>(m)[0] = 1;
    auto cleared = writeControlFile("/proc/self/clear_refs", "4");
    static_cast<volatile char*>(m)[0] = 2;
    uint64_t entry = 0;
    Fd pm(::open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC));
    bool read = pm.valid() && ::pread(pm.get(), &entry, 8, reinterpret_cast<uintptr_t>(m) / page * 8) == 8;
    ::munmap(m, page);
    if (!cleared.ok())
      s.reason = "clear_refs=4 refused: " + cleared.error().message;
    else if (!read)
      s.reason = "cannot read /proc/self/pagemap";
    else if (!(entry & kSoftDirty))
      s.reason = "this kernel keeps no soft-dirty bits (a page written after clear_refs=4 showed pagemap bit 55 clear; "
                 "CONFIG_MEM_SOFT_DIRTY is off)";
    else
      s.works = true;
    return s;
  }();
  return cached;
}

Json workloadMemory(const Json& digest) {
  if (!digest.is_object() || !digest.contains("processes")) return unsupported("agent digest", "no state digest");
  uint64_t pss = 0, rss = 0, anon = 0;
  size_t n = 0;
  bool havePss = true;
  for (auto& p : digest["processes"]) {
    if (p.value("agent", false)) continue;
    n++;
    if (!p.contains("pss_kib")) havePss = false;
    pss += p.value("pss_kib", 0ULL) * 1024;
    rss += p.value("rss_kib", 0ULL) * 1024;
    if (p.contains("maps")) anon += p["maps"].value("anon_bytes", 0ULL);
  }
  if (n == 0) return unsupported("agent digest", "the digest lists no workload process");
  Json j{{"status", "measured"},
         {"method", "agent digest before the checkpoint: /proc/<pid>/smaps_rollup of every workload process"},
         {"processes", n},
         {"rss_bytes", rss},
         {"anon_mapped_bytes", anon}};
  if (havePss) j["pss_bytes"] = pss;
  return j;
}

Json measureDirtyRate(Sandbox& sb, int windowMs) {
  if (windowMs <= 0) return unsupported("none", "dirty-rate measurement turned off (window 0 ms)");
  if (auto* c = dynamic_cast<ContainerSandbox*>(&sb)) return containerDirtyRate(*c, windowMs);
  if (auto* v = dynamic_cast<VmSandbox*>(&sb)) return vmDirtyRate(*v, windowMs);
  return unsupported("none", "this runtime flavor (" + sb.describe().value("runtime", std::string("?")) +
                                 ") has no dirty-rate measurement in crbench yet");
}

}  // namespace crb
