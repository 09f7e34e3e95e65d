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
  auto it = procs_.find(pid);
  if (it == procs_.end()) return false;
  for (auto& r : it->second->ranges)
    if (r.start <= start && end <= r.end) return true;
  return false;
}

Status CowSession::frozen(DumpCtx& c, pid_t pid, ProcessState& ps) {
  auto t0 = Clock::now();
  auto p = std::make_unique<Proc>();
  p->pid = pid;
  CRB_ASSIGN(p->store, PageStore::create(dir_ / fmt::format(".cow-{}.pages", pid)));
  CRB_CHECK(c.seizure->prepareInjection(pid));
  auto fd = injectUserfaultfd(*c.seizure, pid, false);
  Status fin = c.seizure->finishInjection(pid);
  if (!fd.ok()) return fd.error().context("copy-on-write dump");
  CRB_CHECK(fin);
  p->uffd = std::move(*fd);
  uffdio_api api{};
  api.api = UFFD_API;
  api.features = UFFD_FEATURE_EVENT_REMAP | UFFD_FEATURE_EVENT_REMOVE | UFFD_FEATURE_EVENT_UNMAP;
  if (::ioctl(p->uffd.get(), UFFDIO_API, &api) != 0) return sysError("UFFDIO_API for the copy-on-write dump", errno);
  uint64_t copied = 0;
  double copyMs = 0;
  for (auto& v : ps.vmas) {
    if (v.pages.empty()) continue;
    bool protect = v.kind == "anon" && !v.shared && (v.prot & PROT_WRITE);
    if (protect) {
      uffdio_register reg{};
      reg.range = {v.start, v.end - v.start};
      reg.mode = UFFDIO_REGISTER_MODE_WP;
      protect = ::ioctl(p->uffd.get(), UFFDIO_REGISTER, &reg) == 0;
      if (protect) {
        uffdio_writeprotect wp{};
        wp.range = {v.start, v.end - v.start};
        wp.mode = UFFDIO_WRITEPROTECT_MODE_WP;
        if (::ioctl(p->uffd.get(), UFFDIO_WRITEPROTECT, &wp) != 0) {
          int e = errno;
          uffdio_range r{v.start, v.end - v.start};
          ::ioctl(p->uffd.get(), UFFDIO_UNREGISTER, &r);
          return sysError(fmt::format("write-protect {:#x}-{:#x} of pid {}", v.start, v.end, pid), e);
        }
      }
    }
    if (protect) {
      Range r;
      r.start = v.start;
      r.end = v.end;
      r.state.assign((v.end - v.start) / kPage, 0);
      for (auto& run : v.pages)
        std::fill_n(r.state.begin() + long((run.addr - v.start) / kPage), run.pages, uint8_t(1));
      p->ranges.push_back(std::move(r));
      continue;
    }
    // Not protectable (file-backed private copies, read-only or shared memory): copied now.
    auto tc = Clock::now();
    for (auto& run : v.pages) CRB_CHECK(p->store->copy(pid, run.addr, run.pages, false, &copied));
    copyMs += msSince(tc);
  }
  p->frozenPages = copied / kPage;
  frozenCopyMs_ += copyMs;
  protectMs_ += msSince(t0) - copyMs;
  procs_[pid] = std::move(p);
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
  for (auto& [pid, p] : procs_) {
    fds.push_back({p->uffd.get(), POLLIN, 0});
    who.push_back(p.get());
  }
  uffd_msg msgs[32];
  while (!stop_) {
    if (::poll(fds.data(), fds.size(), 20) <= 0) continue;
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
          {
            std::lock_guard lk(p.mu);
            for (auto& r : p.ranges) {
              if (a < r.start || a >= r.end) continue;
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
          }
          (void)unprotect(p.uffd.get(), a, kPage);
          std::lock_guard lk(p.mu);
          p.faults++;
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
  double maxUs = 0;
  for (auto& [pid, p] : procs_) {
    std::lock_guard lk(p->mu);
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
          {"layout_look_ms", lookMs_ < 0 ? Json(nullptr) : Json(lookMs_)}};
}

}  // namespace crb::native
