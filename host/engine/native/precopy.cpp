// Iterative pre-copy: rounds of copying dirty pages while the tree runs; see precopy.hpp.
#include "engine/native/precopy.hpp"

#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/sysmacros.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <optional>
#include <cerrno>
#include <cstdlib>
#include <cstring>

#include "engine/native/freeze_trace.hpp"
#include "engine/native/incremental.hpp"
#include "engine/native/internal.hpp"
#include "engine/native/procfs.hpp"

namespace crb::native {

namespace {
using Clock = std::chrono::steady_clock;
double msSince(Clock::time_point t) { return std::chrono::duration<double, std::milli>(Clock::now() - t).count(); }

bool hasVmFlag(const std::string& vmflags, const char* f) {
  for (size_t i = 0; i + 1 < vmflags.size(); i++)
    if (vmflags[i] == f[0] && vmflags[i + 1] == f[1] && (i == 0 || vmflags[i - 1] == ' ')) return true;
  return false;
}

// Writable private anonymous memory: what a tracker registers (the dump's "anon" kind, writable).
bool trackable(const MapsLine& m) {
  if (m.perms.size() < 4 || m.perms[1] != 'w' || m.perms[3] != 'p') return false;
  return m.path.empty() || m.path == "[heap]" || m.path == "[stack]" || m.path.rfind("[anon:", 0) == 0;
}

// Shared memory the dump carries as an object (memory.cpp's "shmem" kind): shared anonymous
// (/dev/zero), memfd, deleted tmpfs files. Writable mappings only: a read-only one cannot write.
bool isShmemLine(const MapsLine& m) {
  if (m.perms.size() < 4 || m.perms[3] != 's' || m.perms[1] != 'w' || m.path.rfind("/SYSV", 0) == 0) return false;
  bool deleted = m.path.size() > 10 && m.path.compare(m.path.size() - 10, 10, " (deleted)") == 0;
  return deleted || m.path.rfind("/memfd:", 0) == 0 || m.path.rfind("/dev/zero", 0) == 0;
}

// [start, end) minus the sorted runs `have`.
std::vector<PageRun> complement(uint64_t start, uint64_t end, const std::vector<PageRun>& have) {
  std::vector<PageRun> out;
  uint64_t at = start;
  for (auto& r : have) {
    if (r.addr > at) out.push_back({at, (r.addr - at) / kPage});
    at = std::max(at, r.addr + r.pages * kPage);
  }
  if (at < end) out.push_back({at, (end - at) / kPage});
  return out;
}

bool within(const std::vector<std::pair<uint64_t, uint64_t>>& ranges, uint64_t s, uint64_t e) {
  for (auto [rs, re] : ranges)
    if (rs <= s && e <= re) return true;
  return false;
}

constexpr size_t kStoreBuf = 8 << 20;
}  // namespace

// ---------------------------------------------------------------- page store
Result<std::unique_ptr<PageStore>> PageStore::create(const std::filesystem::path& file) {
  auto s = std::make_unique<PageStore>();
  s->path_ = file;
  s->fd_.reset(::open(file.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
  if (!s->fd_.valid()) return sysError("create pre-copy page store " + file.string(), errno);
  s->buf_.resize(kStoreBuf);
  return s;
}

PageStore::~PageStore() {
  if (!path_.empty()) ::unlink(path_.c_str());
}

std::vector<std::pair<PageRun, uint64_t>> PageStore::place(uint64_t addr, uint64_t pages) {
  std::vector<std::pair<PageRun, uint64_t>> out;
  uint64_t a = addr, end = addr + pages * kPage;
  auto it = ext_.upper_bound(a);
  if (it != ext_.begin()) {
    auto prev = std::prev(it);
    if (prev->first + prev->second.pages * kPage > a) it = prev;
  }
  while (a < end) {
    if (it != ext_.end() && it->first <= a) {
      uint64_t stop = std::min(end, it->first + it->second.pages * kPage);
      out.push_back({{a, (stop - a) / kPage}, it->second.slot + (a - it->first) / kPage});
      a = stop;
      ++it;
    } else {
      uint64_t stop = it == ext_.end() ? end : std::min(end, it->first);
      uint64_t n = (stop - a) / kPage;
      ext_[a] = {n, nextSlot_};
      out.push_back({{a, n}, nextSlot_});
      nextSlot_ += n;
      a = stop;
    }
  }
  return out;
}

void PageStore::forget(uint64_t start, uint64_t end) {
  auto it = ext_.upper_bound(start);
  if (it != ext_.begin()) --it;
  while (it != ext_.end() && it->first < end) {
    uint64_t s = it->first, e = s + it->second.pages * kPage;
    Extent x = it->second;
    if (e <= start) {
      ++it;
      continue;
    }
    it = ext_.erase(it);
    if (s < start) ext_[s] = {(start - s) / kPage, x.slot};
    if (e > end) ext_[end] = {(e - end) / kPage, x.slot + (end - s) / kPage};
  }
}

std::vector<PageRun> PageStore::gaps(uint64_t addr, uint64_t pages) const {
  std::vector<PageRun> out;
  uint64_t a = addr, end = addr + pages * kPage;
  auto it = ext_.upper_bound(a);
  if (it != ext_.begin()) {
    auto prev = std::prev(it);
    if (prev->first + prev->second.pages * kPage > a) it = prev;
  }
  while (a < end) {
    if (it != ext_.end() && it->first <= a) {
      a = std::min(end, it->first + it->second.pages * kPage);
      ++it;
    } else {
      uint64_t stop = it == ext_.end() ? end : std::min(end, it->first);
      out.push_back({a, (stop - a) / kPage});
      a = stop;
    }
  }
  return out;
}

Status PageStore::copy(pid_t pid, uint64_t addr, uint64_t pages, bool live, uint64_t* copied) {
  for (auto& [piece, slot] : place(addr, pages)) {
    for (uint64_t done = 0; done < piece.pages;) {
      uint64_t n = std::min<uint64_t>(piece.pages - done, kStoreBuf / kPage);
      uint64_t at = piece.addr + done * kPage;
      size_t len = n * kPage;
      iovec local{buf_.data(), len}, remote{reinterpret_cast<void*>(at), len};
      ssize_t got = ::process_vm_readv(pid, &local, 1, &remote, 1, 0);
      if (got != ssize_t(len)) {
        size_t have = got > 0 ? size_t(got) : 0;
        // PROT_NONE pages: /proc/pid/mem reads them the way a debugger does.
        Status st = readMem(pid, at + have, buf_.data() + have, len - have);
        if (!st.ok()) {
          if (!live) return st.error().context("pre-copy final round");
          // Unmapped or changed under the running tree: the final round copies whatever is there then.
          forget(piece.addr, piece.addr + piece.pages * kPage);
          break;
        }
      }
      for (size_t w = 0; w < len;) {
        ssize_t r = ::pwrite(fd_.get(), buf_.data() + w, len - w, off_t((slot + done) * kPage + w));
        if (r <= 0) return sysError("write pre-copy page store " + path_.string(), r < 0 ? errno : EIO);
        w += size_t(r);
      }
      *copied += len;
      done += n;
    }
  }
  return success();
}

Status PageStore::put(uint64_t addr, uint64_t pages, const char* data) {
  for (auto& [piece, slot] : place(addr, pages)) {
    const char* from = data + (piece.addr - addr);
    size_t len = piece.pages * kPage;
    for (size_t w = 0; w < len;) {
      ssize_t r = ::pwrite(fd_.get(), from + w, len - w, off_t(slot * kPage + w));
      if (r <= 0) return sysError("write pre-copy page store " + path_.string(), r < 0 ? errno : EIO);
      w += size_t(r);
    }
  }
  return success();
}

Status PageStore::read(uint64_t addr, uint64_t pages, std::vector<char>* buf) {
  buf->resize(pages * kPage);
  for (uint64_t a = addr, end = addr + pages * kPage; a < end;) {
    auto it = ext_.upper_bound(a);
    if (it == ext_.begin()) return makeError(fmt::format("internal: page {:#x} missing from the pre-copy store", a));
    --it;
    uint64_t eEnd = it->first + it->second.pages * kPage;
    if (eEnd <= a) return makeError(fmt::format("internal: page {:#x} missing from the pre-copy store", a));
    uint64_t stop = std::min(end, eEnd);
    off_t off = off_t((it->second.slot + (a - it->first) / kPage) * kPage);
    char* to = buf->data() + (a - addr);
    for (size_t d = 0; d < stop - a;) {
      ssize_t n = ::pread(fd_.get(), to + d, stop - a - d, off + off_t(d));
      if (n <= 0) return sysError("read pre-copy page store " + path_.string(), n < 0 ? errno : EIO);
      d += size_t(n);
    }
    a = stop;
  }
  return success();
}

Status PageStore::emit(const std::vector<PageRun>& runs, PageSink& out, uint64_t* bytes) {
  for (auto& r : runs) {
    for (uint64_t a = r.addr, end = r.addr + r.pages * kPage; a < end;) {
      auto it = ext_.upper_bound(a);
      if (it == ext_.begin())
        return makeError(fmt::format("internal: page {:#x} missing from the pre-copy store", a));
      --it;
      uint64_t eEnd = it->first + it->second.pages * kPage;
      if (eEnd <= a) return makeError(fmt::format("internal: page {:#x} missing from the pre-copy store", a));
      uint64_t stop = std::min({end, eEnd, a + kStoreBuf});
      size_t len = stop - a;
      off_t off = off_t((it->second.slot + (a - it->first) / kPage) * kPage);
      for (size_t d = 0; d < len;) {
        ssize_t n = ::pread(fd_.get(), buf_.data() + d, len - d, off + off_t(d));
        if (n <= 0) return sysError("read pre-copy page store " + path_.string(), n < 0 ? errno : EIO);
        d += size_t(n);
      }
      CRB_CHECK(out.write(buf_.data(), len));
      *bytes += len;
      a = stop;
    }
  }
  return success();
}

// ---------------------------------------------------------------- session
Result<std::unique_ptr<PreCopySession>> PreCopySession::start(pid_t root, const std::filesystem::path& dir,
                                                             const PreCopyOptions& o) {
  auto s = std::make_unique<PreCopySession>();
  s->opts_ = o;
  s->dir_ = dir;
  s->root_ = root;
  // Chosen before anything is touched: a forced method this kernel lacks fails here, saying so.
  std::string forced = o.dirtyTracking;
  if (forced.empty())
    if (const char* e = std::getenv("CRBENCH_DIRTY_TRACKING")) forced = e;
  auto have = probeDirtyMethods();
  CRB_ASSIGN(s->method_, chooseDirtyMethod(have, forced));
  s->fig_["dirty_methods_available"] = {{"uffd_wp_async", have.uffdWpAsync}, {"pagemap_scan", have.pagemapScan},
                                        {"soft_dirty", have.softDirty}};
  s->fig_["dirty_tracking_requested"] = forced.empty() ? "auto" : forced;
  {
    Seizure z;  // its destructor detaches on every path: the tree runs on
    // The guardian puts registers back if crbench dies inside an injected syscall (guardian.hpp).
    // Started (a fork) before the clock: the pause is the tree's stop, seize to release, and the
    // guardian's end (a wait for it to exit) comes after the release.
    CRB_CHECK(z.useGuardian());
    auto t0 = Clock::now();
    CRB_CHECK(z.seizeTree(root));
    for (pid_t pid : z.order) {
      if (z.zombies.count(pid)) continue;
      CRB_CHECK(z.prepareInjection(pid));
      auto t = DirtyTracker::attach(z, pid, s->method_);
      Status fin = z.finishInjection(pid);
      if (!t.ok()) return t.error().context(fmt::format("pre-copy: dirty tracking of pid {}", pid));
      CRB_CHECK(fin);
      Proc p;
      if ((*t)->userModeOnly()) s->fig_["uffd_user_mode_only"] = true;
      p.tracker = std::move(*t);
      CRB_ASSIGN(p.store, PageStore::create(dir / fmt::format(".precopy-{}.pages", pid)));
      s->procs_[pid] = std::move(p);
    }
    z.release();
    s->fig_["setup_pause_ms"] = msSince(t0);
  }
  s->fig_["dirty_tracking"] = s->method_;
  s->fig_["options"] = {{"target_downtime_ms", o.targetDowntimeMs}, {"max_rounds", o.maxRounds},
                        {"max_seconds", o.maxSeconds}, {"min_shrink", o.minShrink}};
  s->fig_["rounds"] = Json::array();
  s->lastCollect_ = Clock::now();
  return s;
}

PreCopySession::~PreCopySession() {
  stopTracking();
  if (finalBuf_) ::munmap(finalBuf_, finalBufPages_ * kPage);
}

void PreCopySession::stopTracking() {
  for (auto& [pid, p] : procs_)
    if (p.tracker) p.tracker->stop();
}

bool PreCopySession::ownsRegistration(pid_t pid, uint64_t start, uint64_t end) const {
  auto it = procs_.find(pid);
  if (it == procs_.end() || it->second.direct) return false;
  if (within(it->second.ranges, start, end)) return true;
  for (auto& r : it->second.shmRanges)
    if (r.start <= start && end <= r.end) return true;
  return false;
}

Status PreCopySession::copyShm(ShmObj& o, const std::vector<PageRun>& offsets, uint64_t* copied) {
  struct stat st {};
  if (::fstat(o.fd.get(), &st) != 0) return sysError("fstat a shared memory object", errno);
  uint64_t size = (uint64_t(st.st_size) + kPage - 1) & ~(kPage - 1);
  std::vector<char> buf;
  for (auto r : offsets) {
    if (r.addr >= size) continue;
    r.pages = std::min(r.pages, (size - r.addr) / kPage);
    buf.resize(r.pages * kPage);
    size_t got = 0;
    while (got < buf.size()) {
      ssize_t n = ::pread(o.fd.get(), buf.data() + got, buf.size() - got, off_t(r.addr + got));
      if (n < 0) return sysError("read a shared memory object", errno);
      if (n == 0) break;  // shrunk meanwhile: the rest reads as zeros, the freeze sees the size change
      got += size_t(n);
    }
    std::fill(buf.begin() + long(got), buf.end(), 0);
    CRB_CHECK(o.store->put(r.addr, r.pages, buf.data()));
    *copied += buf.size();
  }
  return success();
}

Status PreCopySession::shmemLine(pid_t pid, Proc& p, const MapsLine& m, uint64_t* copied, uint64_t* dirty) {
  ShmKey key{makedev(m.devMajor, m.devMinor), m.ino};
  auto [oit, fresh] = shm_.try_emplace(key);
  ShmObj& o = oit->second;
  if (fresh) {
    std::string src = fmt::format("/proc/{}/map_files/{:x}-{:x}", pid, m.start, m.end);
    o.fd.reset(::open(src.c_str(), O_RDONLY | O_CLOEXEC));
    if (!o.fd.valid() || ::fstat(o.fd.get(), &o.st0) != 0) {
      o.broken = fmt::format("cannot open {}: {}", src, std::strerror(errno));
      return success();
    }
    CRB_ASSIGN(o.store, PageStore::create(dir_ / fmt::format(".precopy-shm-{}.pages", m.ino)));
  }
  if (!o.broken.empty()) return success();
  uint64_t off0 = m.pgoff * kPage;
  auto toOffsets = [&](std::vector<PageRun> runs) {
    for (auto& r : runs) r.addr = r.addr - m.start + off0;
    return runs;
  };
  for (auto& r : p.shmRanges) {
    if (r.start != m.start || r.end != m.end || r.pgoff != m.pgoff || r.key != key) continue;
    // Written since the last round (re-armed in the same walk), then whatever is no longer
    // protected (an entry dropped after a write), protected again before it is copied.
    auto written = p.tracker->collect(m.start, m.end);
    std::vector<PageRun> lost;
    auto prot = written.ok() ? p.tracker->protectedPages(m.start, m.end, &lost) : Status(written.error());
    if (!prot.ok()) {
      o.broken = fmt::format("mapping {:#x}-{:#x} of pid {} lost its tracking: {}", m.start, m.end, pid,
                             prot.error().message);
      return success();
    }
    auto unprotected = complement(m.start, m.end, lost);
    for (auto& u : unprotected) CRB_CHECK(p.tracker->protect(u.addr, u.addr + u.pages * kPage));
    for (auto& w : *written) *dirty += w.pages;
    CRB_CHECK(copyShm(o, toOffsets(*written), copied));
    CRB_CHECK(copyShm(o, toOffsets(unprotected), copied));
    return success();
  }
  CRB_ASSIGN(bool ok, p.tracker->track(m.start, m.end));
  if (!ok) {
    o.broken = fmt::format("the kernel would not write-protect shared mapping {:#x}-{:#x} of pid {}", m.start, m.end, pid);
    return success();
  }
  p.shmRanges.push_back({m.start, m.end, m.pgoff, key});
  // Writes through this mapping before now were not seen: its window of the object is copied again.
  o.store->forget(off0, off0 + (m.end - m.start));
  CRB_CHECK(copyShm(o, {{off0, (m.end - m.start) / kPage}}, copied));
  return success();
}

Status PreCopySession::round(int n, Json& fig, uint64_t* dirtyPages, double* copyMs) {
  auto t0 = Clock::now();
  double sinceLast = std::chrono::duration<double>(t0 - lastCollect_).count();
  uint64_t copied = 0, dirty = 0, fresh = 0, newRanges = 0, shmCopied = 0;
  // Soft-dirty: the bits are read and cleared with the tree stopped (clear_refs is process-wide
  // and not atomic with the read), the pages copied after it runs again; UFFD-WP reads and re-arms
  // atomically, so its pages are copied as they are found, the tree running.
  bool soft = method_ == DirtyTracker::kSoftDirty;
  std::optional<Seizure> stopped;
  std::vector<std::pair<pid_t, PageRun>> pending;
  if (soft) {
    stopped.emplace();
    CRB_CHECK(stopped->seizeTree(root_));
  }
  auto take = [&](pid_t pid, Proc& p, const PageRun& r) -> Status {
    if (soft) {
      pending.push_back({pid, r});
      return success();
    }
    return p.store->copy(pid, r.addr, r.pages, true, &copied);
  };
  for (auto& [pid, p] : procs_) {
    if (p.direct) continue;
    auto maps = readMaps(pid, true);
    if (!maps.ok()) {
      if (::kill(pid, 0) != 0) {  // exited: the final dump no longer sees it either
        p.direct = true;
        continue;
      }
      return maps.error().context("pre-copy round");
    }
    for (auto& m : *maps) {
      if (isShmemLine(m)) {
        if (p.tracker->tracksShmem()) {
          uint64_t before = copied;
          CRB_CHECK(shmemLine(pid, p, m, &copied, &dirty));
          shmCopied += copied - before;
        }
        continue;
      }
      if (!trackable(m)) continue;
      bool ours = (soft || hasVmFlag(m.vmflags, "uw")) && within(p.ranges, m.start, m.end);
      if (ours) {
        auto runs = p.tracker->collect(m.start, m.end);
        if (!runs.ok()) {
          // Part of the range may have been re-protected without being reported: trust nothing
          // stored there, the final round copies it whole.
          p.store->forget(m.start, m.end);
          continue;
        }
        for (auto& r : *runs) {
          dirty += r.pages;
          CRB_CHECK(take(pid, p, r));
        }
        continue;
      }
      if (hasVmFlag(m.vmflags, "uw") || hasVmFlag(m.vmflags, "um") || hasVmFlag(m.vmflags, "ui"))
        continue;  // the tree's own userfaultfd: the dump refuses it
      CRB_ASSIGN(bool ok, p.tracker->track(m.start, m.end));
      if (!ok) continue;
      p.ranges.push_back({m.start, m.end});
      p.store->forget(m.start, m.end);
      newRanges++;
      // Protected first, then copied: a write after the protection is found by the next round.
      CRB_ASSIGN(auto runs, scanDataPages(pid, m.start, m.end, false));
      for (auto& r : runs) {
        fresh += r.pages;
        CRB_CHECK(take(pid, p, r));
      }
    }
  }
  if (soft) {
    for (auto& [pid, p] : procs_)
      if (!p.direct && p.tracker) CRB_CHECK(p.tracker->rearm());
    stopped->release();
    fig["stopped_ms"] = msSince(t0);
    for (auto& [pid, r] : pending) CRB_CHECK(procs_[pid].store->copy(pid, r.addr, r.pages, true, &copied));
  }
  lastCollect_ = t0;
  double ms = msSince(t0);
  double stoppedMs = fig.contains("stopped_ms") ? fig["stopped_ms"].get<double>() : -1;
  fig = {{"round", n},
         {"pages", copied / kPage},
         {"bytes", copied},
         {"ms", ms},
         {"dirty_pages", dirty},
         {"new_ranges", newRanges},
         {"new_range_pages", fresh},
         {"shmem_pages", shmCopied / kPage}};
  if (stoppedMs >= 0) fig["stopped_ms"] = stoppedMs;  // soft-dirty: the tree was stopped this long
  if (n > 0) fig["dirty_mib_per_s"] = sinceLast > 0 ? double(dirty * kPage) / (1 << 20) / sinceLast : 0.0;
  *dirtyPages = dirty + fresh;
  *copyMs = ms;
  if (copied >= (1u << 20) && ms > 0) bytesPerMs_ = bytesPerMs_ == 0 ? copied / ms : std::max(bytesPerMs_, copied / ms);
  return success();
}

Status PreCopySession::iterate() {
  // The rounds run at crbench's normal priority. Measured on this 2-core machine at load 5-8: at
  // nice 19 round 0 took 49 s for 1 GiB, the 60 s limit ended the rounds with 255 MiB dirty and a
  // 749 ms freeze; at nice 0 a round competes with the agent answering the prober (one 548 ms
  // reply gap seen in round 0). The freeze itself runs at nice -10 (dump.cpp).
  auto t0 = Clock::now();
  uint64_t prev = 0;
  std::string why;
  for (int n = 0;; n++) {
    Json fig;
    uint64_t dirty = 0;
    double ms = 0;
    CRB_CHECK(round(n, fig, &dirty, &ms));
    lastRoundDirty_ = dirty;
    fig_["rounds"].push_back(fig);
    if (n > 0) {
      double estimate = bytesPerMs_ > 0 ? double(dirty * kPage) / bytesPerMs_ : ms;
      fig_["rounds"].back()["estimated_final_copy_ms"] = estimate;
      // The final freeze also reads the tree's state: leave it half of the target.
      if (estimate <= opts_.targetDowntimeMs / 2) {
        why = fmt::format("dirty set of {} pages copies in an estimated {:.2f} ms (target downtime {} ms)", dirty,
                          estimate, opts_.targetDowntimeMs);
        break;
      }
      if (n > 1 && double(dirty) >= double(prev) * opts_.minShrink) {
        why = fmt::format("dirty set stopped shrinking ({} pages after {})", dirty, prev);
        break;
      }
    }
    if (n >= opts_.maxRounds) {
      why = fmt::format("round limit ({})", opts_.maxRounds);
      break;
    }
    if (std::chrono::duration<double>(Clock::now() - t0).count() >= opts_.maxSeconds) {
      why = fmt::format("time limit ({} s)", opts_.maxSeconds);
      break;
    }
    prev = dirty;
  }
  fig_["stop_reason"] = why;
  fig_["rounds_ms"] = msSince(t0);
  fig_["copy_mib_per_s"] = bytesPerMs_ * 1000 / (1 << 20);
  return lookBeforeFreeze();
}

Status PreCopySession::lookBeforeFreeze() {
  auto t0 = Clock::now();
  for (auto& [pid, p] : procs_) {
    if (p.direct) continue;
    auto maps = readMaps(pid, true);
    p.haveLayout = maps.ok();
    if (maps.ok()) p.layout = std::move(*maps);
  }
  fig_["layout_look_ms"] = msSince(t0);
  // Room for twice the last round's dirty set plus new pages; more than that is allocated in the
  // freeze as before. MAP_POPULATE faults it in now, while the tree runs.
  auto tb = Clock::now();
  uint64_t want = std::min<uint64_t>(2 * lastRoundDirty_ + 512, 16384);
  // Tests set a small size to take the allocate-in-the-freeze path (test_native_freeze.py).
  if (const char* e = std::getenv("CRBENCH_PRECOPY_FINAL_BUFFER_PAGES"); e && *e) want = std::strtoull(e, nullptr, 10);
  void* m = want == 0 ? MAP_FAILED : ::mmap(nullptr, want * kPage, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
  if (want && m != MAP_FAILED) {
    finalBuf_ = static_cast<char*>(m);
    finalBufPages_ = want;
  }
  fig_["final_buffer_pages"] = finalBufPages_;
  fig_["final_buffer_ms"] = msSince(tb);
  return success();
}

const std::vector<MapsLine>* PreCopySession::cachedLayout(pid_t pid) const {
  auto it = procs_.find(pid);
  if (it == procs_.end() || it->second.direct || !it->second.haveLayout) return nullptr;
  return &it->second.layout;
}

Status PreCopySession::trackedPages(pid_t pid, uint64_t start, uint64_t end, bool* handled,
                                    std::vector<PageRun>* pages) {
  *handled = false;
  auto it = procs_.find(pid);
  if (it == procs_.end() || it->second.direct || !it->second.tracker || !within(it->second.ranges, start, end))
    return success();
  Proc& p = it->second;
  std::vector<PageRun> written;
  // One walk gives both the data pages and which of them were written since the last round. It
  // fails (EPERM) if the mapping is no longer the one registered (replaced at the same address):
  // then it is copied whole the usual way.
  auto st = p.tracker->scanFinal(start, end, pages, &written);
  if (!st.ok()) {
    pages->clear();
    p.store->forget(start, end);
    return success();
  }
  p.finalDirty[start] = std::move(written);
  *handled = true;
  return success();
}

namespace {
// Sorted, merged: a page both dirty and missing from the store is read once.
std::vector<PageRun> mergeRuns(std::vector<PageRun> runs) {
  std::sort(runs.begin(), runs.end(), [](const PageRun& a, const PageRun& b) { return a.addr < b.addr; });
  std::vector<PageRun> out;
  for (auto& r : runs) {
    if (!out.empty() && out.back().addr + out.back().pages * kPage >= r.addr) {
      uint64_t end = std::max(out.back().addr + out.back().pages * kPage, r.addr + r.pages * kPage);
      out.back().pages = (end - out.back().addr) / kPage;
    } else {
      out.push_back(r);
    }
  }
  return out;
}

// Reads `runs` of a frozen process into `dst` in order: process_vm_readv with up to 1024 runs a
// call (the final dirty pages are scattered single pages), /proc/pid/mem where it stops (PROT_NONE).
Status readRuns(pid_t pid, const std::vector<PageRun>& runs, char* dst) {
  std::vector<iovec> remote;
  for (size_t i = 0; i < runs.size();) {
    remote.clear();
    size_t len = 0;
    for (; i < runs.size() && remote.size() < 1024; i++) {
      remote.push_back({reinterpret_cast<void*>(runs[i].addr), runs[i].pages * kPage});
      len += runs[i].pages * kPage;
    }
    size_t done = 0, k = 0, into = 0;  // k: first remote iovec not fully read; into: bytes of it read
    while (done < len) {
      iovec local{dst + done, len - done};
      iovec first = {static_cast<char*>(remote[k].iov_base) + into, remote[k].iov_len - into};
      std::swap(first, remote[k]);
      ssize_t n = ::process_vm_readv(pid, &local, 1, remote.data() + k, remote.size() - k, 0);
      std::swap(first, remote[k]);
      if (n <= 0) {
        CRB_CHECK(readMem(pid, reinterpret_cast<uint64_t>(remote[k].iov_base) + into, dst + done,
                          remote[k].iov_len - into));
        n = ssize_t(remote[k].iov_len - into);
      }
      done += size_t(n);
      for (size_t left = size_t(n); left;) {
        size_t rest = remote[k].iov_len - into;
        if (left >= rest) {
          left -= rest;
          k++;
          into = 0;
        } else {
          into += left;
          left = 0;
        }
      }
    }
    dst += len;
  }
  return success();
}
}  // namespace

Status PreCopySession::frozen(DumpCtx& c, pid_t pid, ProcessState& ps) {
  auto it = procs_.find(pid);
  if (it == procs_.end() || it->second.direct) {
    // Appeared after the rounds began: copied whole during the freeze, the ordinary way.
    if (it != procs_.end()) it->second.direct = true;
    else procs_[pid].direct = true;
    return dumpMemoryPages(c, pid, ps);
  }
  auto t0 = Clock::now();
  Proc& p = it->second;
  uint64_t dirty = 0;
  std::vector<PageRun> take;
  for (auto& v : ps.vmas) {
    if (v.pages.empty()) continue;
    auto fd = p.finalDirty.find(v.start);
    bool tracked = v.kind == "anon" && fd != p.finalDirty.end();
    if (!tracked) {
      take.insert(take.end(), v.pages.begin(), v.pages.end());
      continue;
    }
    for (auto& r : fd->second) dirty += r.pages;
    take.insert(take.end(), fd->second.begin(), fd->second.end());
    for (auto& r : v.pages)
      for (auto& g : p.store->gaps(r.addr, r.pages)) take.push_back(g);
  }
  // Into memory, not the store file: a write per scattered page would cost more than the copy.
  // afterThaw() puts them in the store.
  freezeTrace("final_collect");
  p.held = mergeRuns(std::move(take));
  uint64_t pages = 0;
  for (auto& r : p.held) pages += r.pages;
  if (finalBuf_ && finalBufUsed_ + pages <= finalBufPages_) {
    p.heldAt = finalBuf_ + finalBufUsed_ * kPage;
    finalBufUsed_ += pages;
  } else {
    p.heldData.reset(new char[std::max<uint64_t>(pages, 1) * kPage]);
    p.heldAt = p.heldData.get();
  }
  freezeTrace("final_alloc");
  if (auto st = readRuns(pid, p.held, p.heldAt); !st.ok()) return st.error().context("pre-copy final round");
  freezeTrace(fmt::format("final_read_{}p_{}runs", pages, p.held.size()).c_str());
  Json& f = fig_["final"];
  if (f.is_null()) f = {{"pages", 0}, {"dirty_pages", 0}, {"ms", 0.0}};
  f["pages"] = f["pages"].get<uint64_t>() + pages;
  f["dirty_pages"] = f["dirty_pages"].get<uint64_t>() + dirty;
  f["ms"] = f["ms"].get<double>() + msSince(t0);
  return success();
}

Status PreCopySession::afterThaw(DumpCtx& c, pid_t pid, ProcessState& ps) {
  auto it = procs_.find(pid);
  if (it == procs_.end() || it->second.direct) return success();  // written by finalCopy
  Proc& p = it->second;
  const char* at = p.heldAt;
  for (auto& r : p.held) {
    CRB_CHECK(p.store->put(r.addr, r.pages, at));
    at += r.pages * kPage;
  }
  p.held.clear();
  p.heldData.reset();
  p.heldAt = nullptr;
  // incremental.hpp: with --parent only the pages that differ from the parent's are stored.
  CRB_ASSIGN(auto w, PageSink::open(c, pid, ps));
  uint64_t bytes = 0;
  for (auto& v : ps.vmas)
    if (!v.pages.empty()) CRB_CHECK(p.store->emit(v.pages, w, &bytes));
  CRB_CHECK(w.commit());  // counts what was stored
  p.store.reset();  // the store file goes as soon as its pages are in the image
  return success();
}

Status PreCopySession::frozenShmem(DumpCtx& c, ShmemObject& o, int fd, bool* handled) {
  *handled = false;
  auto it = shm_.find({o.dev, o.ino});
  Json& f = fig_["shmem"];
  if (f.is_null()) f = Json::array();
  Json row{{"object", o.id}, {"size", o.size}};
  auto refuse = [&](const std::string& why) {
    row["precopied"] = false;
    row["why"] = why;
    f.push_back(row);
    return success();
  };
  if (it == shm_.end()) return refuse("not seen in the rounds (or its kernel cannot write-protect shared memory)");
  ShmObj& so = it->second;
  if (!so.broken.empty()) return refuse(so.broken);
  // What the write-protection cannot see: write(2) and fallocate() through a descriptor (a
  // memfd or tmpfs file the tree keeps open). mtime is no help (a write through a shared mapping
  // changes it too), so an object with a descriptor in the tree is copied in the freeze. A
  // process outside the tree writing to it is not seen here (nor by stop-and-copy: it keeps
  // writing after the freeze).
  for (auto& fdesc : c.tree.files)
    if ((fdesc.kind == "memfd" && fdesc.object == o.id) || (fdesc.dev == o.dev && fdesc.ino == o.ino && fdesc.ino))
      return refuse(fmt::format("the tree holds a descriptor of it ({}): write(2) through it would not be seen",
                                fdesc.kind));
  struct stat now {};
  if (::fstat(fd, &now) != 0 || now.st_size != so.st0.st_size) return refuse("resized since the rounds began");
  auto t0 = Clock::now();
  // Every mapping of it in the tree must be one we tracked; their unprotected pages are what may
  // have changed since the last round.
  std::vector<PageRun> changed;
  for (auto& ps : c.tree.procs) {
    if (ps.zombie) continue;
    for (auto& v : ps.vmas) {
      if (v.kind != "shmem" || v.object != o.id) continue;
      auto pit = procs_.find(ps.pid);
      if (pit == procs_.end() || pit->second.direct || !pit->second.tracker)
        return refuse(fmt::format("pid {} maps it and is not tracked", ps.pid));
      const ShmRange* r = nullptr;
      for (auto& x : pit->second.shmRanges)
        if (x.start == v.start && x.end == v.end && x.pgoff == v.pgoff && x.key == ShmKey{o.dev, o.ino}) r = &x;
      if (!r) {
        if (!(v.prot & PROT_WRITE)) continue;  // a read-only mapping writes nothing
        return refuse(fmt::format("mapping {:#x}-{:#x} of pid {} is not tracked", v.start, v.end, ps.pid));
      }
      std::vector<PageRun> prot;
      if (!pit->second.tracker->protectedPages(v.start, v.end, &prot).ok())
        return refuse(fmt::format("mapping {:#x}-{:#x} of pid {} lost its tracking", v.start, v.end, ps.pid));
      uint64_t n = 0;
      for (auto& u : complement(v.start, v.end, prot)) {
        changed.push_back({u.addr - v.start + v.pgoff * kPage, u.pages});
        n += u.pages;
      }
      row["unprotected_pages"].push_back({{"pid", ps.pid}, {"pages", n}, {"protected_runs", prot.size()}});
    }
  }
  // The data now (SEEK_DATA/SEEK_HOLE: the page cache, no page-table walk); of it, what changed
  // or what the store lacks is read.
  std::vector<PageRun> want;
  std::sort(changed.begin(), changed.end(), [](const PageRun& a, const PageRun& b) { return a.addr < b.addr; });
  for (off_t pos = 0;;) {
    off_t d = ::lseek(fd, pos, SEEK_DATA);
    if (d < 0) break;
    off_t h = ::lseek(fd, d, SEEK_HOLE);
    if (h < 0) h = off_t(o.size);
    o.extents.push_back({uint64_t(d), uint64_t(h - d)});
    uint64_t s = uint64_t(d) & ~(kPage - 1), e = (uint64_t(h) + kPage - 1) & ~(kPage - 1);
    for (auto& g : so.store->gaps(s, (e - s) / kPage)) want.push_back(g);
    for (auto& ch : changed) {
      uint64_t cs = std::max(s, ch.addr), ce = std::min(e, ch.addr + ch.pages * kPage);
      if (cs < ce) want.push_back({cs, (ce - cs) / kPage});
    }
    pos = h;
  }
  so.held = mergeRuns(std::move(want));
  uint64_t pages = 0;
  for (auto& r : so.held) pages += r.pages;
  so.heldData.reset(new char[std::max<uint64_t>(pages, 1) * kPage]);
  char* at = so.heldData.get();
  for (auto& r : so.held) {
    size_t len = r.pages * kPage, got = 0;
    while (got < len) {
      ssize_t n = ::pread(fd, at + got, len - got, off_t(r.addr + got));
      if (n < 0) return sysError("read shared memory object " + std::to_string(o.id), errno);
      if (n == 0) break;
      got += size_t(n);
    }
    std::memset(at + got, 0, len - got);
    at += len;
  }
  row["precopied"] = true;
  row["final_pages"] = pages;
  row["final_ms"] = msSince(t0);
  f.push_back(row);
  *handled = true;
  return success();
}

Status PreCopySession::emitShmem(DumpCtx& c, const ShmemObject& o, ImageWriter& out) {
  auto it = shm_.find({o.dev, o.ino});
  if (it == shm_.end() || !it->second.store) return makeError(fmt::format("internal: shared memory object {} not held", o.id));
  ShmObj& so = it->second;
  const char* at = so.heldData.get();
  for (auto& r : so.held) {
    CRB_CHECK(so.store->put(r.addr, r.pages, at));
    at += r.pages * kPage;
  }
  so.held.clear();
  so.heldData.reset();
  // Whole pages from the store, the extent's own length into the image.
  std::vector<char> buf;
  for (auto& e : o.extents) {
    uint64_t s = e[0] & ~(kPage - 1), end = (e[0] + e[1] + kPage - 1) & ~(kPage - 1);
    for (uint64_t a = s; a < end;) {
      uint64_t n = std::min<uint64_t>(end - a, 8 << 20);
      CRB_CHECK(so.store->read(a, n / kPage, &buf));
      uint64_t from = std::max(a, e[0]), to = std::min(a + n, e[0] + e[1]);
      CRB_CHECK(out.write(buf.data() + (from - a), to - from));
      c.stats.bytesWritten += to - from;
      a += n;
    }
  }
  so.store.reset();
  return success();
}

}  // namespace crb::native
