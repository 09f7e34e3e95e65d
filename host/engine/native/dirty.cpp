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
  for (unsigned extra : {0u, kUffdUserModeOnly}) {
    if (extra && !allowUserModeOnly) break;
    CRB_ASSIGN(long r, inj.call(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK | extra));
    s.noteStray(inj);
    if (r >= 0) {
      remote = r;
      if (userModeOnly) *userModeOnly = extra != 0;
      break;
    }
    why = std::strerror(int(-r));
  }
  if (remote < 0)
    return makeError(fmt::format("userfaultfd() in pid {} failed: {}", pid, why),
                     allowUserModeOnly ? "dirty tracking needs CONFIG_USERFAULTFD"
                                       : "needs CONFIG_USERFAULTFD and CAP_SYS_PTRACE in the tree (or "
                                         "vm.unprivileged_userfaultfd=1)");
  auto local = grabRemoteFd(pid, int(remote));
  // Whatever happened, the target must not keep the descriptor: crbench's copy is the only one,
  // so the context (and every protection) dies with crbench.
  auto closed = inj.call(SYS_close, uint64_t(remote));
  s.noteStray(inj);
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
  // Shared memory (shmem: shared anonymous, memfd, tmpfs) too where the kernel can (>= 5.19); a
  // refused feature leaves the context unconfigured, so the call can be made again without it.
  api.features = kFeatureWpAsync | kFeatureWpUnpopulated | UFFD_FEATURE_WP_HUGETLBFS_SHMEM;
  t->shmem_ = true;
  if (::ioctl(local, UFFDIO_API, &api) != 0 && errno == EINVAL) {
    api = {};
    api.api = UFFD_API;
    api.features = kFeatureWpAsync | kFeatureWpUnpopulated;
    t->shmem_ = false;
    if (::ioctl(local, UFFDIO_API, &api) != 0)
      return sysError(fmt::format("UFFDIO_API with WP_ASYNC|WP_UNPOPULATED for pid {} (kernel < 6.7?)", pid), errno);
  } else if (t->shmem_ && !(api.features & UFFD_FEATURE_WP_HUGETLBFS_SHMEM)) {
    t->shmem_ = false;
  }
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

namespace {
void addRun(std::vector<PageRun>& out, uint64_t s, uint64_t e) {
  if (!out.empty() && out.back().addr + out.back().pages * kPage == s)
    out.back().pages += (e - s) / kPage;
  else
    out.push_back({s, (e - s) / kPage});
}
}  // namespace

Status DirtyTracker::scanFinal(uint64_t start, uint64_t end, std::vector<PageRun>* data,
                               std::vector<PageRun>* written) {
  std::vector<PageRegion> vec(1024);
  for (uint64_t at = start; at < end;) {
    PmScanArg a{};
    a.size = sizeof a;
    a.flags = kScanCheckWpAsync;  // no WP_MATCHING: nothing is re-protected, the walk only reads
    a.start = at;
    a.end = end;
    a.vec = reinterpret_cast<uint64_t>(vec.data());
    a.vec_len = vec.size();
    // Not PAGE_IS_FILE: asking for it makes the walk look up every page's struct page (4x slower
    // here); a private anonymous mapping holds no file pages anyway.
    a.category_inverted = kIsPfnZero;
    a.category_mask = kIsPfnZero;
    a.category_anyof_mask = kIsPresent | kIsSwapped;
    a.return_mask = kIsPresent | kIsSwapped | kIsWritten;
    long n = ::ioctl(pagemap_.get(), kPagemapScan, &a);
    if (n < 0) return sysError(fmt::format("PAGEMAP_SCAN (final, data + written) of pid {} at {:#x}", pid_, at), errno);
    for (long i = 0; i < n; i++) {
      auto& r = vec[size_t(i)];
      addRun(*data, r.start, r.end);
      if (r.categories & kIsWritten) addRun(*written, r.start, r.end);
    }
    if (a.walk_end <= at) break;
    at = a.walk_end;
  }
  return success();
}

Status DirtyTracker::protectedPages(uint64_t start, uint64_t end, std::vector<PageRun>* out) {
  std::vector<PageRegion> vec(1024);
  for (uint64_t at = start; at < end;) {
    PmScanArg a{};
    a.size = sizeof a;
    a.flags = kScanCheckWpAsync;
    a.start = at;
    a.end = end;
    a.vec = reinterpret_cast<uint64_t>(vec.data());
    a.vec_len = vec.size();
    a.category_inverted = kIsWritten;
    a.category_mask = kIsWritten;
    a.category_anyof_mask = kIsPresent | kIsSwapped;  // a marker counts as swapped
    a.return_mask = kIsPresent | kIsSwapped;
    long n = ::ioctl(pagemap_.get(), kPagemapScan, &a);
    if (n < 0) return sysError(fmt::format("PAGEMAP_SCAN (protected pages) of pid {} at {:#x}", pid_, at), errno);
    for (long i = 0; i < n; i++) addRun(*out, vec[size_t(i)].start, vec[size_t(i)].end);
    if (a.walk_end <= at) break;
    at = a.walk_end;
  }
  return success();
}

Status DirtyTracker::protect(uint64_t start, uint64_t end) {
  uffdio_writeprotect wp{};
  wp.range = {start, end - start};
  wp.mode = UFFDIO_WRITEPROTECT_MODE_WP;
  if (::ioctl(uffd_.get(), UFFDIO_WRITEPROTECT, &wp) != 0)
    return sysError(fmt::format("UFFDIO_WRITEPROTECT {:#x}-{:#x} of pid {}", start, end, pid_), errno);
  return success();
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
