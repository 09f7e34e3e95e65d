// Dirty tracking with userfaultfd write-protect (async) + PAGEMAP_SCAN. See dirty.hpp.
#include "engine/native/dirty.hpp"

#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>

#include "engine/native/internal.hpp"
#include "engine/native/procfs.hpp"

namespace crb::native {

namespace {
// Debian 12's headers predate these (Linux 6.4 / 6.7).
constexpr uint64_t kFeatureWpUnpopulated = 1ull << 13;
constexpr uint64_t kFeatureWpAsync = 1ull << 15;
constexpr unsigned kUffdUserModeOnly = 1;
}  // namespace

Result<Fd> injectUserfaultfd(Seizure& s, pid_t pid, bool allowUserModeOnly, bool* userModeOnly) {
  auto inj = s.injector(pid, pid);
  long remote = -1;
  std::string why;
  // Recorded first: if crbench dies before the close below, the guardian closes it (guardian.hpp).
  auto guard = s.guardian();
  int slot = -1;
  if (guard) {
    CRB_ASSIGN(slot, guard->noteRemoteFd(pid, SYS_userfaultfd));
  }
  for (unsigned extra : {0u, kUffdUserModeOnly}) {
    if (extra && !allowUserModeOnly) break;
    CRB_ASSIGN(long r, inj.call(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK | extra));
    s.noteStray(inj);
    if (r >= 0) {
      if (guard) guard->noteRemoteFdNumber(slot, int(r));
      remote = r;
      if (userModeOnly) *userModeOnly = extra != 0;
      break;
    }
    why = std::strerror(int(-r));
  }
  if (remote < 0 && guard) guard->fixed(slot);
  if (remote < 0)
    return makeError(fmt::format("userfaultfd() in pid {} failed: {}", pid, why),
                     allowUserModeOnly ? "dirty tracking needs CONFIG_USERFAULTFD"
                                       : "needs CONFIG_USERFAULTFD and CAP_SYS_PTRACE in the tree (or "
                                         "vm.unprivileged_userfaultfd=1)");
  faultPoint("uffd");
  auto local = grabRemoteFd(pid, int(remote));
  // Whatever happened, the target must not keep the descriptor: crbench's copy is the only one,
  // so the context (and every protection) dies with crbench.
  auto closed = inj.call(SYS_close, uint64_t(remote));
  s.noteStray(inj);
  if (guard && closed.ok()) guard->fixed(slot);
  if (!local.ok()) return local.error().context(fmt::format("take the userfaultfd of pid {}", pid));
  if (!closed.ok()) return closed.error().context("close the userfaultfd in the target");
  if (::fcntl(local->get(), F_SETFD, FD_CLOEXEC) != 0) return sysError("FD_CLOEXEC on a userfaultfd", errno);
  return std::move(*local);
}

Result<std::unique_ptr<DirtyTracker>> DirtyTracker::attach(Seizure& s, pid_t pid) {
  auto t = std::make_unique<DirtyTracker>();
  t->pid_ = pid;
  t->pagemap_.reset(::open(fmt::format("/proc/{}/pagemap", pid).c_str(), O_RDONLY | O_CLOEXEC));
  if (!t->pagemap_.valid()) return sysError(fmt::format("open /proc/{}/pagemap", pid), errno);
  CRB_ASSIGN(t->uffd_, injectUserfaultfd(s, pid, true, &t->userModeOnly_));
  int local = t->uffd_.get();
  uffdio_api api{};
  api.api = UFFD_API;
  api.features = kFeatureWpAsync | kFeatureWpUnpopulated;
  if (::ioctl(local, UFFDIO_API, &api) != 0)
    return sysError(fmt::format("UFFDIO_API with WP_ASYNC|WP_UNPOPULATED for pid {} (kernel < 6.7?)", pid), errno);
  // PAGEMAP_SCAN must exist too (same kernel release as WP_ASYNC, but check: a backport may differ).
  PmScanArg probe{};
  probe.size = sizeof probe;
  if (::ioctl(t->pagemap_.get(), kPagemapScan, &probe) != 0 && errno == ENOTTY)
    return makeError("this kernel has no PAGEMAP_SCAN ioctl (Linux >= 6.7)", "pre-copy needs Linux >= 6.7");
  t->method_ = kUffdWp;
  return t;
}

Result<bool> DirtyTracker::track(uint64_t start, uint64_t end) {
  uffdio_register reg{};
  reg.range = {start, end - start};
  reg.mode = UFFDIO_REGISTER_MODE_WP;
  if (::ioctl(uffd_.get(), UFFDIO_REGISTER, &reg) != 0) {
    // The range went away or changed type meanwhile: the final round copies it whole.
    if (errno == EINVAL || errno == ENOMEM || errno == EBUSY) return false;
    return sysError(fmt::format("UFFDIO_REGISTER {:#x}-{:#x} of pid {}", start, end, pid_), errno);
  }
  tracked_.push_back({start, end});
  uffdio_writeprotect wp{};
  wp.range = {start, end - start};
  wp.mode = UFFDIO_WRITEPROTECT_MODE_WP;
  if (::ioctl(uffd_.get(), UFFDIO_WRITEPROTECT, &wp) != 0) {
    uffdio_range r{start, end - start};
    ::ioctl(uffd_.get(), UFFDIO_UNREGISTER, &r);
    tracked_.pop_back();
    if (errno == ENOENT || errno == EINVAL) return false;
    return sysError(fmt::format("UFFDIO_WRITEPROTECT {:#x}-{:#x} of pid {}", start, end, pid_), errno);
  }
  return true;
}

Result<std::vector<PageRun>> DirtyTracker::collect(uint64_t start, uint64_t end) {
  std::vector<PageRun> out;
  std::vector<PageRegion> vec(1024);
  for (uint64_t at = start; at < end;) {
    PmScanArg a{};
    a.size = sizeof a;
    a.flags = kScanWpMatching | kScanCheckWpAsync;
    a.start = at;
    a.end = end;
    a.vec = reinterpret_cast<uint64_t>(vec.data());
    a.vec_len = vec.size();
    a.category_mask = kIsWritten;
    a.return_mask = kIsWritten;
    long n = ::ioctl(pagemap_.get(), kPagemapScan, &a);
    if (n < 0) return sysError(fmt::format("PAGEMAP_SCAN (written, re-protect) of pid {} at {:#x}", pid_, at), errno);
    for (long i = 0; i < n; i++) {
      auto& r = vec[size_t(i)];
      if (!out.empty() && out.back().addr + out.back().pages * kPage == r.start)
        out.back().pages += (r.end - r.start) / kPage;
      else
        out.push_back({r.start, (r.end - r.start) / kPage});
    }
    if (a.walk_end <= at) break;
    at = a.walk_end;
  }
  return out;
}

void DirtyTracker::stop() {
  if (!uffd_.valid()) return;
  for (auto [s, e] : tracked_) {
    uffdio_range r{s, e - s};
    ::ioctl(uffd_.get(), UFFDIO_UNREGISTER, &r);  // a range unmapped meanwhile fails harmlessly
  }
  tracked_.clear();
  uffd_.reset();  // last reference: the kernel clears whatever is still registered
}

}  // namespace crb::native
