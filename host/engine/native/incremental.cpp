// Incremental images and restore from a chain; see incremental.hpp.
#include "engine/native/incremental.hpp"

#include <fcntl.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <unordered_set>

#include "engine/native/capture.hpp"
#include "engine/native/dirty.hpp"
#include "engine/native/image.hpp"
#include "engine/native/internal.hpp"
#include "engine/native/procfs.hpp"

#if __has_include(<isa-l/crc64.h>)
#include <isa-l/crc64.h>
#define CRB_HAVE_ISAL_CRC64 1
#endif

namespace crb::native {

namespace {
using Clock = std::chrono::steady_clock;
double msSince(Clock::time_point t) { return std::chrono::duration<double, std::milli>(Clock::now() - t).count(); }

#ifndef CRB_HAVE_ISAL_CRC64
// The same CRC-64 as ISA-L's crc64_ecma_refl (seed 0), so hashes do not depend on the build.
const std::array<uint64_t, 256>& crc64Table() {
  static const auto t = [] {
    std::array<uint64_t, 256> t{};
    for (uint64_t i = 0; i < 256; i++) {
      uint64_t c = i;
      for (int k = 0; k < 8; k++) c = c & 1 ? (c >> 1) ^ 0xC96C5795D7870F42ull : c >> 1;
      t[i] = c;
    }
    return t;
  }();
  return t;
}
#endif

void appendPage(std::vector<PageRun>& runs, uint64_t addr) {
  if (!runs.empty() && runs.back().addr + runs.back().pages * kPage == addr)
    runs.back().pages++;
  else
    runs.push_back({addr, 1});
}

// Pages of a frozen tree: process_vm_readv, /proc/pid/mem for what it cannot read (PROT_NONE).
Status readTreePages(pid_t pid, uint64_t addr, char* buf, size_t len) {
  iovec local{buf, len}, remote{reinterpret_cast<void*>(addr), len};
  ssize_t n = ::process_vm_readv(pid, &local, 1, &remote, 1, 0);
  size_t have = n > 0 ? size_t(n) : 0;
  if (have == len) return success();
  return readMem(pid, addr + have, buf + have, len - have);
}

Status writeRawFile(const std::filesystem::path& dir, const std::string& name, const void* data, size_t len,
                    bool sync) {
  CRB_ASSIGN(auto w, ImageWriter::create(dir, name));
  CRB_CHECK(w.write(data, len));
  return w.commit(sync);
}

// The payload checksum recorded in an image file's header (the header is verified by the reader).
Result<uint32_t> headerPayloadCrc(const std::filesystem::path& file) {
  Fd fd(::open(file.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd.valid()) return sysError("open " + file.string(), errno);
  uint32_t crc = 0;
  if (::pread(fd.get(), &crc, sizeof crc, 24) != ssize_t(sizeof crc)) return sysError("read " + file.string(), EIO);
  return crc;
}

Result<std::optional<ProcessState>> readCore(const std::filesystem::path& dir, pid_t pid) {
  if (!std::filesystem::exists(dir / fmt::format("core-{}.img", pid))) return std::optional<ProcessState>{};
  CRB_ASSIGN(Json j, readJsonImage(dir, fmt::format("core-{}.img", pid)));
  try {
    return std::optional<ProcessState>(j.get<ProcessState>());
  } catch (const std::exception& e) {
    return makeError(fmt::format("image {}: core-{}.img has unexpected content: {}", dir.string(), pid, e.what()));
  }
}

// Hashes of every logical page of `ps` in `dir`: its pagesums file, or the pages themselves (dump
// side: opened by the shown path, which errors name).
Result<std::vector<uint64_t>> loadHashes(const ChainLevel& lv, const ProcessState& ps) {
  uint64_t want = runPages(logicalRuns(ps));
  std::vector<uint64_t> out;
  auto sumsName = fmt::format("pagesums-{}.img", ps.pid);
  if (std::filesystem::exists(lv.dir / sumsName)) {
    CRB_ASSIGN(auto r, RawImageReader::open(lv.shownPath, sumsName));
    if (r.payloadSize() != want * 8)
      return makeError(fmt::format("image {}: {} holds {} hashes, the process has {} pages", lv.shownPath.string(),
                                   sumsName, r.payloadSize() / 8, want));
    out.resize(want);
    CRB_CHECK(r.read(out.data(), want * 8));
    CRB_CHECK(r.verifyComplete());
    return out;
  }
  if (lv.incremental)
    return makeError(fmt::format("image {} has no {}", lv.shownPath.string(), sumsName), "dump the chain again");
  // A full image holds every page in address order: hash them as they stream by.
  CRB_ASSIGN(auto r, RawImageReader::open(lv.shownPath, fmt::format("pages-{}.img", ps.pid)));
  if (r.payloadSize() != want * kPage)
    return makeError(fmt::format("image {}: pages-{}.img does not match its index", lv.shownPath.string(), ps.pid));
  std::vector<char> buf(1 << 20);
  out.reserve(want);
  for (uint64_t left = want; left;) {
    uint64_t n = std::min<uint64_t>(left, buf.size() / kPage);
    CRB_CHECK(r.read(buf.data(), n * kPage));
    for (uint64_t i = 0; i < n; i++) out.push_back(pageHash(buf.data() + i * kPage));
    left -= n;
  }
  CRB_CHECK(r.verifyComplete());
  return out;
}

Status writeMem(int memFd, pid_t pid, uint64_t addr, const char* data, size_t len) {
  for (size_t d = 0; d < len;) {
    ssize_t w = ::pwrite(memFd, data + d, len - d, off_t(addr + d));
    if (w <= 0) return sysError(fmt::format("write memory of pid {} at {:#x}", pid, addr + d), w < 0 ? errno : EIO);
    d += size_t(w);
  }
  return success();
}

Status copyFileAtomically(const std::filesystem::path& from, const std::filesystem::path& dir,
                          const std::string& name, bool sync) {
  Fd in(::open(from.c_str(), O_RDONLY | O_CLOEXEC));
  if (!in.valid()) return sysError("open " + from.string(), errno);
  auto tmp = dir / ("." + name + ".tmp");
  Fd out(::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
  if (!out.valid()) return sysError("create " + tmp.string(), errno);
  std::vector<char> buf(1 << 20);
  for (;;) {
    ssize_t n = ::read(in.get(), buf.data(), buf.size());
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return sysError("read " + from.string(), errno);
    if (n == 0) break;
    for (ssize_t d = 0; d < n;) {
      ssize_t w = ::write(out.get(), buf.data() + d, size_t(n - d));
      if (w < 0 && errno == EINTR) continue;
      if (w <= 0) {
        ::unlink(tmp.c_str());
        return sysError("write " + tmp.string(), errno);
      }
      d += w;
    }
  }
  if (sync && ::fdatasync(out.get()) != 0) return sysError("fdatasync " + tmp.string(), errno);
  out.reset();
  if (::rename(tmp.c_str(), (dir / name).c_str()) != 0) return sysError("rename " + tmp.string(), errno);
  return success();
}
}  // namespace

uint64_t pageHash(const void* page) {
#ifdef CRB_HAVE_ISAL_CRC64
  return crc64_ecma_refl(0, static_cast<const unsigned char*>(page), kPage);
#else
  const auto& t = crc64Table();
  uint64_t c = ~0ull;
  auto* p = static_cast<const unsigned char*>(page);
  for (size_t i = 0; i < kPage; i++) c = t[(c ^ p[i]) & 0xff] ^ (c >> 8);
  return ~c;
#endif
}

std::string newImageUuid() {
  unsigned char b[16];
  if (::getrandom(b, sizeof b, 0) != ssize_t(sizeof b))
    for (auto& x : b) x = static_cast<unsigned char>(std::rand());
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  std::string h = toHex(b, sizeof b);
  return h.substr(0, 8) + "-" + h.substr(8, 4) + "-" + h.substr(12, 4) + "-" + h.substr(16, 4) + "-" + h.substr(20);
}

std::vector<PageRun> intersectRuns(const std::vector<PageRun>& a, const std::vector<PageRun>& b) {
  std::vector<PageRun> out;
  size_t i = 0, j = 0;
  while (i < a.size() && j < b.size()) {
    uint64_t as = a[i].addr, ae = as + a[i].pages * kPage, bs = b[j].addr, be = bs + b[j].pages * kPage;
    uint64_t s = std::max(as, bs), e = std::min(ae, be);
    if (s < e) out.push_back({s, (e - s) / kPage});
    if (ae < be) i++;
    else j++;
  }
  return out;
}

std::vector<PageRun> subtractRuns(const std::vector<PageRun>& a, const std::vector<PageRun>& b) {
  std::vector<PageRun> out;
  size_t j = 0;
  for (auto& r : a) {
    uint64_t s = r.addr, e = r.addr + r.pages * kPage;
    while (j < b.size() && b[j].addr + b[j].pages * kPage <= s) j++;
    for (size_t k = j; k < b.size() && b[k].addr < e && s < e; k++) {
      uint64_t bs = b[k].addr, be = bs + b[k].pages * kPage;
      if (bs > s) out.push_back({s, (std::min(bs, e) - s) / kPage});
      s = std::max(s, be);
    }
    if (s < e) out.push_back({s, (e - s) / kPage});
  }
  return out;
}

uint64_t runPages(const std::vector<PageRun>& r) {
  uint64_t n = 0;
  for (auto& x : r) n += x.pages;
  return n;
}

// Not merged across mappings: a segment never crosses a mapping's boundary (lazy restore serves
// whole mappings).
std::vector<PageRun> logicalRuns(const ProcessState& ps) {
  std::vector<PageRun> out;
  for (auto& v : ps.vmas)
    for (auto& r : v.pages) out.push_back(r);
  return out;
}

// ---------------------------------------------------------------- chain
Result<std::shared_ptr<PageChain>> PageChain::load(const std::filesystem::path& dir) {
  auto c = std::make_shared<PageChain>();
  std::error_code ec;
  std::filesystem::path cur = std::filesystem::canonical(dir, ec);
  if (ec) return makeError("image directory " + dir.string() + " is missing", "give the image to restore");
  for (int depth = 0;; depth++) {
    if (depth > 1000) return makeError("image chain under " + dir.string() + " is longer than 1000 (a loop?)");
    ChainLevel lv;
    lv.shownPath = cur;
    lv.dirFd.reset(::open(cur.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC));
    if (!lv.dirFd.valid()) return sysError("open image directory " + cur.string(), errno);
    lv.dir = fmt::format("/proc/self/fd/{}", lv.dirFd.get());
    auto inv = readJsonImage(cur, "inventory.img");
    if (!inv.ok()) return inv.error().context(depth ? "parent image " + cur.string() : "image " + cur.string());
    lv.inventory = *inv;
    lv.incremental = inv->contains("parent");
    c->levels_.push_back(std::move(lv));
    if (!inv->contains("parent")) break;
    const Json& p = (*inv)["parent"];
    std::filesystem::path next = cur / p.value("path", "");
    if (!std::filesystem::exists(next / "inventory.img"))
      return makeError(fmt::format("parent image {} of incremental image {} is missing", next.lexically_normal().string(),
                                   cur.string()),
                       "an incremental image needs its whole chain: put the parent back where it was, or restore a "
                       "flattened copy (crbench cr flatten) made while the chain was complete");
    auto pinv = readJsonImage(next, "inventory.img");
    if (!pinv.ok())
      return pinv.error().context(fmt::format("parent image {} of {}", next.lexically_normal().string(), cur.string()));
    CRB_ASSIGN(uint32_t crc, headerPayloadCrc(next / "inventory.img"));
    if (pinv->value("uuid", "") != p.value("uuid", "") || crc != p.value("inventory_crc", 0u))
      return makeError(fmt::format("parent image {} of {} is not the image it was dumped against (uuid {}, expected {})",
                                   next.lexically_normal().string(), cur.string(), pinv->value("uuid", "none"),
                                   p.value("uuid", "")),
                       "the parent was replaced or changed since: restore needs the original chain");
    cur = std::filesystem::canonical(next, ec);
    if (ec) return makeError("parent image " + next.string() + " is not reachable");
  }
  return c;
}

Result<std::vector<PageRun>> PageChain::storedRuns(int level, pid_t pid) const {
  const ChainLevel& lv = levels_[size_t(level)];
  CRB_ASSIGN(auto ps, readCore(lv.dir, pid));
  if (!ps) return std::vector<PageRun>{};  // the process did not exist at that dump
  if (ps->zombie) return std::vector<PageRun>{};
  if (!lv.incremental) return logicalRuns(*ps);
  auto j = readJsonImage(lv.dir, fmt::format("pageindex-{}.img", pid));
  if (!j.ok()) return j.error().context("image " + lv.shownPath.string());
  try {
    return j->at("stored").get<std::vector<PageRun>>();
  } catch (const std::exception& e) {
    return makeError(fmt::format("image {}: pageindex-{}.img has unexpected content: {}", lv.shownPath.string(), pid,
                                 e.what()));
  }
}

Result<std::vector<Segment>> PageChain::segments(const ProcessState& ps) const {
  std::vector<PageRun> remaining = logicalRuns(ps);
  std::vector<Segment> out;
  for (int l = 0; l < int(levels_.size()) && !remaining.empty(); l++) {
    CRB_ASSIGN(auto stored, storedRuns(l, ps.pid));
    std::vector<uint64_t> firstPage(stored.size());
    for (size_t i = 0, at = 0; i < stored.size(); at += stored[i].pages, i++) firstPage[i] = at;
    for (auto& piece : intersectRuns(remaining, stored)) {
      auto it = std::upper_bound(stored.begin(), stored.end(), piece.addr,
                                 [](uint64_t a, const PageRun& r) { return a < r.addr; });
      size_t k = size_t(it - stored.begin()) - 1;
      out.push_back({piece.addr, piece.pages, l, firstPage[k] + (piece.addr - stored[k].addr) / kPage});
    }
    remaining = subtractRuns(remaining, stored);
  }
  if (!remaining.empty())
    return makeError(fmt::format("image chain of {}: {} pages of pid {} (first at {:#x}) are in no image of the chain",
                                 levels_[0].shownPath.string(), runPages(remaining), ps.pid, remaining[0].addr),
                     "the chain is damaged: dump again");
  std::sort(out.begin(), out.end(), [](const Segment& a, const Segment& b) { return a.addr < b.addr; });
  return out;
}

Result<uint64_t> PageChain::restorePages(const ProcessState& ps, int memFd,
                                         const std::vector<std::pair<uint64_t, uint64_t>>& skip) const {
  CRB_ASSIGN(auto segs, segments(ps));
  uint64_t written = 0;
  std::vector<char> buf(8 << 20);
  for (int l = 0; l < int(levels_.size()); l++) {
    std::vector<Segment> mine;
    for (auto& s : segs)
      if (s.level == l) mine.push_back(s);
    if (mine.empty()) continue;
    std::sort(mine.begin(), mine.end(), [](const Segment& a, const Segment& b) { return a.filePage < b.filePage; });
    auto isLazy = [&](const Segment& s) {
      for (auto [a, b] : skip)
        if (s.addr >= a && s.addr < b) return true;
      return false;
    };
    if (!skip.empty()) {
      // Lazy restore: only the chunks holding pages written now are read and verified; the
      // page server verifies the rest as it serves them. Without chunk sums: the whole file below.
      auto name = fmt::format("pages-{}.img", ps.pid);
      auto cp = ChunkedPayload::open(levels_[size_t(l)].dir, name, levels_[size_t(l)].shownPath / name);
      if (!cp.ok()) return cp.error();
      if (cp->chunked()) {
        for (auto& s : mine) {
          if (isLazy(s)) continue;
          for (uint64_t done = 0; done < s.pages;) {
            uint64_t n = std::min<uint64_t>(s.pages - done, buf.size() / kPage);
            CRB_CHECK(cp->read((s.filePage + done) * kPage, buf.data(), n * kPage));
            CRB_CHECK(writeMem(memFd, ps.pid, s.addr + done * kPage, buf.data(), n * kPage));
            written += n;
            done += n;
          }
        }
        continue;
      }
    }
    auto r = RawImageReader::open(levels_[size_t(l)].dir, fmt::format("pages-{}.img", ps.pid));
    if (!r.ok()) return r.error().context("image " + levels_[size_t(l)].shownPath.string());
    uint64_t pos = 0;
    for (auto& s : mine) {
      // Pages between two segments (stored here, newer elsewhere) are read for the checksum only;
      // through our buffer: RawImageReader::skip allocates one per call, and there may be
      // thousands of small gaps.
      for (uint64_t gap = (s.filePage - pos) * kPage; gap;) {
        uint64_t n = std::min<uint64_t>(gap, buf.size());
        CRB_CHECK(r->read(buf.data(), n));
        gap -= n;
      }
      bool lazy = isLazy(s);
      for (uint64_t done = 0; done < s.pages;) {
        uint64_t n = std::min<uint64_t>(s.pages - done, buf.size() / kPage);
        CRB_CHECK(r->read(buf.data(), n * kPage));
        uint64_t addr = s.addr + done * kPage;
        if (!lazy) CRB_CHECK(writeMem(memFd, ps.pid, addr, buf.data(), n * kPage));
        if (!lazy) written += n;
        done += n;
      }
      pos = s.filePage + s.pages;
    }
    if (auto st = r->verifyComplete(); !st.ok()) return st.error().context("image " + levels_[size_t(l)].shownPath.string());
  }
  return written;
}

Json PageChain::describe() const {
  Json out = Json::array();
  for (auto& lv : levels_) {
    Json e{{"path", lv.shownPath.string()}, {"uuid", lv.inventory.value("uuid", "")}, {"incremental", lv.incremental},
           {"format_version", lv.inventory.value("format_version", 1)}};
    if (lv.incremental) {
      e["method"] = lv.inventory["incremental"].value("method", "");
      e["capture"] = lv.inventory["incremental"].value("capture", "stop-and-copy");  // before pre-copy/COW could
    }
    out.push_back(e);
  }
  return out;
}

// ---------------------------------------------------------------- dump
Result<std::shared_ptr<ParentIndex>> loadParentIndex(const std::filesystem::path& parent,
                                                     const std::filesystem::path& childDir) {
  auto t0 = Clock::now();
  auto idx = std::make_shared<ParentIndex>();
  CRB_ASSIGN(auto chain, PageChain::load(parent));
  const ChainLevel& top = chain->levels()[0];
  std::error_code ec;
  auto pc = std::filesystem::canonical(parent, ec);
  auto cc = std::filesystem::canonical(childDir, ec);
  if (pc == cc) return makeError("--parent " + parent.string() + " is the image directory itself", "dump into a new directory");
  idx->dir = pc;
  idx->relPath = std::filesystem::relative(pc, cc).string();
  idx->uuid = top.inventory.value("uuid", "");
  idx->depth = int(chain->levels().size());
  CRB_ASSIGN(idx->inventoryCrc, headerPayloadCrc(pc / "inventory.img"));
  // Links and indexes are checked before anything is frozen (the pages' checksums on restore).
  for (auto& p : top.inventory.at("pids")) {
    CRB_ASSIGN(auto ps, readCore(top.dir, p.get<pid_t>()));
    if (!ps || ps->zombie) continue;
    CRB_ASSIGN(auto segs, chain->segments(*ps));
    (void)segs;
    CRB_ASSIGN(auto sums, loadHashes(top, *ps));
    auto& m = idx->hashes[ps->pid];
    m.reserve(sums.size());
    size_t i = 0;
    for (auto& r : logicalRuns(*ps))
      for (uint64_t k = 0; k < r.pages; k++) m[r.addr + k * kPage] = sums[i++];
  }
  idx->loadMs = msSince(t0);
  return idx;
}

// ---------------------------------------------------------------- tracking between dumps
struct MemoryTracker::Proc {
  std::unique_ptr<DirtyTracker> tracker;
  std::vector<std::pair<uint64_t, uint64_t>> ranges;
};
MemoryTracker::MemoryTracker() = default;
MemoryTracker::~MemoryTracker() = default;

void MemoryTracker::attach(Seizure& s, pid_t pid) {
  auto t0 = Clock::now();
  auto t = DirtyTracker::attach(s, pid);
  if (!t.ok()) {
    failure = fmt::format("pid {}: {}", pid, t.error().message);
    return;
  }
  auto p = std::make_unique<Proc>();
  p->tracker = std::move(*t);
  auto maps = readMaps(pid, false);
  if (!maps.ok()) {
    failure = fmt::format("pid {}: {}", pid, maps.error().message);
    return;
  }
  for (auto& m : *maps) {
    // Writable private anonymous memory, as pre-copy tracks (precopy.cpp).
    bool anon = m.path.empty() || m.path == "[heap]" || m.path == "[stack]" || m.path.rfind("[anon:", 0) == 0;
    if (m.perms.size() < 4 || m.perms[1] != 'w' || m.perms[3] != 'p' || !anon) continue;
    auto ok = p->tracker->track(m.start, m.end);
    if (ok.ok() && *ok) p->ranges.push_back({m.start, m.end});
  }
  procs_[pid] = std::move(p);
  attachMs += msSince(t0);
}

bool MemoryTracker::owns(pid_t pid, uint64_t start, uint64_t end) const {
  auto it = procs_.find(pid);
  if (it == procs_.end()) return false;
  for (auto [s, e] : it->second->ranges)
    if (s <= start && end <= e) return true;
  return false;
}

bool MemoryTracker::written(pid_t pid, uint64_t start, uint64_t end, std::vector<PageRun>* out) {
  // Exactly a tracked range: one that was split or merged since may have lost its protection.
  auto it = procs_.find(pid);
  if (it == procs_.end()) return false;
  bool exact = false;
  for (auto [s, e] : it->second->ranges) exact = exact || (s == start && e == end);
  if (!exact) return false;
  auto r = it->second->tracker->collect(start, end);
  if (!r.ok()) return false;
  *out = std::move(*r);
  return true;
}

// ---------------------------------------------------------------- page sink
Result<PageSink> PageSink::open(DumpCtx& c, pid_t pid, const ProcessState& ps) {
  PageSink s;
  s.c_ = &c;
  s.ipid_ = c.imagePid(pid);
  CRB_ASSIGN(auto w, ImageWriter::create(c.dir, fmt::format("pages-{}.img", s.ipid_)));
  s.w_.emplace(std::move(w));
  s.runs_ = logicalRuns(ps);
  s.total_ = runPages(s.runs_);
  s.incremental_ = bool(c.parent);
  if (c.parent) {
    if (auto it = c.parent->hashes.find(s.ipid_); it != c.parent->hashes.end()) s.parent_ = &it->second;
    s.sums_.reserve(s.total_);
  }
  return s;
}

uint64_t PageSink::nextAddr() const { return run_ < runs_.size() ? runs_[run_].addr + inRun_ * kPage : 0; }

bool PageSink::parentHas(uint64_t addr) const { return parent_ && parent_->count(addr); }

Status PageSink::advance() {
  if (run_ >= runs_.size())
    return makeError(fmt::format("internal: more pages written for pid {} than its {} data pages", ipid_, total_));
  if (++inRun_ == runs_[run_].pages) run_++, inRun_ = 0;
  seen_++;
  return success();
}

Status PageSink::unchanged() {
  uint64_t a = nextAddr();
  if (!parent_ || !parent_->count(a))
    return makeError(fmt::format("internal: page {:#x} of pid {} is not the parent's", a, ipid_));
  sums_.push_back(parent_->at(a));
  unchanged_++;
  notRead_++;
  return advance();
}

Status PageSink::write(const void* data, size_t len) {
  auto* p = static_cast<const char*>(data);
  if (!incremental_) {
    if (seen_ + len / kPage > total_)
      return makeError(fmt::format("internal: more pages written for pid {} than its {} data pages", ipid_, total_));
    seen_ += len / kPage;
    bytes_ += len;
    return w_->write(p, len);
  }
  // Runs of pages to store are written as one piece each.
  const char* pending = nullptr;
  size_t pendingLen = 0;
  auto flush = [&]() -> Status {
    if (!pendingLen) return success();
    CRB_CHECK(w_->write(pending, pendingLen));
    bytes_ += pendingLen;
    pendingLen = 0;
    return success();
  };
  for (size_t off = 0; off < len; off += kPage) {
    const char* page = p + off;
    uint64_t a = nextAddr(), h = pageHash(page);
    sums_.push_back(h);
    bool same = false;
    if (parent_) {
      auto f = parent_->find(a);
      same = f != parent_->end() && f->second == h;
    }
    CRB_CHECK(advance());
    if (same) {
      unchanged_++;
      CRB_CHECK(flush());
      continue;
    }
    if (!pendingLen) pending = page;
    pendingLen += kPage;
    appendPage(stored_, a);
  }
  return flush();
}

Status PageSink::commit() {
  if (seen_ != total_)
    return makeError(fmt::format("internal: {} of the {} data pages of pid {} were written", seen_, total_, ipid_));
  CRB_CHECK(w_->commit(c_->opts.sync));
  c_->stats.pagesWritten += bytes_ / kPage;
  c_->stats.bytesWritten += bytes_;
  if (!incremental_) return success();
  CRB_CHECK(writeRawFile(c_->dir, fmt::format("pagesums-{}.img", ipid_), sums_.data(), sums_.size() * 8, c_->opts.sync));
  CRB_CHECK(writeJsonImage(c_->dir, fmt::format("pageindex-{}.img", ipid_), Json{{"stored", stored_}}, c_->opts.sync));
  Json& f = c_->stats.memory["incremental"];
  if (f.is_null()) f = {{"pages", 0}, {"stored_pages", 0}, {"unchanged_pages", 0}};
  f["pages"] = f["pages"].get<uint64_t>() + sums_.size();
  f["stored_pages"] = f["stored_pages"].get<uint64_t>() + bytes_ / kPage;
  f["unchanged_pages"] = f["unchanged_pages"].get<uint64_t>() + unchanged_;
  f["unchanged_not_read_pages"] = f.value("unchanged_not_read_pages", uint64_t(0)) + notRead_;
  return success();
}

Status dumpIncrementalPages(DumpCtx& c, pid_t pid, ProcessState& ps) {
  CRB_ASSIGN(auto sink, PageSink::open(c, pid, ps));
  std::vector<char> in(1 << 20);
  for (auto& v : ps.vmas) {
    // Tracked since the parent dump: a page not written since and held by the parent is the
    // parent's; it is neither read nor hashed again.
    std::vector<PageRun> wr;
    bool tracked = c.opts.track && !v.pages.empty() && v.kind == "anon" &&
                   c.opts.track->written(pid, v.start, v.end, &wr);
    std::unordered_set<uint64_t> dirty;
    for (auto& r : wr)
      for (uint64_t k = 0; k < r.pages; k++) dirty.insert(r.addr + k * kPage);
    auto skippable = [&](uint64_t a) { return tracked && !dirty.count(a) && sink.parentHas(a); };
    for (auto& r : v.pages)
      for (uint64_t done = 0; done < r.pages;) {
        if (skippable(r.addr + done * kPage)) {
          CRB_CHECK(sink.unchanged());
          done++;
          continue;
        }
        uint64_t n = 1;
        while (done + n < r.pages && n < in.size() / kPage && !skippable(r.addr + (done + n) * kPage)) n++;
        CRB_CHECK(readTreePages(pid, r.addr + done * kPage, in.data(), n * kPage));
        CRB_CHECK(sink.write(in.data(), n * kPage));
        done += n;
      }
  }
  return sink.commit();
}

void incrementalInventory(DumpCtx& c, Json& inv) {
  inv["parent"] = {{"path", c.parent->relPath}, {"uuid", c.parent->uuid}, {"inventory_crc", c.parent->inventoryCrc}};
  // Which pages were compared how: tracked ranges by uffd-wp (unwritten pages not read), the
  // rest (and every page without a tracker) by their hash against the parent's.
  bool tracked = c.opts.track && c.stats.memory["incremental"].value("unchanged_not_read_pages", uint64_t(0)) > 0;
  std::string method = tracked ? std::string(DirtyTracker::kUffdWp) + " (tracked since the parent dump) + page-checksum"
                               : "page-checksum";
  inv["incremental"] = {{"method", method}, {"hash", "crc64-ecma-refl per 4 KiB page"},
                        {"chain_depth", c.parent->depth + 1},
                        {"capture", c.opts.capture ? c.opts.capture->mode() : "stop-and-copy"}};
  c.stats.memory["incremental"]["method"] = method;
  if (c.opts.track && !c.opts.track->failure.empty())
    c.stats.memory["incremental"]["tracking_failure"] = c.opts.track->failure;
}

// ---------------------------------------------------------------- flatten
Result<Json> flattenImage(const std::filesystem::path& src, const std::filesystem::path& out, bool sync) {
  auto t0 = Clock::now();
  CRB_ASSIGN(auto chain, PageChain::load(src));
  CRB_CHECK(makeDirs(out, 0700));
  if (std::filesystem::exists(out / "inventory.img"))
    return makeError("image directory " + out.string() + " already holds an image", "choose an empty directory");
  const ChainLevel& top = chain->levels()[0];
  // Every level's pages are verified first: the copy below reads them at random.
  for (auto& lv : chain->levels())
    for (auto& e : std::filesystem::directory_iterator(lv.shownPath))
      if (e.path().filename().string().rfind("pages-", 0) == 0) {
        auto r = RawImageReader::open(lv.shownPath, e.path().filename().string());
        if (!r.ok()) return r.error();
        CRB_CHECK(r->verifyComplete());
      }
  for (auto& e : std::filesystem::directory_iterator(top.shownPath)) {
    std::string name = e.path().filename().string();
    if (!e.is_regular_file() || name[0] == '.' || name == "inventory.img" || name.rfind("pages-", 0) == 0 ||
        name.rfind("pageindex-", 0) == 0 || name.rfind("pagecrc-", 0) == 0)  // pagecrc: written with the pages
      continue;
    CRB_CHECK(copyFileAtomically(e.path(), out, name, sync));
  }
  uint64_t pages = 0;
  std::vector<char> buf(1 << 20);
  std::map<int, Fd> files;
  for (auto& p : top.inventory.at("pids")) {
    CRB_ASSIGN(auto ps, readCore(top.dir, p.get<pid_t>()));
    if (!ps || ps->zombie) continue;
    CRB_ASSIGN(auto segs, chain->segments(*ps));
    CRB_ASSIGN(auto w, ImageWriter::create(out, fmt::format("pages-{}.img", ps->pid)));
    std::map<int, Fd> fds;
    for (auto& s : segs) {
      if (!fds.count(s.level)) {
        auto path = chain->levels()[size_t(s.level)].dir / fmt::format("pages-{}.img", ps->pid);
        fds[s.level].reset(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
        if (!fds[s.level].valid()) return sysError("open " + path.string(), errno);
      }
      for (uint64_t done = 0; done < s.pages;) {
        uint64_t n = std::min<uint64_t>(s.pages - done, buf.size() / kPage);
        off_t off = off_t(kImageHeaderSize + (s.filePage + done) * kPage);
        if (::pread(fds[s.level].get(), buf.data(), n * kPage, off) != ssize_t(n * kPage))
          return sysError(fmt::format("read pages of pid {} from {}", ps->pid,
                                      chain->levels()[size_t(s.level)].shownPath.string()), EIO);
        CRB_CHECK(w.write(buf.data(), n * kPage));
        done += n;
      }
      pages += s.pages;
    }
    CRB_CHECK(w.commit(sync));
  }
  Json inv = top.inventory;
  inv.erase("parent");
  inv.erase("incremental");
  inv["format_version"] = kImageFormatVersion;
  inv["flattened_from"] = Json::array();
  for (auto& lv : chain->levels()) inv["flattened_from"].push_back(lv.inventory.value("uuid", ""));
  inv["uuid"] = newImageUuid();
  CRB_CHECK(writeJsonImage(out, "inventory.img", inv, sync));
  return Json{{"levels", chain->levels().size()}, {"pages", pages}, {"ms", msSince(t0)}, {"uuid", inv["uuid"]}};
}

}  // namespace crb::native
