// Memory: the layout of every mapping and its contents. Deciding *which* pages to carry
// (scanPages: PAGEMAP_SCAN, or /proc/pid/pagemap on older kernels) is kept apart from *copying*
// them (copyPages: process_vm_readv, streamed), so pre-copy rounds (UFFD-WP written pages) and
// lazy restore (serving runs on demand) can reuse each half.
#include <fcntl.h>
#include <linux/magic.h>
#include <sys/vfs.h>
#include <linux/memfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <thread>

#include "engine/native/internal.hpp"
#include "engine/native/capture.hpp"
#include "engine/native/procfs.hpp"
#include "engine/native/incremental.hpp"
#include "engine/native/lazy.hpp"

namespace crb::native {

namespace {
bool hasFlag(const std::string& vmflags, const char* f) {
  for (size_t i = 0; i + 1 < vmflags.size(); i++)
    if (vmflags[i] == f[0] && vmflags[i + 1] == f[1] && (i == 0 || vmflags[i - 1] == ' ')) return true;
  return false;
}

int protOf(const std::string& perms) {
  return (perms[0] == 'r' ? PROT_READ : 0) | (perms[1] == 'w' ? PROT_WRITE : 0) | (perms[2] == 'x' ? PROT_EXEC : 0);
}
}  // namespace

// Which pages of [start, end) hold data we must carry: present or swapped, never the shared
// zero page; for private file mappings only the pages that were copied-on-write.
class PageScanner {
 public:
  explicit PageScanner(pid_t pid) : pid_(pid) {
    fd_.reset(::open(fmt::format("/proc/{}/pagemap", pid).c_str(), O_RDONLY | O_CLOEXEC));
  }
  Result<std::vector<PageRun>> scan(uint64_t start, uint64_t end, bool anonOnly) {
    if (!fd_.valid()) return sysError(fmt::format("open /proc/{}/pagemap", pid_), errno);
    std::vector<PageRun> out;
    if (useScan_) {
      std::vector<PageRegion> vec(512);
      for (uint64_t at = start; at < end;) {
        PmScanArg a{};
        a.size = sizeof a;
        a.start = at;
        a.end = end;
        a.vec = reinterpret_cast<uint64_t>(vec.data());
        a.vec_len = vec.size();
        a.category_inverted = kIsPfnZero | (anonOnly ? kIsFile : 0);
        a.category_mask = kIsPfnZero | (anonOnly ? kIsFile : 0);
        a.category_anyof_mask = kIsPresent | kIsSwapped;
        a.return_mask = kIsPresent | kIsSwapped;
        long n = ::ioctl(fd_.get(), kPagemapScan, &a);
        if (n < 0) {
          if ((errno == ENOTTY || errno == EINVAL) && out.empty() && at == start) {
            useScan_ = false;
            return scan(start, end, anonOnly);
          }
          return sysError(fmt::format("PAGEMAP_SCAN of pid {} at {:#x}", pid_, at), errno);
        }
        for (long i = 0; i < n; i++) add(out, vec[size_t(i)].start, vec[size_t(i)].end);
        if (a.walk_end <= at) break;
        at = a.walk_end;
      }
      return out;
    }
    // /proc/pid/pagemap: bit 63 present, 62 swapped, 61 file-page or shared-anon.
    std::vector<uint64_t> ent(4096);
    for (uint64_t at = start; at < end;) {
      size_t n = std::min<uint64_t>(ent.size(), (end - at) / kPage);
      ssize_t r = ::pread(fd_.get(), ent.data(), n * 8, off_t(at / kPage * 8));
      if (r <= 0) return sysError(fmt::format("read /proc/{}/pagemap", pid_), r < 0 ? errno : EIO);
      size_t got = size_t(r) / 8;
      for (size_t i = 0; i < got; i++) {
        uint64_t e = ent[i];
        bool data = (e >> 63 & 1) || (e >> 62 & 1);
        if (anonOnly && (e >> 61 & 1)) data = false;
        if (data) add(out, at + i * kPage, at + (i + 1) * kPage);
      }
      at += got * kPage;
    }
    return out;
  }

 private:
  static void add(std::vector<PageRun>& out, uint64_t s, uint64_t e) {
    if (!out.empty() && out.back().addr + out.back().pages * kPage == s)
      out.back().pages += (e - s) / kPage;
    else
      out.push_back({s, (e - s) / kPage});
  }
  pid_t pid_;
  Fd fd_;
  bool useScan_ = true;
};

// Copies runs of a process's pages into `out` in order, streaming through a ring of small
// buffers: this thread fills one with process_vm_readv and checksums it while it is still in this
// core's cache; a writer thread writes the filled ones. The two halves cost about the same (the
// read is one copy; the write to tmpfs is a copy plus page-cache allocation), so on two cores the
// dump takes about the time of the slower half, and the dumper's memory stays bounded.
// Measured with perf on a 1 GiB dump to tmpfs: checksumming 8 MiB buffers on the writer thread,
// out of cache, took 12% of the dump's CPU (3% now); the two threads now do equal CPU work.
// Pre-allocating the file (fallocate) from this thread moved too much work here (67/33).
Status copyPages(pid_t pid, const std::vector<PageRun>& runs, ImageWriter& out, uint64_t* bytes) {
  constexpr size_t kBuf = 1 << 20, kRing = 4;
  static thread_local std::vector<char> bufs[kRing] = {std::vector<char>(kBuf), std::vector<char>(kBuf),
                                                       std::vector<char>(kBuf), std::vector<char>(kBuf)};
  std::vector<char>* ring = bufs;  // this thread's buffers (in the writer, `bufs` would be its own)
  struct Filled {
    size_t len;
    uint32_t crcAfter;
  };
  std::mutex mu;
  std::condition_variable cv;
  std::deque<Filled> queue;  // buffer i % kRing holds the i-th filled chunk
  size_t produced = 0, consumed = 0;
  bool done = false;
  Status writeStatus = success();
  std::thread writer([&] {
    for (;;) {
      Filled f{};
      {
        std::unique_lock lk(mu);
        cv.wait(lk, [&] { return !queue.empty() || done; });
        if (queue.empty()) return;
        f = queue.front();
      }
      Status st = writeStatus.ok() ? out.writeChecked(ring[consumed % kRing].data(), f.len, f.crcAfter) : success();
      std::lock_guard lk(mu);
      if (!st.ok() && writeStatus.ok()) writeStatus = st;
      queue.pop_front();
      consumed++;
      cv.notify_all();
    }
  });
  uint32_t crc = out.crc();
  std::vector<iovec> remote;
  size_t filled = 0;
  auto flush = [&]() -> Status {
    if (!filled) return success();
    {
      std::unique_lock lk(mu);
      cv.wait(lk, [&] { return produced - consumed < kRing; });
      if (!writeStatus.ok()) return writeStatus;
    }
    char* buf = ring[produced % kRing].data();
    iovec local{buf, filled};
    size_t done = 0;
    while (done < filled) {
      // One iovec per run; process_vm_readv stops at the first failing one, so resume there.
      ssize_t n = ::process_vm_readv(pid, &local, 1, remote.data(), remote.size(), 0);
      if (n <= 0) {
        // Unreadable (PROT_NONE) mappings: go through /proc/pid/mem, which can force the read.
        CRB_CHECK(readMem(pid, uint64_t(reinterpret_cast<uintptr_t>(remote[0].iov_base)), buf + done,
                          remote[0].iov_len));
        n = ssize_t(remote[0].iov_len);
      }
      done += size_t(n);
      local = {buf + done, filled - done};
      size_t skip = size_t(n), drop = 0;
      while (skip && drop < remote.size()) {
        if (skip >= remote[drop].iov_len) {
          skip -= remote[drop].iov_len;
          drop++;
        } else {
          remote[drop].iov_base = static_cast<char*>(remote[drop].iov_base) + skip;
          remote[drop].iov_len -= skip;
          skip = 0;
        }
      }
      remote.erase(remote.begin(), remote.begin() + long(drop));
    }
    crc = payloadCrc(buf, filled, crc);
    {
      std::lock_guard lk(mu);
      queue.push_back({filled, crc});
      produced++;
    }
    cv.notify_all();
    *bytes += filled;
    filled = 0;
    remote.clear();
    return success();
  };
  Status st = success();
  for (auto& r : runs) {
    uint64_t addr = r.addr, len = r.pages * kPage;
    while (len && st.ok()) {
      size_t n = std::min<uint64_t>(len, kBuf - filled);
      remote.push_back({reinterpret_cast<void*>(addr), n});
      filled += n;
      addr += n;
      len -= n;
      if (filled == kBuf || remote.size() == 1024) st = flush();
    }
    if (!st.ok()) break;
  }
  if (st.ok()) st = flush();
  {
    std::lock_guard lk(mu);
    done = true;
  }
  cv.notify_all();
  writer.join();  // never return while the writer still writes from our buffers
  CRB_CHECK(st);
  return writeStatus;
}

int DumpCtx::shmemFor(uint64_t dev, uint64_t ino, uint64_t size, const std::string& name,
                      const std::string& source) {
  for (auto& o : tree.shmem)
    if (o.dev == dev && o.ino == ino) return o.id;
  ShmemObject o;
  o.id = int(tree.shmem.size());
  o.dev = dev;
  o.ino = ino;
  o.size = size;
  o.name = name;
  tree.shmem.push_back(o);
  shmemSource[o.id] = source;
  return o.id;
}

namespace {
bool sameMapping(const MapsLine& a, const MapsLine& b) {
  return a.start == b.start && a.end == b.end && a.perms == b.perms && a.pgoff == b.pgoff && a.ino == b.ino &&
         a.devMajor == b.devMajor && a.devMinor == b.devMinor && a.path == b.path;
}

// The userfaultfd flags are left out of the comparison: pre-copy's own registration ends at the
// release; the tree's own would need a userfaultfd descriptor, which the dump refuses. So is "sd"
// (soft-dirty bookkeeping of the mapping: clear_refs changes it, a restore does not carry it).
std::string flagsWithoutUffd(const std::string& f) {
  std::string out;
  for (size_t i = 0; i < f.size();) {
    size_t j = f.find(' ', i);
    if (j == std::string::npos) j = f.size();
    std::string w = f.substr(i, j - i);
    if (!w.empty() && w != "um" && w != "uw" && w != "ui" && w != "sd") out += (out.empty() ? "" : " ") + w;
    i = j + 1;
  }
  return out;
}

// Takes the VmFlags of every line of `maps` from `cached` (an identical line); false if a line
// is new or the process has mlock()ed memory now (VmLck: "lo" is a flag a cached line could miss
// without any change of the layout).
bool flagsFromCache(pid_t pid, const std::vector<MapsLine>& cached, std::vector<MapsLine>& maps) {
  auto st = readStatus(pid);
  if (!st.ok()) return false;
  auto lck = st->find("VmLck");
  if (lck == st->end() || std::strtoull(lck->second.c_str(), nullptr, 10) != 0) return false;
  size_t k = 0;
  for (auto& m : maps) {
    while (k < cached.size() && cached[k].start < m.start) k++;
    if (k == cached.size() || !sameMapping(cached[k], m)) return false;
    m.vmflags = cached[k].vmflags;
  }
  return true;
}
}  // namespace

Status verifyCachedVmFlags(DumpCtx& c) {
  for (auto& [pid, dumped] : c.cachedFlags) {
    auto now = readMaps(pid, true);
    if (!now.ok())
      return makeError(fmt::format("pid {} exited right after the freeze: the VmFlags its image took from before "
                                   "the freeze cannot be checked", pid),
                       "dump again (the tree was left running)");
    size_t k = 0;
    for (auto& m : dumped) {
      while (k < now->size() && (*now)[k].start < m.start) k++;
      if (k == now->size() || !sameMapping((*now)[k], m))
        return makeError(fmt::format("mapping {:#x}-{:#x} {} of pid {} changed right after the freeze: the VmFlags "
                                     "its image took from just before the freeze cannot be checked",
                                     m.start, m.end, m.path, pid),
                         "dump again (the tree was left running), or use stop-and-copy for a tree that remaps "
                         "this often");
      if (flagsWithoutUffd((*now)[k].vmflags) != flagsWithoutUffd(m.vmflags))
        return makeError(fmt::format("VmFlags of mapping {:#x}-{:#x} {} of pid {} changed around the freeze ('{}' "
                                     "before, '{}' after): the image would carry the wrong ones",
                                     m.start, m.end, m.path, pid, m.vmflags, (*now)[k].vmflags),
                         "dump again (the tree was left running)");
    }
  }
  return success();
}

Status dumpMemoryLayout(DumpCtx& c, pid_t pid, ProcessState& ps) {
  const std::vector<MapsLine>* cached = c.opts.capture ? c.opts.capture->cachedLayout(pid) : nullptr;
  std::vector<MapsLine> maps;
  auto tl = std::chrono::steady_clock::now();
  if (cached) {
    // /proc/pid/maps does not walk the page tables (smaps does: ~18 ms per GiB resident here).
    CRB_ASSIGN(maps, readMaps(pid, false));
    if (flagsFromCache(pid, *cached, maps)) {
      c.cachedFlags[pid] = maps;
    } else {
      CRB_ASSIGN(maps, readMaps(pid, true));
      c.stats.freezeMs["smaps_fallback_processes"] += 1;
    }
  } else {
    CRB_ASSIGN(maps, readMaps(pid, true));
  }
  c.stats.freezeMs["layout_read_maps"] +=
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - tl).count();
  PageScanner scanner(pid);
  for (auto& m : maps) {
    if (m.path == "[vsyscall]") continue;
    Vma v;
    v.start = m.start;
    v.end = m.end;
    v.pgoff = m.pgoff;
    v.prot = protOf(m.perms);
    v.shared = m.perms[3] == 's';
    v.path = m.path;
    v.vmflags = m.vmflags;
    std::string where = fmt::format("mapping {:#x}-{:#x} {} of pid {}", m.start, m.end, m.path, pid);
    bool ourWp = (c.opts.capture && c.opts.capture->ownsRegistration(pid, m.start, m.end)) ||  // pre-copy's / COW's own
                 (c.opts.track && c.opts.track->owns(pid, m.start, m.end));  // incremental.cpp's tracker
    for (const char* f : {"um", "uw", "ui"})
      if (hasFlag(m.vmflags, f) && !(ourWp && f[1] == 'w')) c.refuse("userfaultfd-registered " + where);
    bool special = m.path == "[vdso]" || m.path == "[vvar]" || m.path == "[vvar_vclock]";
    if (!special && (hasFlag(m.vmflags, "io") || hasFlag(m.vmflags, "pf"))) c.refuse("device (I/O) " + where);
    if (hasFlag(m.vmflags, "lo")) c.refuse("mlock()ed " + where);
    uint64_t dev = makedev(m.devMajor, m.devMinor);
    bool deleted = m.path.size() > 10 && m.path.compare(m.path.size() - 10, 10, " (deleted)") == 0;
    if (deleted && v.shared) liveDevShmName(c, pid, m, v, deleted);  // posix_mq.cpp
    if (special) {
      v.kind = m.path.substr(1, m.path.size() - 2);
    } else if (m.path.rfind("[", 0) == 0 && m.path != "[heap]" && m.path != "[stack]" &&
               m.path.rfind("[anon:", 0) != 0) {
      c.refuse("special " + where);
      continue;
    } else if (m.path.rfind("/SYSV", 0) == 0) {
      dumpSysvShmVma(c, pid, m, v);  // sysv_ipc.cpp
    } else if (v.shared && (deleted || m.path.rfind("/memfd:", 0) == 0 || m.path.rfind("/dev/zero", 0) == 0)) {
      v.kind = "shmem";
      std::string src = fmt::format("/proc/{}/map_files/{:x}-{:x}", pid, m.start, m.end);
      struct stat st {};
      if (::stat(src.c_str(), &st) != 0) return sysError("stat " + src, errno);
      std::string name;
      if (m.path.rfind("/memfd:", 0) == 0) name = m.path.substr(7, m.path.size() - 7 - (deleted ? 10 : 0));
      v.object = c.shmemFor(dev, m.ino, uint64_t(st.st_size), name, src);
    } else if (m.path.empty() || m.path[0] == '[') {
      v.kind = "anon";
      if (v.shared) {
        c.refuse("unrecognised shared anonymous " + where);
        continue;
      }
      bool handled = false;
      auto ts = std::chrono::steady_clock::now();
      if (c.opts.capture) CRB_CHECK(c.opts.capture->trackedPages(pid, m.start, m.end, &handled, &v.pages));
      if (!handled) {
        CRB_ASSIGN(v.pages, scanner.scan(m.start, m.end, false));
      }
      c.stats.freezeMs["layout_page_scan"] +=
          std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - ts).count();
    } else if (deleted) {
      // Private mapping of a deleted file: carry every page, map it anonymous on restore.
      v.kind = "deleted-private";
      if (!(v.prot & PROT_READ)) {
        c.refuse("unreadable private mapping of a deleted file, " + where);
        continue;
      }
      v.pages.push_back({m.start, (m.end - m.start) / kPage});
    } else {
      v.kind = "file";
      std::string path = m.path;
      if (!c.opts.rootPrefix.empty() && path.rfind(c.opts.rootPrefix, 0) == 0)
        path = path.substr(c.opts.rootPrefix.size());
      // POSIX shm and named semaphores are tmpfs files under /dev/shm: mapped by path like any file.
      if (path.rfind("/dev/", 0) == 0 && path.rfind("/dev/shm/", 0) != 0) {
        c.refuse("device " + where);
        continue;
      }
      bool writable = v.shared && hasFlag(m.vmflags, "mw");
      int id = -1;
      for (auto& f : c.tree.mapped)
        if (f.path == path) {
          id = f.id;
          f.writable = f.writable || writable;
        }
      if (id < 0) {
        id = int(c.tree.mapped.size());
        c.tree.mapped.push_back({id, path, dev, m.ino, writable});
      }
      v.object = id;
      if (!v.shared) {
        CRB_ASSIGN(v.pages, scanner.scan(m.start, m.end, true));
      }
    }
    ps.vmas.push_back(std::move(v));
  }
  return success();
}

Status dumpMemoryPages(DumpCtx& c, pid_t pid, ProcessState& ps) {
  if (c.parent) return dumpIncrementalPages(c, pid, ps);  // --parent (pre-copy's untracked processes too)
  CRB_ASSIGN(auto w, ImageWriter::create(c.dir, fmt::format("pages-{}.img", c.imagePid(pid))));
  uint64_t bytes = 0;
  for (auto& v : ps.vmas)
    if (!v.pages.empty()) CRB_CHECK(copyPages(pid, v.pages, w, &bytes));
  c.stats.pagesWritten += bytes / kPage;
  c.stats.bytesWritten += bytes;
  return w.commit(c.opts.sync);
}

// Shared memory objects (shared anonymous, memfd, deleted tmpfs files): their data extents,
// found with SEEK_DATA/SEEK_HOLE, go to blobs.img.
Status dumpShmemObjects(DumpCtx& c) {
  std::vector<char> buf;  // zeroed 1 MiB only when an object is read through it: 0.3-0.6 ms of the freeze
  for (auto& o : c.tree.shmem) {
    const auto& src = c.shmemSource.at(o.id);
    Fd fd(::open(src.c_str(), O_RDONLY | O_CLOEXEC));
    if (!fd.valid()) return sysError("open shared memory object " + src, errno);
    if (!o.name.empty()) {
      int seals = ::fcntl(fd.get(), F_GET_SEALS);
      o.seals = seals < 0 ? 0 : seals;
      if (o.seals != 0 && o.seals != F_SEAL_SEAL) c.refuse(fmt::format("memfd {} with seals {:#x}", o.name, o.seals));
    }
    if (c.opts.capture) {
      bool handled = false;
      CRB_CHECK(c.opts.capture->frozenShmem(c, o, fd.get(), &handled));
      if (handled) {
        c.shmemCaptured.insert(o.id);
        continue;
      }
    }
    // With a capture, blobs.img is written after the thaw (a captured object's data is only
    // assembled then): the others' data waits in memory, in order.
    std::vector<char>* held = c.opts.capture ? &c.shmemHeld[o.id] : nullptr;
    off_t pos = 0;
    for (;;) {
      off_t d = ::lseek(fd.get(), pos, SEEK_DATA);
      if (d < 0) break;
      off_t h = ::lseek(fd.get(), d, SEEK_HOLE);
      if (h < 0) h = off_t(o.size);
      o.extents.push_back({uint64_t(d), uint64_t(h - d)});
      for (off_t at = d; at < h;) {
        if (!held && buf.empty()) buf.resize(1 << 20);
        char* into = buf.data();
        size_t want = size_t(std::min<off_t>(off_t(1) << 20, h - at));
        if (held) {
          held->resize(held->size() + want);
          into = held->data() + held->size() - want;
        }
        ssize_t n = ::pread(fd.get(), into, want, at);
        if (n <= 0) return sysError("read shared memory object " + src, n < 0 ? errno : EIO);
        if (held) held->resize(held->size() - want + size_t(n));
        else CRB_CHECK(c.blobs->write(buf.data(), size_t(n)));
        at += n;
      }
      pos = h;
    }
  }
  return success();
}

Status writeShmemAfterThaw(DumpCtx& c) {
  for (auto& o : c.tree.shmem) {
    if (c.shmemCaptured.count(o.id)) {
      CRB_CHECK(c.opts.capture->emitShmem(c, o, *c.blobs));
      continue;
    }
    auto it = c.shmemHeld.find(o.id);
    if (it == c.shmemHeld.end()) continue;
    CRB_CHECK(c.blobs->write(it->second.data(), it->second.size()));
    std::vector<char>().swap(it->second);
  }
  return success();
}

// ---------------------------------------------------------------- restore
Status createShmemObjects(RestoreCtx& c, RawImageReader& blobs) {
  std::vector<char> buf(1 << 20);
  for (auto& o : c.tree.shmem) {
    std::string name = o.name.empty() ? "shared anonymous memory" : o.name;
    Fd fd;
    if (o.name.empty()) {
      // Shared anonymous memory is a shmem file named /dev/zero, which /proc/pid/maps shows (a
      // memfd would show its own name): made the same way, and opened through map_files.
      size_t len = std::max<uint64_t>((o.size + kPage - 1) & ~(kPage - 1), kPage);
      void* m = ::mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
      if (m == MAP_FAILED) return sysError("map shared anonymous memory", errno);
      auto at = reinterpret_cast<uint64_t>(m);
      fd = Fd(::open(fmt::format("/proc/self/map_files/{:x}-{:x}", at, at + len).c_str(), O_RDWR | O_CLOEXEC));
      int err = errno;
      ::munmap(m, len);
      if (!fd.valid()) return sysError("open shared anonymous memory through /proc/self/map_files", err);
    } else {
      unsigned flags = o.seals == 0 ? MFD_ALLOW_SEALING : 0;
      fd = Fd(int(::syscall(SYS_memfd_create, name.c_str(), flags)));
      if (!fd.valid()) return sysError("memfd_create for shared memory " + name, errno);
    }
    if (::ftruncate(fd.get(), off_t(o.size)) != 0) return sysError("size shared memory " + name, errno);
    for (auto& e : o.extents) {
      for (uint64_t done = 0; done < e[1];) {
        size_t n = std::min<uint64_t>(buf.size(), e[1] - done);
        CRB_CHECK(blobs.read(buf.data(), n));
        if (::pwrite(fd.get(), buf.data(), n, off_t(e[0] + done)) != ssize_t(n))
          return sysError("fill shared memory " + name, errno);
        done += n;
      }
    }
    int hi = ::fcntl(fd.get(), F_DUPFD, c.fdBase);
    if (hi < 0) return sysError("move a restore fd up", errno);
    c.shmemFds[o.id] = hi;
  }
  return success();
}

Status openMappedFiles(RestoreCtx& c) {
  std::string prefix = c.opts.rootPrefix;
  for (auto& f : c.tree.mapped) {
    std::string p = pathInTree(prefix, f.path);
    Fd fd(::open(p.c_str(), (f.writable ? O_RDWR : O_RDONLY) | O_CLOEXEC));
    if (!fd.valid()) return sysError("open mapped file " + p, errno);
    struct stat st {};
    ::fstat(fd.get(), &st);
    // A fresh-namespace restore made every tmpfs of the tree anew (namespaces.cpp): new inodes.
    struct statfs sf {};
    bool remade = c.opts.seizeRoot > 0 && ::fstatfs(fd.get(), &sf) == 0 && sf.f_type == TMPFS_MAGIC;
    if (st.st_ino != f.ino && !remade)
      return makeError("mapped file " + p + " was replaced since the dump (inode differs)",
                       "restore needs the same files the tree had mapped");
    int hi = ::fcntl(fd.get(), F_DUPFD, c.fdBase);
    if (hi < 0) return sysError("move a restore fd up", errno);
    c.mappedFds[f.id] = hi;
  }
  for (auto& ps : c.tree.procs) {
    if (ps.zombie || ps.exe.empty()) continue;
    std::string p = pathInTree(prefix, ps.exe);
    if (p.size() > 10 && p.compare(p.size() - 10, 10, " (deleted)") == 0) continue;
    Fd fd(::open(p.c_str(), O_RDONLY | O_CLOEXEC));
    if (!fd.valid()) continue;  // the exe link is cosmetic for the restored process
    int hi = ::fcntl(fd.get(), F_DUPFD, c.fdBase);
    if (hi >= 0) c.exeFds[ps.pid] = hi;
  }
  return success();
}

Status restoreMemory(RestoreCtx& c, const ProcessState& ps, RawImageReader& pages) {
  auto inj = c.inj(ps.pid);
  // 1. Drop everything crbench's image left in the process, except the bootstrap region.
  //    Two munmaps around it cover every mapping (holes are fine), instead of one injected
  //    syscall per mapping of the restorer's copy.
  constexpr uint64_t kUserTop = 0x7ffffffff000ull;  // x86-64 TASK_SIZE with 4-level paging
  CRB_CHECK(inj.check("unmap below the bootstrap page", SYS_munmap, kPage, c.boot - kPage));
  CRB_CHECK(inj.check("unmap above the bootstrap page", SYS_munmap, c.boot + kBootSize,
                      kUserTop - (c.boot + kBootSize)));
  CRB_ASSIGN(auto cur, readMaps(ps.pid, false));
  for (auto& m : cur) {
    if (m.path == "[vsyscall]") continue;
    if (m.start >= c.boot && m.end <= c.boot + kBootSize) continue;
    CRB_CHECK(inj.check(fmt::format("unmap {:#x}-{:#x} {}", m.start, m.end, m.path), SYS_munmap, m.start,
                        m.end - m.start));
  }
  // 2. vdso/vvar at the image's addresses (same kernel => same layout; verified below).
  uint64_t special = UINT64_MAX;
  for (auto& v : ps.vmas)
    if (v.kind == "vdso" || v.kind == "vvar" || v.kind == "vvar_vclock") special = std::min(special, v.start);
  if (special != UINT64_MAX) {
    CRB_CHECK(inj.check("map the vdso (ARCH_MAP_VDSO_64)", SYS_arch_prctl, 0x2003, special));
    CRB_ASSIGN(auto now, readMaps(ps.pid, false));
    for (auto& v : ps.vmas) {
      if (v.kind != "vdso" && v.kind != "vvar" && v.kind != "vvar_vclock") continue;
      bool found = false;
      for (auto& m : now) found = found || (m.start == v.start && m.end == v.end && m.path == v.path);
      if (!found)
        return makeError(fmt::format("the vdso layout of this kernel differs from the image ({} at {:#x})", v.path, v.start),
                         "restore on the kernel that made the dump");
    }
  }
  // 3. Every mapping at its address with its protection.
  for (auto& v : ps.vmas) {
    if (v.kind == "vdso" || v.kind == "vvar" || v.kind == "vvar_vclock") continue;
    if (v.kind == "sysvshm") {
      CRB_CHECK(restoreSysvShmVma(c, ps.pid, v));  // sysv_ipc.cpp
      continue;
    }
    uint64_t flags = 0x100000 /*MAP_FIXED_NOREPLACE*/;
    int64_t fd = -1;
    uint64_t off = 0;
    if (v.kind == "anon" || v.kind == "deleted-private") {
      flags |= MAP_PRIVATE | MAP_ANONYMOUS;
      if (hasFlag(v.vmflags, "gd")) flags |= MAP_GROWSDOWN;
    } else if (v.kind == "file") {
      flags |= v.shared ? MAP_SHARED : MAP_PRIVATE;
      fd = c.mappedFds.at(v.object);
      off = v.pgoff * kPage;
    } else if (v.kind == "shmem") {
      flags |= v.shared ? MAP_SHARED : MAP_PRIVATE;
      fd = c.shmemFds.at(v.object);
      off = v.pgoff * kPage;
    } else {
      return makeError("unknown mapping kind " + v.kind + " in image");
    }
    CRB_ASSIGN(long got, inj.check(fmt::format("map {:#x}-{:#x} {}", v.start, v.end, v.path), SYS_mmap, v.start,
                                   v.end - v.start, uint64_t(v.prot), flags, uint64_t(fd), off));
    if (uint64_t(got) != v.start) return makeError(fmt::format("mapping {:#x} landed at {:#x}", v.start, got));
    static const std::pair<const char*, int> kAdvice[] = {
        {"dc", MADV_DONTFORK}, {"wf", MADV_WIPEONFORK}, {"hg", MADV_HUGEPAGE},
        {"nh", MADV_NOHUGEPAGE}, {"dd", MADV_DONTDUMP}, {"mg", MADV_MERGEABLE}};
    for (auto& [f, adv] : kAdvice)
      if (hasFlag(v.vmflags, f)) CRB_CHECK(inj.check(std::string("madvise ") + f, SYS_madvise, v.start, v.end - v.start, adv));
  }
  // 4. Contents, streamed from pages-<pid>.img in the order they were dumped.
  Fd mem(::open(fmt::format("/proc/{}/mem", ps.pid).c_str(), O_RDWR | O_CLOEXEC));
  if (!mem.valid()) return sysError(fmt::format("open /proc/{}/mem", ps.pid), errno);
  if (c.chain) {
    // From a chain of incremental images (incremental.cpp); with lazy restore (lazy.cpp) the
    // private anonymous mappings are registered with the page server instead of filled.
    std::vector<std::pair<uint64_t, uint64_t>> lazy;
    if (c.lazy) {
      CRB_ASSIGN(lazy, lazyRegister(c, ps));
    }
    CRB_ASSIGN(uint64_t n, c.chain->restorePages(ps, mem.get(), lazy));
    c.result.pagesRestored += n;
    return success();
  }
  std::vector<char> buf(8 << 20);
  for (auto& v : ps.vmas)
    for (auto& r : v.pages) {
      uint64_t addr = r.addr, len = r.pages * kPage;
      while (len) {
        size_t n = std::min<uint64_t>(len, buf.size());
        CRB_CHECK(pages.read(buf.data(), n));
        for (size_t done = 0; done < n;) {
          ssize_t w = ::pwrite(mem.get(), buf.data() + done, n - done, off_t(addr + done));
          if (w <= 0) return sysError(fmt::format("write memory of pid {} at {:#x}", ps.pid, addr + done), w < 0 ? errno : EIO);
          done += size_t(w);
        }
        addr += n;
        len -= n;
        c.result.pagesRestored += n / kPage;
      }
    }
  return pages.verifyComplete();
}

Result<std::vector<PageRun>> scanDataPages(pid_t pid, uint64_t start, uint64_t end, bool anonOnly) {
  PageScanner s(pid);
  return s.scan(start, end, anonOnly);
}

}  // namespace crb::native
