// Copy-on-write dump through a synchronous userfaultfd write-protect; see cow.hpp.
#include "engine/native/cow.hpp"

#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdlib>

#include "engine/native/dirty.hpp"
#include "engine/native/incremental.hpp"
#include "engine/native/internal.hpp"

namespace crb::native {

namespace {
using Clock = std::chrono::steady_clock;
double msSince(Clock::time_point t) { return std::chrono::duration<double, std::milli>(Clock::now() - t).count(); }
constexpr uint64_t kChunkPages = 64;  // background copy step: short hold of the lock the handler needs

Status unprotect(int uffd, uint64_t start, uint64_t len) {
  uffdio_writeprotect wp{};
  wp.range = {start, len};
  wp.mode = 0;  // lift the protection and wake whoever waits on it
  if (::ioctl(uffd, UFFDIO_WRITEPROTECT, &wp) != 0 && errno != ENOENT)
    return sysError(fmt::format("lift the write protection of {:#x}+{:#x}", start, len), errno);
  return success();
}
}  // namespace

CowSession::~CowSession() {
  stopHandler();
  procs_.clear();  // closing the only references: the kernel drops every registration left
}

void CowSession::stopHandler() {
  stop_ = true;
  if (handler_.joinable()) handler_.join();
}

bool CowSession::ownsRegistration(pid_t pid, uint64_t start, uint64_t end) const {
  std::lock_guard pl(procsMu_);
  auto it = procs_.find(pid);
  if (it == procs_.end()) return false;
  std::lock_guard lk(it->second->mu);
  for (auto& r : it->second->ranges)
    if (r.start <= start && end <= r.end) return true;
  // Armed before the freeze (trackedPages() registers the whole mapping again, or finds it is
  // another userfaultfd's and leaves it to be refused).
  for (auto [s, e] : it->second->armed)
    if (s < end && start < e) return true;
  return false;
}

// A userfaultfd made in `pid` (seized in `z`) with the events the handler must see.
static Result<Fd> cowUffd(Seizure& z, pid_t pid) {
  CRB_CHECK(z.prepareInjection(pid));
  auto fd = injectUserfaultfd(z, pid, false);
  Status fin = z.finishInjection(pid);
  if (!fd.ok()) return fd.error().context("copy-on-write dump");
  CRB_CHECK(fin);
  uffdio_api api{};
  api.api = UFFD_API;
  api.features = UFFD_FEATURE_EVENT_REMAP | UFFD_FEATURE_EVENT_REMOVE | UFFD_FEATURE_EVENT_UNMAP;
  if (::ioctl(fd->get(), UFFDIO_API, &api) != 0) return sysError("UFFDIO_API for the copy-on-write dump", errno);
  return std::move(*fd);
}

static bool cowProtectable(const Vma& v) { return v.kind == "anon" && !v.shared && (v.prot & PROT_WRITE); }

CowSession::Range CowSession::makeRange(Proc& p, uint64_t start, uint64_t end, const std::vector<PageRun>& pages) {
  Range r;
  r.start = start;
  r.end = end;
  r.state.assign((end - start) / kPage, 0);
  for (auto& run : pages) std::fill_n(r.state.begin() + long((run.addr - start) / kPage), run.pages, uint8_t(1));
  // Already copied by a fault in the freeze (the tree frozen: its content then is the snapshot's).
  for (auto it = p.early.lower_bound(start); it != p.early.end() && *it < end; ++it)
    if (r.state[(*it - start) / kPage] == 1) r.state[(*it - start) / kPage] = 2;
  return r;
}

Status CowSession::arm(const std::vector<pid_t>& roots) {
  if (roots.empty()) return success();
  // For comparisons on one binary: CRBENCH_COW_ARM=0 protects everything in the freeze instead.
  if (const char* e = std::getenv("CRBENCH_COW_ARM"); e && std::string(e) == "0") {
    armSkipped_ = "CRBENCH_COW_ARM=0";
    return success();
  }
  std::vector<pid_t> order;
  {
    Seizure z;  // detaches on every path: the tree runs on
    // The guardian closes a userfaultfd left in the tree if crbench dies inside the injection.
    // Started (a fork) before the clock: the pause is the tree's stop, seize to release, and the
    // guardian's end (a wait for it to exit) comes after the release.
    CRB_CHECK(z.useGuardian());
    auto t0 = Clock::now();
    CRB_CHECK(z.seizeTree(roots[0], {}, std::vector<pid_t>(roots.begin() + 1, roots.end())));
    for (pid_t pid : z.order) {
      if (z.zombies.count(pid)) continue;
      auto p = std::make_unique<Proc>();
      p->pid = pid;
      CRB_ASSIGN(p->uffd, cowUffd(z, pid));
      CRB_ASSIGN(p->store, PageStore::create(dir_ / fmt::format(".cow-{}.pages", pid)));
      std::lock_guard lk(procsMu_);
      procs_[pid] = std::move(p);
      order.push_back(pid);
    }
    z.release();
    armPauseMs_ = msSince(t0);
  }
  procsGen_++;
  // The handler first: a write to a page protected below waits for it.
  if (!handler_.joinable()) handler_ = std::thread([this] { serve(); });
  auto t1 = Clock::now();
  for (pid_t pid : order) {
    Proc& p = *procs_.at(pid);
    auto maps = readMaps(pid, false);
    if (!maps.ok()) continue;  // gone meanwhile: the freeze finds out
    for (auto& m : *maps) {
      bool anon = m.path.empty() || m.path == "[heap]" || m.path == "[stack]" || m.path.rfind("[anon:", 0) == 0;
      if (!anon || m.perms.size() < 4 || m.perms[1] != 'w' || m.perms[3] != 'p') continue;
      uffdio_register reg{};
      reg.range = {m.start, m.end - m.start};
      reg.mode = UFFDIO_REGISTER_MODE_WP;
      // Refused (changed or gone since maps was read, or the tree's own userfaultfd): the freeze
      // decides about that mapping as if nothing had been armed.
      if (::ioctl(p.uffd.get(), UFFDIO_REGISTER, &reg) != 0) continue;
      uffdio_writeprotect wp{};
      wp.range = {m.start, m.end - m.start};
      wp.mode = UFFDIO_WRITEPROTECT_MODE_WP;
      if (::ioctl(p.uffd.get(), UFFDIO_WRITEPROTECT, &wp) != 0) {
        uffdio_range r{m.start, m.end - m.start};
        ::ioctl(p.uffd.get(), UFFDIO_UNREGISTER, &r);
        continue;
      }
      {
        std::lock_guard lk(p.mu);
        p.armed.push_back({m.start, m.end});
        p.armedPages += (m.end - m.start) / kPage;
      }
      faultPoint("cow-arm");  // tests: crbench dies with part of the memory write-protected
    }
  }
  armProtectMs_ = msSince(t1);
  faultPoint("cow-armed");  // tests: crbench dies with the tree's memory write-protected
  // Tests: a wider window between arming and freeze, so many writes land in it.
  if (const char* d = std::getenv("CRBENCH_COW_ARM_DELAY_MS")) ::usleep(useconds_t(std::atoi(d)) * 1000);
  armedBeforeFreeze_ = true;
  return success();
}

Status CowSession::trackedPages(pid_t pid, uint64_t start, uint64_t end, bool* handled, std::vector<PageRun>* pages) {
  *handled = false;
  Proc* pp = nullptr;
  {
    std::lock_guard lk(procsMu_);
    auto it = procs_.find(pid);
    if (it != procs_.end()) pp = it->second.get();
  }
  if (!pp) return success();  // forked after arming: frozen() protects it whole
  Proc& p = *pp;
  auto t0 = Clock::now();
  std::lock_guard lk(p.mu);
  // From the first look in the freeze on, a fault copies before it unprotects (serve()).
  p.snapshot = true;
  bool overlaps = false;
  for (auto [s, e] : p.armed) overlaps |= s < end && start < e;
  if (!overlaps) return success();
  // Registered again: a no-op for a range still ours; makes ours a part mapped anew since arming
  // (its pages are then all unprotected, so all protected below); ESRCH if the process exec'd.
  uffdio_register reg{};
  reg.range = {start, end - start};
  reg.mode = UFFDIO_REGISTER_MODE_WP;
  int regRc = ::ioctl(p.uffd.get(), UFFDIO_REGISTER, &reg);
  auto tScan = Clock::now();
  freezeSplitMs_[0] += std::chrono::duration<double, std::milli>(tScan - t0).count();
  if (regRc != 0) {
    int e = errno;
    if (e == ESRCH)
      return makeError(fmt::format("copy-on-write dump: pid {} replaced its memory (exec) after write-protection was "
                                   "armed", pid), "dump again (the tree was left running)");
    if (e == EBUSY) return success();  // another userfaultfd's: the layout refuses it by name
    return sysError(fmt::format("UFFDIO_REGISTER {:#x}-{:#x} of pid {} in the freeze", start, end, pid), e);
  }
  // Data pages (present or swapped, not the zero page) and, among them, those not write-protected
  // now: written (or first filled) since arming. A read-only walk (no PM_SCAN_WP_MATCHING: this
  // userfaultfd is synchronous, not WP_ASYNC).
  std::vector<PageRun> written;
  int pm = ::open(fmt::format("/proc/{}/pagemap", pid).c_str(), O_RDONLY | O_CLOEXEC);
  if (pm < 0) return sysError(fmt::format("open /proc/{}/pagemap", pid), errno);
  Fd pmFd(pm);
  std::vector<PageRun> data;
  CRB_CHECK(scanDataAndWritten(pmFd.get(), pid, start, end, 0, &data, &written, "cow, data + unprotected"));
  auto tProt = Clock::now();
  freezeSplitMs_[1] += std::chrono::duration<double, std::milli>(tProt - tScan).count();
  for (auto& w : written) {
    uffdio_writeprotect wp{};
    wp.range = {w.addr, w.pages * kPage};
    wp.mode = UFFDIO_WRITEPROTECT_MODE_WP;
    if (::ioctl(p.uffd.get(), UFFDIO_WRITEPROTECT, &wp) != 0)
      return sysError(fmt::format("write-protect {:#x}+{} pages of pid {} again", w.addr, w.pages, pid), errno);
    p.reprotected += w.pages;
  }
  freezeSplitMs_[2] += msSince(tProt);
  p.ranges.push_back(makeRange(p, start, end, data));
  *pages = std::move(data);
  *handled = true;
  reprotectMs_ += msSince(t0);
  return success();
}

Status CowSession::frozen(DumpCtx& c, pid_t pid, ProcessState& ps) {
  auto t0 = Clock::now();
  Proc* pp = nullptr;
  {
    std::lock_guard lk(procsMu_);
    auto it = procs_.find(pid);
    if (it != procs_.end()) pp = it->second.get();
  }
  if (!pp) {
    // Not armed (forked since, or no arming): its userfaultfd is made now, in the freeze.
    auto p = std::make_unique<Proc>();
    p->pid = pid;
    p->snapshot = true;
    CRB_ASSIGN(p->store, PageStore::create(dir_ / fmt::format(".cow-{}.pages", pid)));
    CRB_ASSIGN(p->uffd, cowUffd(*c.seizure, pid));
    pp = p.get();
    std::lock_guard lk(procsMu_);
    procs_[pid] = std::move(p);
    procsGen_++;
  }
  Proc& p = *pp;
  for (auto& v : ps.vmas)
    if (v.kind == "sysvshm" && v.start != 0) {
      bool seen = false;
      for (auto& row : shared_) seen |= row.value("sysv_shm_id", -1) == v.object;
      if (!seen)
        shared_.push_back({{"sysv_shm_id", v.object},
                           {"copied_in_freeze", true},
                           {"why", "SysV shm segments are read whole in the freeze (sysv_ipc step), by copy-on-write "
                                   "as by stop-and-copy"}});
    }
  std::unique_lock lk(p.mu);
  p.snapshot = true;
  uint64_t copied = 0;
  double copyMs = 0;
  for (auto& v : ps.vmas) {
    if (v.pages.empty()) continue;
    bool done = false;
    for (auto& r : p.ranges) done |= r.start == v.start && r.end == v.end;
    if (done) continue;  // trackedPages() set it up in the layout's walk
    bool protect = cowProtectable(v);
    if (protect) {
      uffdio_register reg{};
      reg.range = {v.start, v.end - v.start};
      reg.mode = UFFDIO_REGISTER_MODE_WP;
      protect = ::ioctl(p.uffd.get(), UFFDIO_REGISTER, &reg) == 0;
      if (protect) {
        uffdio_writeprotect wp{};
        wp.range = {v.start, v.end - v.start};
        wp.mode = UFFDIO_WRITEPROTECT_MODE_WP;
        if (::ioctl(p.uffd.get(), UFFDIO_WRITEPROTECT, &wp) != 0) {
          int e = errno;
          uffdio_range r{v.start, v.end - v.start};
          ::ioctl(p.uffd.get(), UFFDIO_UNREGISTER, &r);
          return sysError(fmt::format("write-protect {:#x}-{:#x} of pid {}", v.start, v.end, pid), e);
        }
      }
    }
    if (protect) {
      p.ranges.push_back(makeRange(p, v.start, v.end, v.pages));
      continue;
    }
    // Not protectable (file-backed private copies, read-only or shared memory): copied now.
    auto tc = Clock::now();
    for (auto& run : v.pages) CRB_CHECK(p.store->copy(pid, run.addr, run.pages, false, &copied));
    copyMs += msSince(tc);
  }
  p.frozenPages += copied / kPage;
  frozenCopyMs_ += copyMs;
  protectMs_ += msSince(t0) - copyMs;
  return success();
}

Status CowSession::frozenShmem(DumpCtx&, ShmemObject& o, int, bool* handled) {
  *handled = false;
  shared_.push_back({{"object", o.id},
                     {"kind", o.name.empty() ? "shared anonymous or tmpfs" : "memfd " + o.name},
                     {"bytes", o.size},
                     {"copied_in_freeze", true},
                     {"why", "copy-on-write does not write-protect shared memory yet: every mapping of the object in "
                             "every process would need it, and write(2) through a descriptor bypasses it"}});
  return success();
}

void CowSession::lookBeforeFreeze(const std::vector<pid_t>& roots) {
  auto t0 = Clock::now();
  std::vector<pid_t> todo = roots;
  while (!todo.empty()) {
    pid_t pid = todo.back();
    todo.pop_back();
    auto maps = readMaps(pid, true);
    if (maps.ok()) looked_[pid] = std::move(*maps);
    for (pid_t k : listChildren(pid)) todo.push_back(k);
  }
  lookMs_ = msSince(t0);
}

const std::vector<MapsLine>* CowSession::cachedLayout(pid_t pid) const {
  auto it = looked_.find(pid);
  return it == looked_.end() ? nullptr : &it->second;
}

void CowSession::released() {
  if (!handler_.joinable()) handler_ = std::thread([this] { serve(); });
}

void CowSession::serve() {
  // A writer of the tree waits while a fault is served: ahead of the image writing (nice 19) and
  // of the machine's other work.
  ::setpriority(PRIO_PROCESS, id_t(::syscall(SYS_gettid)), -10);
  std::vector<pollfd> fds;
  std::vector<Proc*> who;
  uint64_t gen = ~0ull;
  uffd_msg msgs[32];
  while (!stop_) {
    if (gen != procsGen_) {  // a process got its userfaultfd in the freeze
      std::lock_guard lk(procsMu_);
      gen = procsGen_;
      fds.clear();
      who.clear();
      for (auto& [pid, p] : procs_) {
        fds.push_back({p->uffd.get(), POLLIN, 0});
        who.push_back(p.get());
      }
    }
    if (::poll(fds.data(), fds.size(), 5) <= 0) continue;
    for (size_t i = 0; i < fds.size(); i++) {
      if (!(fds[i].revents & POLLIN)) continue;
      Proc& p = *who[i];
      ssize_t n = ::read(p.uffd.get(), msgs, sizeof msgs);
      if (n <= 0) continue;
      for (size_t k = 0; k < size_t(n) / sizeof(uffd_msg); k++) {
        const uffd_msg& m = msgs[k];
        auto overlapPending = [&](uint64_t s, uint64_t e) {
          for (auto& r : p.ranges)
            for (uint64_t a = std::max(s, r.start) & ~(kPage - 1); a < std::min(e, r.end); a += kPage)
              if (r.state[(a - r.start) / kPage] == 1) return true;
          return false;
        };
        if (m.event == UFFD_EVENT_PAGEFAULT) {
          auto tf = Clock::now();
          uint64_t a = m.arg.pagefault.address & ~(kPage - 1);
          // The mode is read and the protection lifted under one lock: the freeze's first look
          // (trackedPages) cannot fall between them, so no page is unprotected uncopied after it.
          std::lock_guard lk(p.mu);
          if (!p.snapshot) {
            p.armedFaults++;  // before the freeze: nothing to keep yet; the freeze re-protects it
          } else {
            bool inRange = false;
            for (auto& r : p.ranges) {
              if (a < r.start || a >= r.end) continue;
              inRange = true;
              uint8_t& st = r.state[(a - r.start) / kPage];
              if (st == 1) {
                uint64_t got = 0;
                // Still protected, so still the content it had at the freeze.
                Status s = p.store->copy(p.pid, a, 1, false, &got);
                if (!s.ok() && p.failure.empty()) p.failure = s.error().message;
                st = 2;
                p.faultCopies++;
              }
            }
            if (!inRange && !p.early.count(a)) {
              // In the freeze, before its mapping was looked at (a write from an injected
              // syscall): the tree is frozen, so this is the snapshot's content. The store may
              // hold a page the image never asks for; harmless.
              uint64_t got = 0;
              Status s = p.store->copy(p.pid, a, 1, false, &got);
              if (s.ok()) p.early.insert(a);
              else if (p.failure.empty()) p.failure = s.error().message;
              p.faultCopies++;
            }
            p.faults++;
          }
          (void)unprotect(p.uffd.get(), a, kPage);
          p.maxFaultUs = std::max(p.maxFaultUs, msSince(tf) * 1000);
        } else if (m.event == UFFD_EVENT_REMOVE || m.event == UFFD_EVENT_UNMAP) {
          std::lock_guard lk(p.mu);
          if (overlapPending(m.arg.remove.start, m.arg.remove.end) && p.failure.empty())
            p.failure = fmt::format("pid {} discarded or unmapped {:#x}-{:#x} before its pages were copied", p.pid,
                                    uint64_t(m.arg.remove.start), uint64_t(m.arg.remove.end));
        } else if (m.event == UFFD_EVENT_REMAP) {
          std::lock_guard lk(p.mu);
          if (overlapPending(m.arg.remap.from, m.arg.remap.from + m.arg.remap.len) && p.failure.empty())
            p.failure = fmt::format("pid {} moved {:#x}+{:#x} (mremap) before its pages were copied", p.pid,
                                    uint64_t(m.arg.remap.from), uint64_t(m.arg.remap.len));
        }
      }
    }
  }
}

Status CowSession::copyPending(Proc& p, Range& r, uint64_t from, uint64_t to, bool* any) {
  {
    std::lock_guard lk(p.mu);
    for (uint64_t a = from; a < to;) {
      if (r.state[(a - r.start) / kPage] != 1) {
        a += kPage;
        continue;
      }
      uint64_t e = a;
      while (e < to && r.state[(e - r.start) / kPage] == 1) e += kPage;
      uint64_t got = 0;
      CRB_CHECK(p.store->copy(p.pid, a, (e - a) / kPage, false, &got));
      std::fill(r.state.begin() + long((a - r.start) / kPage), r.state.begin() + long((e - r.start) / kPage),
                uint8_t(2));
      p.backgroundPages += (e - a) / kPage;
      *any = true;
      a = e;
    }
  }
  return unprotect(p.uffd.get(), from, to - from);
}

Status CowSession::afterThaw(DumpCtx& c, pid_t pid, ProcessState& ps) {
  auto it = procs_.find(pid);
  if (it == procs_.end()) return makeError(fmt::format("internal: pid {} was not armed for the copy-on-write dump", pid));
  Proc& p = *it->second;
  auto t0 = Clock::now();
  for (auto& r : p.ranges)
    for (uint64_t a = r.start; a < r.end; a += kChunkPages * kPage) {
      bool any = false;
      CRB_CHECK(copyPending(p, r, a, std::min(r.end, a + kChunkPages * kPage), &any));
      std::lock_guard lk(p.mu);
      if (!p.failure.empty()) break;
    }
  {
    std::lock_guard lk(p.mu);
    for (auto& r : p.ranges) {
      uffdio_range ur{r.start, r.end - r.start};
      ::ioctl(p.uffd.get(), UFFDIO_UNREGISTER, &ur);  // everything is copied: no more faults
    }
    if (!p.failure.empty())
      return makeError("copy-on-write dump: " + p.failure + "; their content at the freeze is lost",
                       "the image was discarded and the tree left running; use stop-and-copy or pre-copy for a "
                       "tree that unmaps memory this quickly");
  }
  backgroundMs_ += msSince(t0);
  // incremental.hpp: with --parent only the pages that differ from the parent's are stored.
  CRB_ASSIGN(auto w, PageSink::open(c, pid, ps));
  uint64_t bytes = 0;
  for (auto& v : ps.vmas)
    if (!v.pages.empty()) CRB_CHECK(p.store->emit(v.pages, w, &bytes));
  CRB_CHECK(w.commit());  // counts what was stored
  p.store.reset();
  return success();
}

Json CowSession::figures() const {
  uint64_t faults = 0, faultCopies = 0, background = 0, frozenPages = 0, protectedPages = 0;
  uint64_t armedFaults = 0, reprotected = 0, armedPages = 0;
  double maxUs = 0;
  std::lock_guard pl(procsMu_);
  for (auto& [pid, p] : procs_) {
    std::lock_guard lk(p->mu);
    armedFaults += p->armedFaults;
    reprotected += p->reprotected;
    armedPages += p->armedPages;
    faults += p->faults;
    faultCopies += p->faultCopies;
    background += p->backgroundPages;
    frozenPages += p->frozenPages;
    maxUs = std::max(maxUs, p->maxFaultUs);
    for (auto& r : p->ranges) protectedPages += (r.end - r.start) / kPage;
  }
  return {{"method", "cow: userfaultfd write-protect (sync), pages copied after the thaw"},
          {"protect_ms", protectMs_},
          {"frozen_copy_ms", frozenCopyMs_},
          {"frozen_copied_pages", frozenPages},
          {"protected_pages", protectedPages},
          {"write_faults", faults},
          {"copied_on_fault_pages", faultCopies},
          {"max_fault_service_us", maxUs},
          {"background_pages", background},
          {"background_ms", backgroundMs_},
          {"layout_look_ms", lookMs_ < 0 ? Json(nullptr) : Json(lookMs_)},
          // Armed before the freeze: the pause to make the userfaultfds, the protection walk while
          // the tree ran, the faults served before the freeze, and what the freeze protected again
          // (its time is inside the freeze's memory_layout step, layout_page_scan).
          {"armed_before_freeze", armedBeforeFreeze_},
          {"arm_skipped_because", armSkipped_.empty() ? Json(nullptr) : Json(armSkipped_)},
          {"arm_pause_ms", armPauseMs_},
          {"arm_protect_ms", armProtectMs_},
          {"armed_pages", armedPages},
          {"armed_write_faults", armedFaults},
          {"freeze_reprotected_pages", reprotected},
          {"freeze_scan_reprotect_ms", reprotectMs_},
          {"freeze_scan_reprotect_split_ms",
           {{"lock_and_register", freezeSplitMs_[0]}, {"scan", freezeSplitMs_[1]}, {"reprotect", freezeSplitMs_[2]}}},
          {"shared_memory_copied_in_freeze", shared_}};
}

}  // namespace crb::native
