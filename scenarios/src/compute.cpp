// crb-compute: a deterministic numeric job whose result proves the computation survived intact.
//   crb-compute run [--cells N] [--busy-percent P] [--state DIR]
//   crb-compute verify [--state DIR]
// The job iterates a coupled logistic-map lattice (chaotic: one flipped bit anywhere, a register
// not restored, or a lost FPU rounding mode makes the state diverge within a few steps) under a
// non-default rounding mode (FE_UPWARD), so a restore that resets MXCSR is caught as well. Every
// 1000 steps it publishes (step, checksum). `verify` recomputes the same number of steps from
// scratch, uninterrupted, and compares checksums: equal means the checkpointed run computed
// exactly what an uninterrupted one does. --busy-percent keeps the job from owning the CPU so the
// verification (which redoes all the work) stays affordable.
#include <cfenv>
#include <cinttypes>
#include <cstdint>
#include <vector>

#include "common.hpp"

namespace {

constexpr uint64_t kPublishEvery = 1000;

struct Lattice {
  std::vector<double> a, b;
  uint64_t step = 0;
  explicit Lattice(size_t n) : a(n), b(n) {
    for (size_t i = 0; i < n; ++i)
      a[i] = 0.1 + 0.8 * double((i * 2654435761u) % 1000003) / 1000003.0;
  }
  void advance() {
    const double r = 3.9, eps = 0.3;
    size_t n = a.size();
    for (size_t i = 0; i < n; ++i) {
      auto f = [r](double x) { return r * x * (1.0 - x); };
      double l = a[(i + n - 1) % n], c = a[i], rr = a[(i + 1) % n];
      b[i] = (1 - eps) * f(c) + 0.5 * eps * (f(l) + f(rr));
    }
    a.swap(b);
    ++step;
  }
  uint64_t checksum() const {
    uint64_t h = 1469598103934665603ULL;
    for (double d : a) {
      uint64_t bits;
      std::memcpy(&bits, &d, sizeof bits);
      h = (h ^ bits) * 1099511628211ULL;
    }
    return h;
  }
};

int run(int argc, char** argv) {
  size_t cells = std::strtoull(crbw::opt(argc, argv, "--cells", "4096").c_str(), nullptr, 10);
  double busy = std::strtod(crbw::opt(argc, argv, "--busy-percent", "20").c_str(), nullptr);
  std::string state = crbw::opt(argc, argv, "--state", "/tmp/crb-compute");
  if (cells < 3) crbw::die("crb-compute: --cells must be >= 3");
  if (busy <= 0 || busy > 100) crbw::die("crb-compute: --busy-percent must be in (0, 100]");
  ::mkdir(state.c_str(), 0755);
  std::fesetround(FE_UPWARD);
  Lattice lat(cells);
  crbw::writePid(state + "/pid");
  for (;;) {
    double t0 = crbw::nowSeconds();
    for (uint64_t i = 0; i < kPublishEvery; ++i) lat.advance();
    char buf[256];
    std::snprintf(buf, sizeof buf,
                  "cells=%zu\nstep=%" PRIu64 "\nchecksum=%016" PRIx64 "\nrounding=%d\n", cells,
                  lat.step, lat.checksum(), std::fegetround() == FE_UPWARD ? 1 : 0);
    crbw::writeStatus(state + "/status", buf);
    double spent = crbw::nowSeconds() - t0;
    crbw::sleepSeconds(spent * (100.0 - busy) / busy);
  }
}

int verify(int argc, char** argv) {
  std::string state = crbw::opt(argc, argv, "--state", "/tmp/crb-compute");
  std::string st = crbw::readText(state + "/status");
  if (st.empty())
    crbw::die("crb-compute verify: no status in " + state + " (is the workload running?)");
  size_t cells = std::strtoull(crbw::field(st, "cells").c_str(), nullptr, 10);
  uint64_t step = std::strtoull(crbw::field(st, "step").c_str(), nullptr, 10);
  std::string got = crbw::field(st, "checksum");
  std::fesetround(FE_UPWARD);
  Lattice ref(cells);
  while (ref.step < step) ref.advance();
  char want[32];
  std::snprintf(want, sizeof want, "%016" PRIx64, ref.checksum());
  bool ok = got == want && crbw::field(st, "rounding") == "1";
  std::printf("step=%" PRIu64 " checksum=%s reference=%s rounding_kept=%s %s\n", step, got.c_str(),
              want, crbw::field(st, "rounding").c_str(), ok ? "match" : "MISMATCH");
  return ok ? 0 : 1;
}

int progress(int argc, char** argv) {
  return crbw::printStatusField(argc, argv, "/tmp/crb-compute", "step");
}

}  // namespace

int main(int argc, char** argv) {
  return crbw::dispatch(argc, argv, {{"run", run}, {"verify", verify}, {"progress", progress}},
                        "usage: crb-compute run [--cells N] [--busy-percent P] [--state DIR]\n"
                        "       crb-compute verify [--state DIR]\n");
}
