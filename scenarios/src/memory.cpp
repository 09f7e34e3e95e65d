// crb-memory: a workload of known size that dirties its memory at a known rate and can prove its
// contents are intact.
//   crb-memory run --size-mib N --dirty-mib-s R [--state DIR]
//   crb-memory verify [--state DIR] [--timeout S]   (asks the running workload to check itself)
//   crb-memory ready [--state DIR]                  (exit 0 once the memory is filled)
// Every 4 KiB page holds words derived from (page number, page generation, word index); a write
// bumps the page's generation. A verify recomputes every page from its generation, so a page lost,
// stale or mixed up by a checkpoint/restore shows as a bad page. The check must run inside the
// workload because only it knows the generations; `verify` signals it and waits for the answer.
#include <sys/mman.h>

#include <cinttypes>
#include <csignal>
#include <cstdint>
#include <vector>

#include "common.hpp"

namespace {

constexpr size_t kPage = 4096;
constexpr size_t kWords = kPage / sizeof(uint64_t);

volatile sig_atomic_t verifyRequested = 0;
volatile sig_atomic_t stopRequested = 0;

uint64_t mix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

void fillPage(uint64_t* page, uint64_t index, uint32_t gen) {
  uint64_t seed = mix(index * 0x100000001b3ULL + gen);
  for (size_t w = 0; w < kWords; ++w) page[w] = seed ^ (w * 0x9e3779b97f4a7c15ULL);
}

bool pageOk(const uint64_t* page, uint64_t index, uint32_t gen) {
  uint64_t seed = mix(index * 0x100000001b3ULL + gen);
  for (size_t w = 0; w < kWords; ++w)
    if (page[w] != (seed ^ (w * 0x9e3779b97f4a7c15ULL))) return false;
  return true;
}

int run(int argc, char** argv) {
  uint64_t sizeMiB = std::strtoull(crbw::opt(argc, argv, "--size-mib", "64").c_str(), nullptr, 10);
  double rateMiB = std::strtod(crbw::opt(argc, argv, "--dirty-mib-s", "0").c_str(), nullptr);
  std::string state = crbw::opt(argc, argv, "--state", "/tmp/crb-memory");
  if (sizeMiB == 0) crbw::die("crb-memory: --size-mib must be > 0");
  if (rateMiB < 0) crbw::die("crb-memory: --dirty-mib-s must be >= 0");
  ::mkdir(state.c_str(), 0755);

  size_t bytes = sizeMiB << 20;
  size_t pages = bytes / kPage;
  void* mem = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (mem == MAP_FAILED)
    crbw::die("crb-memory: mmap of " + std::to_string(sizeMiB) +
              " MiB failed: " + std::strerror(errno));
  auto* base = static_cast<uint64_t*>(mem);
  std::vector<uint32_t> gen(pages, 0);

  // Handlers and pid first: a verify asked for while the memory is still being filled is answered
  // once it is full (not refused as "no pid"), and `ready` can tell filling from running.
  struct sigaction sa {};
  sa.sa_handler = [](int) { verifyRequested = 1; };
  sigaction(SIGUSR1, &sa, nullptr);
  sa.sa_handler = [](int) { stopRequested = 1; };
  sigaction(SIGTERM, &sa, nullptr);

  uint64_t verifySeq = 0, badPages = 0, firstBad = UINT64_MAX, written = 0;
  // Walk pages with a stride coprime to the page count so dirtying spreads over the whole area.
  uint64_t stride = 7919;
  while (pages % stride == 0) stride += 2;
  uint64_t cursor = 0;
  auto status = [&](const char* phase) {
    char buf[512];
    std::snprintf(buf, sizeof buf,
                  "phase=%s\nsize_mib=%" PRIu64
                  "\ndirty_mib_s=%g\npages=%zu\npages_written=%" PRIu64 "\nverify_seq=%" PRIu64
                  "\nbad_pages=%" PRIu64 "\nfirst_bad=%" PRId64 "\n",
                  phase, sizeMiB, rateMiB, pages, written, verifySeq, badPages,
                  firstBad == UINT64_MAX ? int64_t{-1} : int64_t(firstBad));
    crbw::writeStatus(state + "/status", buf);
  };
  status("filling");
  crbw::writePid(state + "/pid");
  for (size_t p = 0; p < pages; ++p) fillPage(base + p * kWords, p, 0);
  status("running");

  const double tick = 0.01;
  double start = crbw::nowSeconds(), lastStatus = 0;
  while (!stopRequested) {
    if (verifyRequested) {
      verifyRequested = 0;
      badPages = 0;
      firstBad = UINT64_MAX;
      for (size_t p = 0; p < pages; ++p)
        if (!pageOk(base + p * kWords, p, gen[p])) {
          ++badPages;
          if (firstBad == UINT64_MAX) firstBad = p;
        }
      ++verifySeq;
      status("running");
    }
    if (rateMiB > 0) {
      double due = (crbw::nowSeconds() - start) * rateMiB * (1 << 20) / kPage;
      while (written < due && !verifyRequested) {
        uint64_t p = cursor % pages;
        cursor += stride;
        ++gen[p];
        fillPage(base + p * kWords, p, gen[p]);
        ++written;
      }
    }
    double now = crbw::nowSeconds();
    if (now - lastStatus > 1.0) {
      status("running");
      lastStatus = now;
    }
    crbw::sleepSeconds(tick);
  }
  status("stopped");
  return 0;
}

int verify(int argc, char** argv) {
  std::string state = crbw::opt(argc, argv, "--state", "/tmp/crb-memory");
  double timeout = std::strtod(crbw::opt(argc, argv, "--timeout", "120").c_str(), nullptr);
  pid_t pid = crbw::readPid(state + "/pid");
  if (pid <= 0)
    crbw::die("crb-memory verify: no pid in " + state + "/pid (is the workload running?)");
  uint64_t before = std::strtoull(
      crbw::field(crbw::readText(state + "/status"), "verify_seq").c_str(), nullptr, 10);
  if (kill(pid, SIGUSR1) != 0)
    crbw::die("crb-memory verify: workload pid " + std::to_string(pid) + " is gone");
  double deadline = crbw::nowSeconds() + timeout;
  while (crbw::nowSeconds() < deadline) {
    std::string st = crbw::readText(state + "/status");
    if (std::strtoull(crbw::field(st, "verify_seq").c_str(), nullptr, 10) > before) {
      std::string bad = crbw::field(st, "bad_pages");
      std::printf("size_mib=%s bad_pages=%s first_bad=%s\n", crbw::field(st, "size_mib").c_str(),
                  bad.c_str(), crbw::field(st, "first_bad").c_str());
      return bad == "0" ? 0 : 1;
    }
    crbw::sleepSeconds(0.05);
  }
  crbw::die("crb-memory verify: the workload did not answer within the timeout");
}

// Exit 0 once the whole memory is filled (phase=running): what the run waits for before it
// checkpoints, so the image holds the size the parameters say.
int ready(int argc, char** argv) {
  std::string state = crbw::opt(argc, argv, "--state", "/tmp/crb-memory");
  std::string phase = crbw::field(crbw::readText(state + "/status"), "phase");
  std::printf("phase=%s\n", phase.empty() ? "none" : phase.c_str());
  return phase == "running" ? 0 : 1;
}

int progress(int argc, char** argv) {
  return crbw::printStatusField(argc, argv, "/tmp/crb-memory", "pages_written");
}

}  // namespace

int main(int argc, char** argv) {
  return crbw::dispatch(argc, argv, {{"run", run}, {"verify", verify}, {"ready", ready}, {"progress", progress}},
                        "usage: crb-memory run --size-mib N --dirty-mib-s R [--state DIR]\n"
                        "       crb-memory verify [--state DIR] [--timeout S]\n"
                        "       crb-memory ready [--state DIR]\n");
}
