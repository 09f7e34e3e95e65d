// Dirty tracking with userfaultfd write-protect (async) + PAGEMAP_SCAN. See dirty.hpp.
#include "engine/native/dirty.hpp"

#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "engine/native/internal.hpp"
#include "engine/native/procfs.hpp"

namespace crb::native {

namespace {
// Debian 12's headers predate these (Linux 6.4 / 6.7).
constexpr uint64_t kFeatureWpUnpopulated = 1ull << 13;
constexpr uint64_t kFeatureWpAsync = 1ull << 15;
constexpr unsigned kUffdUserModeOnly = 1;

void addRun(std::vector<PageRun>& out, uint64_t s, uint64_t e) {
  if (!out.empty() && out.back().addr + out.back().pages * kPage == s)
    out.back().pages += (e - s) / kPage;
  else
    out.push_back({s, (e - s) / kPage});
}
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

PagemapEntry parsePagemapEntry(uint64_t e) {
  PagemapEntry p;
  p.present = e >> 63 & 1;
  p.swapped = e >> 62 & 1;
  p.fileOrShared = e >> 61 & 1;
  p.exclusive = e >> 56 & 1;
  p.softDirty = e >> 55 & 1;
  p.pfn = p.present ? e & ((1ull << 55) - 1) : 0;
  return p;
}

namespace {
// A fresh page of our own, written: soft-dirty set; after clear_refs "4": clear; written again:
// set. Without CONFIG_MEM_SOFT_DIRTY the bit is never set (clear_refs "4" is still accepted).
bool probeSoftDirty(std::string* why) {
  void* m = ::mmap(nullptr, kPage, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (m == MAP_FAILED) {
    *why = "soft-dirty probe: mmap failed";
    return false;
  }
  auto* c = static_cast<volatile char*>(m);
  Fd pm(::open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC));
  Fd cr(::open("/proc/self/clear_refs", O_WRONLY | O_CLOEXEC));
  auto bit = [&]() -> int {
    uint64_t e = 0;
    off_t off = off_t(reinterpret_cast<uintptr_t>(m) / kPage * 8);
    if (::pread(pm.get(), &e, 8, off) != 8) return -1;
    return parsePagemapEntry(e).softDirty ? 1 : 0;
  };
  bool ok = false;
  if (!pm.valid() || !cr.valid()) {
    *why = "soft-dirty probe: cannot open /proc/self/pagemap or clear_refs";
  } else {
    c[0] = 1;
    int first = bit();
    bool cleared = ::write(cr.get(), "4", 1) == 1;
    int afterClear = bit();
    c[0] = 2;
    int again = bit();
    ok = first == 1 && cleared && afterClear == 0 && again == 1;
    if (!ok)
      *why = fmt::format("no soft-dirty tracking (pagemap bit 55 {} after a write{}; CONFIG_MEM_SOFT_DIRTY off?)",
                         first == 1 ? "set" : "not set", cleared ? "" : ", clear_refs refused \"4\"");
  }
  ::munmap(m, kPage);
  return ok;
}
}  // namespace

DirtyMethods probeDirtyMethods() {
  DirtyMethods d;
  std::string why;
  int fd = int(::syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK));
  if (fd < 0) fd = int(::syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK | kUffdUserModeOnly));
  if (fd < 0) {
    why = fmt::format("userfaultfd(): {}", std::strerror(errno));
  } else {
    uffdio_api api{};
    api.api = UFFD_API;
    api.features = kFeatureWpAsync | kFeatureWpUnpopulated;
    d.uffdWpAsync = ::ioctl(fd, UFFDIO_API, &api) == 0;
    if (!d.uffdWpAsync) why = "UFFDIO_API refuses WP_ASYNC|WP_UNPOPULATED (Linux < 6.7)";
    ::close(fd);
  }
  Fd pm(::open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC));
  PmScanArg probe{};
  probe.size = sizeof probe;
  d.pagemapScan = pm.valid() && !(::ioctl(pm.get(), kPagemapScan, &probe) != 0 && errno == ENOTTY);
  if (!d.pagemapScan) why += std::string(why.empty() ? "" : "; ") + "no PAGEMAP_SCAN ioctl (Linux < 6.7)";
  std::string sdWhy;
  d.softDirty = probeSoftDirty(&sdWhy);
  if (!d.softDirty) why += std::string(why.empty() ? "" : "; ") + sdWhy;
  d.why = why;
  return d;
}

Result<std::string> chooseDirtyMethod(const DirtyMethods& have, const std::string& forced) {
  bool uffd = have.uffdWpAsync && have.pagemapScan;
  if (forced.empty() || forced == "auto") {
    if (uffd) return std::string(DirtyTracker::kUffdWp);
    if (have.softDirty) return std::string(DirtyTracker::kSoftDirty);
    return makeError("no dirty-page tracking on this kernel: " + have.why,
                     "pre-copy needs Linux >= 6.7 (userfaultfd WP_ASYNC + PAGEMAP_SCAN) or CONFIG_MEM_SOFT_DIRTY");
  }
  if (forced == "uffd-wp" || forced == DirtyTracker::kUffdWp) {
    if (uffd) return std::string(DirtyTracker::kUffdWp);
    return makeError("dirty tracking uffd-wp was asked for, but this kernel lacks it: " + have.why,
                     "pre-copy with uffd-wp needs Linux >= 6.7; drop --dirty-tracking / CRBENCH_DIRTY_TRACKING "
                     "to let crbench choose");
  }
  if (forced == DirtyTracker::kSoftDirty) {
    if (have.softDirty) return std::string(DirtyTracker::kSoftDirty);
    return makeError("dirty tracking soft-dirty was asked for, but this kernel has none: " + have.why,
                     "soft-dirty needs a kernel built with CONFIG_MEM_SOFT_DIRTY; drop --dirty-tracking / "
                     "CRBENCH_DIRTY_TRACKING to let crbench choose");
  }
  return makeError(fmt::format("unknown dirty tracking method '{}'", forced),
                   "use auto, uffd-wp or soft-dirty (--dirty-tracking or CRBENCH_DIRTY_TRACKING)");
}

Result<std::unique_ptr<DirtyTracker>> DirtyTracker::attach(Seizure& s, pid_t pid, const std::string& method) {
  if (method != kSoftDirty) return attach(s, pid);
  auto t = std::make_unique<DirtyTracker>();
  t->pid_ = pid;
  t->method_ = kSoftDirty;
  t->pagemap_.reset(::open(fmt::format("/proc/{}/pagemap", pid).c_str(), O_RDONLY | O_CLOEXEC));
  if (!t->pagemap_.valid()) return sysError(fmt::format("open /proc/{}/pagemap", pid), errno);
  t->clearRefs_.reset(::open(fmt::format("/proc/{}/clear_refs", pid).c_str(), O_WRONLY | O_CLOEXEC));
  if (!t->clearRefs_.valid()) return sysError(fmt::format("open /proc/{}/clear_refs", pid), errno);
  return t;
}

Status DirtyTracker::rearm() {
  if (method_ != kSoftDirty) return success();
  if (::write(clearRefs_.get(), "4", 1) != 1) return sysError(fmt::format("clear_refs 4 of pid {}", pid_), errno);
  return success();
}

Status DirtyTracker::readSoftDirty(uint64_t start, uint64_t end, std::vector<PageRun>* data,
                                   std::vector<PageRun>* written) {
  std::vector<uint64_t> ent(4096);
  for (uint64_t at = start; at < end;) {
    size_t n = std::min<uint64_t>(ent.size(), (end - at) / kPage);
    ssize_t r = ::pread(pagemap_.get(), ent.data(), n * 8, off_t(at / kPage * 8));
    if (r <= 0) return sysError(fmt::format("read /proc/{}/pagemap", pid_), r < 0 ? errno : EIO);
    size_t got = size_t(r) / 8;
    for (size_t i = 0; i < got; i++) {
      auto e = parsePagemapEntry(ent[i]);
      uint64_t a = at + i * kPage;
      if (!(e.present || e.swapped)) continue;
      if (data) addRun(*data, a, a + kPage);
      if (e.softDirty && written) addRun(*written, a, a + kPage);
    }
    at += got * kPage;
  }
  return success();
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
  if (method_ == kSoftDirty) {  // nothing to arm per range: rearm() clears the whole process
    tracked_.push_back({start, end});
    return true;
  }
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
  if (method_ == kSoftDirty) {
    CRB_CHECK(readSoftDirty(start, end, nullptr, &out));
    return out;
  }
  std::vector<PageRegion> vec(1024);
  PmScanArg a{};
  a.flags = kScanWpMatching | kScanCheckWpAsync;
  a.start = start;
  a.end = end;
  a.category_mask = kIsWritten;
  a.return_mask = kIsWritten;
  CRB_CHECK(pagemapScan(pagemap_.get(), a, vec, fmt::format("written, re-protect, of pid {}", pid_),
                        [&](const PageRegion& r) { addRun(out, r.start, r.end); }));
  return out;
}


Status DirtyTracker::scanFinal(uint64_t start, uint64_t end, std::vector<PageRun>* data,
                               std::vector<PageRun>* written) {
  if (method_ == kSoftDirty) return readSoftDirty(start, end, data, written);
  // No WP_MATCHING: nothing is re-protected, the walk only reads.
  return scanDataAndWritten(pagemap_.get(), pid_, start, end, kScanCheckWpAsync, data, written, "final");
}

Status scanDataAndWritten(int pagemapFd, pid_t pid, uint64_t start, uint64_t end, uint64_t flags,
                          std::vector<PageRun>* data, std::vector<PageRun>* written, const char* what) {
  std::vector<PageRegion> vec(1024);
  PmScanArg a{};
  a.flags = flags;
  a.start = start;
  a.end = end;
  // Not PAGE_IS_FILE: asking for it makes the walk look up every page's struct page (4x slower
  // here); a private anonymous mapping holds no file pages anyway.
  a.category_inverted = kIsPfnZero;
  a.category_mask = kIsPfnZero;
  a.category_anyof_mask = kIsPresent | kIsSwapped;
  a.return_mask = kIsPresent | kIsSwapped | kIsWritten;
  return pagemapScan(pagemapFd, a, vec, fmt::format("{}, data + written, of pid {}", what, pid),
                     [&](const PageRegion& r) {
                       addRun(*data, r.start, r.end);
                       if (r.categories & kIsWritten) addRun(*written, r.start, r.end);
                     });
}

Status DirtyTracker::protectedPages(uint64_t start, uint64_t end, std::vector<PageRun>* out) {
  if (method_ == kSoftDirty) return makeError("internal: soft-dirty does not track shared memory");
  std::vector<PageRegion> vec(1024);
  PmScanArg a{};
  a.flags = kScanCheckWpAsync;
  a.start = start;
  a.end = end;
  a.category_inverted = kIsWritten;
  a.category_mask = kIsWritten;
  a.category_anyof_mask = kIsPresent | kIsSwapped;  // a marker counts as swapped
  a.return_mask = kIsPresent | kIsSwapped;
  return pagemapScan(pagemap_.get(), a, vec, fmt::format("protected pages of pid {}", pid_),
                     [&](const PageRegion& r) { addRun(*out, r.start, r.end); });
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
  if (method_ == kSoftDirty) tracked_.clear();  // soft-dirty changed nothing in the tree
  if (!uffd_.valid()) return;
  for (auto [s, e] : tracked_) {
    uffdio_range r{s, e - s};
    ::ioctl(uffd_.get(), UFFDIO_UNREGISTER, &r);  // a range unmapped meanwhile fails harmlessly
  }
  tracked_.clear();
  uffd_.reset();  // last reference: the kernel clears whatever is still registered
}

}  // namespace crb::native
