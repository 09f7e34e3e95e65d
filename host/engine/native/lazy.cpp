// Lazy restore: a userfaultfd page server in crbench; see lazy.hpp.
#include "engine/native/lazy.hpp"

#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <set>

#include "engine/native/image.hpp"
#include "engine/native/internal.hpp"
#include "engine/native/procfs.hpp"

namespace crb::native {

namespace {
using Clock = std::chrono::steady_clock;
double msSince(Clock::time_point t) { return std::chrono::duration<double, std::milli>(Clock::now() - t).count(); }

constexpr uint64_t kFaultCluster = 16;   // pages served per fault (the faulting one and what follows)
constexpr uint64_t kPushBudget = 256;    // pages pushed between two looks at the fault queues
constexpr int kKeeperMaxFds = 4096;

// The keeper: forked from crbench (perhaps multithreaded), so only system calls from here on.
[[noreturn]] void keeperMain(int sock) {
  ::setsid();  // a terminal's ^C to crbench's process group must not take the keeper along
  // Nor does it keep crbench's stdout/stderr open (whoever reads them would wait for it).
  int null = ::open("/dev/null", O_RDWR | O_CLOEXEC);
  for (int fd = 0; fd < 3 && null >= 0; fd++) ::dup2(null, fd);
  if (sock > 3) ::syscall(SYS_close_range, 3u, unsigned(sock - 1), 0u);
  ::syscall(SYS_close_range, unsigned(sock + 1), ~0u, 0u);
  static int pidfds[kKeeperMaxFds];
  int npid = 0;
  for (;;) {
    char tag = 0;
    iovec io{&tag, 1};
    alignas(cmsghdr) char cbuf[CMSG_SPACE(sizeof(int))];
    msghdr m{};
    m.msg_iov = &io;
    m.msg_iovlen = 1;
    m.msg_control = cbuf;
    m.msg_controllen = sizeof cbuf;
    ssize_t n = ::recvmsg(sock, &m, MSG_CMSG_CLOEXEC);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;  // crbench is gone (or gave up) without saying "done"
    if (tag == 'D') ::_exit(0);
    cmsghdr* c = CMSG_FIRSTHDR(&m);
    if (!c || c->cmsg_type != SCM_RIGHTS) continue;
    int fd;
    std::memcpy(&fd, CMSG_DATA(c), sizeof fd);
    // Userfaultfds ('U') are just held open: their context stays, blocked faults stay blocked.
    if (tag == 'P' && npid < kKeeperMaxFds) pidfds[npid++] = fd;
  }
  for (int i = 0; i < npid; i++) ::syscall(SYS_pidfd_send_signal, pidfds[i], SIGKILL, nullptr, 0u);
  // Only once every process is gone do the userfaultfds go (exit): before that, a missing page
  // would be filled with zeros.
  static pollfd p[kKeeperMaxFds];
  for (int i = 0; i < npid; i++) p[i] = {pidfds[i], POLLIN, 0};
  for (int round = 0; round < 50; round++) {
    int left = 0;
    for (int i = 0; i < npid; i++) left += p[i].fd >= 0 ? 1 : 0;
    if (!left) break;
    if (::poll(p, nfds_t(npid), 200) > 0)
      for (int i = 0; i < npid; i++)
        if (p[i].revents) p[i].fd = -1;
  }
  ::_exit(1);
}

bool isLazy(const Vma& v) {
  return v.kind == "anon" && !v.shared && (v.prot & PROT_WRITE) && !v.pages.empty();
}
}  // namespace

Result<std::vector<std::pair<uint64_t, uint64_t>>> lazyRegister(RestoreCtx& c, const ProcessState& ps) {
  std::vector<std::pair<uint64_t, uint64_t>> ranges;
  for (auto& v : ps.vmas)
    if (isLazy(v)) ranges.push_back({v.start, v.end});
  if (ranges.empty()) return ranges;
  auto inj = c.inj(ps.pid);
  // Made in the process (a userfaultfd serves the mm of its creator), still with crbench's
  // credentials, so it is a full one: the kernel's own accesses (a read() into a lazy buffer)
  // fault to the server too.
  CRB_ASSIGN(long remote, inj.check("userfaultfd() for lazy restore", SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK));
  auto local = grabRemoteFd(ps.pid, int(remote));
  CRB_CHECK(inj.check("close the userfaultfd", SYS_close, uint64_t(remote)));
  if (!local.ok()) return local.error().context(fmt::format("take the userfaultfd of pid {}", ps.pid));
  Fd uffd = std::move(*local);
  if (::fcntl(uffd.get(), F_SETFD, FD_CLOEXEC) != 0) return sysError("FD_CLOEXEC on a userfaultfd", errno);
  uffdio_api api{};
  api.api = UFFD_API;
  api.features = UFFD_FEATURE_EVENT_FORK | UFFD_FEATURE_EVENT_REMAP | UFFD_FEATURE_EVENT_REMOVE |
                 UFFD_FEATURE_EVENT_UNMAP;
  if (::ioctl(uffd.get(), UFFDIO_API, &api) != 0)
    return sysError("UFFDIO_API with fork/remap/remove/unmap events (lazy restore)", errno);
  for (auto [s, e] : ranges) {
    uffdio_register reg{};
    reg.range = {s, e - s};
    reg.mode = UFFDIO_REGISTER_MODE_MISSING;
    if (::ioctl(uffd.get(), UFFDIO_REGISTER, &reg) != 0)
      return sysError(fmt::format("UFFDIO_REGISTER (missing) {:#x}-{:#x} of pid {}", s, e, ps.pid), errno);
  }
  CRB_CHECK(c.lazy->add(ps.pid, ps, std::move(uffd), ranges));
  return ranges;
}

Result<std::shared_ptr<LazyServer>> LazyServer::create(std::shared_ptr<PageChain> chain) {
  auto s = std::make_shared<LazyServer>();
  s->chain_ = std::move(chain);
  s->buf_.resize(kPushBudget * kPage);
  s->wake_.reset(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!s->wake_.valid()) return sysError("eventfd", errno);
  int sv[2];
  if (::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) != 0) return sysError("socketpair", errno);
  pid_t k = ::fork();
  if (k < 0) {
    ::close(sv[0]);
    ::close(sv[1]);
    return sysError("fork the lazy restore's keeper", errno);
  }
  if (k == 0) keeperMain(sv[1]);
  ::close(sv[1]);
  s->keeper_.reset(sv[0]);
  s->keeperPid_ = k;
  return s;
}

LazyServer::~LazyServer() { abort(); }

void LazyServer::abort() {
  stop_ = true;
  if (wake_.valid()) {
    uint64_t one = 1;
    (void)!::write(wake_.get(), &one, sizeof one);
  }
  if (thread_.joinable()) thread_.join();
  ctxs_.clear();
  keeper_.reset();  // without "done": the keeper kills whatever of the tree is left
  if (keeperPid_ > 0) {
    ::waitpid(keeperPid_, nullptr, 0);
    keeperPid_ = -1;
  }
}

void LazyServer::sendKeeper(char tag, int fd) {
  if (!keeper_.valid()) return;
  iovec io{&tag, 1};
  alignas(cmsghdr) char cbuf[CMSG_SPACE(sizeof(int))]{};
  msghdr m{};
  m.msg_iov = &io;
  m.msg_iovlen = 1;
  if (fd >= 0) {
    m.msg_control = cbuf;
    m.msg_controllen = sizeof cbuf;
    cmsghdr* c = CMSG_FIRSTHDR(&m);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int));
    std::memcpy(CMSG_DATA(c), &fd, sizeof fd);
  }
  while (::sendmsg(keeper_.get(), &m, MSG_NOSIGNAL) < 0 && errno == EINTR) {
  }
}

Result<ChunkedPayload*> LazyServer::pagesFile(int level, pid_t imagePid) {
  auto key = std::make_pair(level, imagePid);
  auto it = files_.find(key);
  if (it == files_.end()) {
    const ChainLevel& lv = chain_->levels()[size_t(level)];
    auto name = fmt::format("pages-{}.img", imagePid);
    CRB_ASSIGN(auto f, ChunkedPayload::open(lv.dir, name, lv.shownPath / name));
    it = files_.emplace(key, std::move(f)).first;
  }
  return &it->second;
}

Status LazyServer::add(pid_t pid, const ProcessState& ps, Fd uffd, std::vector<std::pair<uint64_t, uint64_t>> ranges) {
  auto x = std::make_unique<Ctx>();
  x->pid = pid;
  x->imagePid = ps.pid;
  CRB_ASSIGN(auto segs, chain_->segments(ps));
  x->segs = std::make_shared<std::vector<Segment>>(std::move(segs));
  for (auto [s, e] : ranges) {
    Range r{s, e, s, std::vector<uint8_t>((e - s) / kPage, 2)};
    for (auto& v : ps.vmas)
      if (v.start == s)
        for (auto& run : v.pages)
          for (uint64_t i = 0; i < run.pages; i++) {
            r.st[(run.addr - s) / kPage + i] = 0;
            x->pending++;
          }
    registeredPages_ += r.st.size();
    x->ranges.push_back(std::move(r));
  }
  lazyDataPages_ += x->pending;
  Fd pidfd(int(::syscall(SYS_pidfd_open, pid, 0)));
  if (!pidfd.valid()) return sysError(fmt::format("pidfd_open {}", pid), errno);
  std::lock_guard lk(mu_);
  // Opened now: after the restorer changes its mount namespace only these descriptors reach them.
  for (auto& s : *x->segs) CRB_CHECK(pagesFile(s.level, ps.pid));
  sendKeeper('U', uffd.get());
  sendKeeper('P', pidfd.get());
  x->uffd = std::move(uffd);
  ctxs_.push_back(std::move(x));
  // Started with the first context, not before: the restorer may still have to setns() into a
  // mount namespace, which a multithreaded process cannot.
  if (!thread_.joinable()) thread_ = std::thread([this] { serve(); });
  uint64_t one = 1;
  (void)!::write(wake_.get(), &one, sizeof one);
  return success();
}

// Serves `maxPages` pending pages of `r` from `page` on (fewer: it stops at the first page not
// pending and at the end of the image segment holding them).
Status LazyServer::copyRun(Ctx& x, Range& r, uint64_t page, uint64_t maxPages, bool fault, uint64_t* done) {
  uint64_t img = r.img + page * kPage;
  auto it = std::upper_bound(x.segs->begin(), x.segs->end(), img,
                             [](uint64_t a, const Segment& s) { return a < s.addr; });
  if (it == x.segs->begin() || std::prev(it)->addr + std::prev(it)->pages * kPage <= img)
    return makeError(fmt::format("internal: page {:#x} of pid {} is pending but in no image segment", img, x.imagePid));
  const Segment& s = *std::prev(it);
  uint64_t n = 0;
  uint64_t segLeft = (s.addr + s.pages * kPage - img) / kPage;
  while (n < maxPages && n < segLeft && page + n < r.st.size() && r.st[page + n] == 0) n++;
  CRB_ASSIGN(ChunkedPayload * f, pagesFile(s.level, x.imagePid));
  if (auto st = f->read((s.filePage + (img - s.addr) / kPage) * kPage, buf_.data(), n * kPage); !st.ok())
    return st.error().context(fmt::format("serving pages of pid {} at {:#x}", x.imagePid, img));
  uffdio_copy c{};
  c.dst = r.start + page * kPage;
  c.src = reinterpret_cast<uint64_t>(buf_.data());
  c.len = n * kPage;
  int rc = ::ioctl(x.uffd.get(), UFFDIO_COPY, &c);
  int err = errno;
  uint64_t got = c.copy > 0 ? uint64_t(c.copy) / kPage : 0;
  if (rc == 0) got = n;
  for (uint64_t i = 0; i < got; i++) r.st[page + i] = 1;
  x.pending -= got;
  *done += got;
  if (rc == 0) return success();
  if (err == EEXIST) {  // already there (not through us): nothing to serve for that page
    if (r.st[page + got] == 0) {
      r.st[page + got] = 1;
      x.pending--;
    }
  } else if (err == ESRCH || err == ENOENT) {
    x.dead = true;  // the process is gone (exited or exec'd)
    x.pending = 0;
    return success();
  } else if (err != EAGAIN) {
    return sysError(fmt::format("UFFDIO_COPY {:#x} (+{} pages) into pid {}", c.dst, n, x.imagePid), err);
  }
  if (fault) {  // EAGAIN (the mm is changing) or EEXIST: the faulting thread retries
    uffdio_range w{r.start + page * kPage, kPage};
    ::ioctl(x.uffd.get(), UFFDIO_WAKE, &w);
  }
  return success();
}

Status LazyServer::handle(Ctx& x) {
  uffd_msg msgs[16];
  for (;;) {
    ssize_t n = ::read(x.uffd.get(), msgs, sizeof msgs);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN) return success();
      return sysError(fmt::format("read the userfaultfd of pid {}", x.imagePid), errno);
    }
    for (size_t i = 0; i < size_t(n) / sizeof(uffd_msg); i++) {
      auto& m = msgs[i];
      if (m.event == UFFD_EVENT_PAGEFAULT) {
        auto t0 = Clock::now();
        uint64_t addr = m.arg.pagefault.address & ~(kPage - 1);
        faults_++;
        faultPoint("lazy-fault");  // tests: the page server dies while the tree waits on a fault
        Range* r = nullptr;
        for (auto& q : x.ranges)
          if (addr >= q.start && addr < q.end) r = &q;
        uint64_t page = r ? (addr - r->start) / kPage : 0;
        if (r && r->st[page] == 0) {
          uint64_t got = 0;
          CRB_CHECK(copyRun(x, *r, page, kFaultCluster, true, &got));
          faultPages_ += got;
        } else if (r && r->st[page] == 1) {
          spurious_++;
          uffdio_range w{addr, kPage};
          ::ioctl(x.uffd.get(), UFFDIO_WAKE, &w);
        } else {
          // No data at the dump (or discarded since): a page of zeros, as the kernel would give.
          uffdio_zeropage z{};
          z.range = {addr, kPage};
          if (::ioctl(x.uffd.get(), UFFDIO_ZEROPAGE, &z) != 0) {
            if (errno == ESRCH || errno == ENOENT) {
              x.dead = true;
              x.pending = 0;
            } else {
              uffdio_range w{addr, kPage};
              ::ioctl(x.uffd.get(), UFFDIO_WAKE, &w);
            }
          } else {
            zeroPages_++;
            if (r) r->st[page] = 1;
          }
        }
        faultUs_.push_back(std::chrono::duration<double, std::micro>(Clock::now() - t0).count());
      } else if (m.event == UFFD_EVENT_FORK) {
        // The child's missing pages are the parent's: served from the same image.
        auto y = std::make_unique<Ctx>();
        y->uffd.reset(int(m.arg.fork.ufd));
        ::fcntl(y->uffd.get(), F_SETFD, FD_CLOEXEC);
        y->imagePid = x.imagePid;
        y->segs = x.segs;
        y->ranges = x.ranges;
        y->pending = x.pending;
        sendKeeper('U', y->uffd.get());
        ctxs_.push_back(std::move(y));
        forks_++;
        needPidScan_ = true;
      } else if (m.event == UFFD_EVENT_REMOVE || m.event == UFFD_EVENT_UNMAP) {
        // Discarded or unmapped: from now on those pages are zeros (or not there), never the image's.
        uint64_t s = m.arg.remove.start, e = m.arg.remove.end;
        removes_++;
        for (auto& q : x.ranges)
          for (uint64_t a = std::max(s, q.start); a < std::min(e, q.end); a += kPage) {
            auto& st = q.st[(a - q.start) / kPage];
            if (st == 0) x.pending--;
            st = 2;
          }
      } else if (m.event == UFFD_EVENT_REMAP) {
        uint64_t from = m.arg.remap.from, to = m.arg.remap.to, len = m.arg.remap.len;
        remaps_++;
        std::vector<Range> out;
        for (auto& q : x.ranges) {
          uint64_t s = std::max(q.start, from), e = std::min(q.end, from + len);
          if (s >= e) {
            out.push_back(std::move(q));
            continue;
          }
          auto piece = [&](uint64_t a, uint64_t b, uint64_t at) {
            Range p{at, at + (b - a), q.img + (a - q.start),
                    std::vector<uint8_t>(q.st.begin() + long((a - q.start) / kPage),
                                         q.st.begin() + long((b - q.start) / kPage))};
            out.push_back(std::move(p));
          };
          if (q.start < s) piece(q.start, s, q.start);
          piece(s, e, s - from + to);
          if (e < q.end) piece(e, q.end, e);
        }
        x.ranges = std::move(out);
        x.cursorRange = 0;
        x.cursorPage = 0;
      }
    }
  }
}

Status LazyServer::pushSome() {
  faultPoint("lazy-push");  // tests: the page server dies mid-restore
  uint64_t budget = kPushBudget;
  for (size_t k = 0; k < ctxs_.size() && budget; k++) {
    Ctx& x = *ctxs_[k];
    while (!x.dead && x.pending && budget && x.cursorRange < x.ranges.size()) {
      Range& r = x.ranges[x.cursorRange];
      while (x.cursorPage < r.st.size() && r.st[x.cursorPage] != 0) x.cursorPage++;
      if (x.cursorPage >= r.st.size()) {
        x.cursorRange++;
        x.cursorPage = 0;
        continue;
      }
      uint64_t got = 0;
      CRB_CHECK(copyRun(x, r, x.cursorPage, budget, false, &got));
      pushedPages_ += got;
      budget -= std::min(budget, std::max<uint64_t>(got, 1));
    }
    if (!x.dead && x.pending && x.cursorRange >= x.ranges.size()) {
      // Pages left behind the cursor (a retry after EAGAIN): go round again.
      x.cursorRange = 0;
      x.cursorPage = 0;
    }
  }
  return success();
}

void LazyServer::findForkedChildren() {
  needPidScan_ = false;
  std::set<pid_t> known;
  for (auto& x : ctxs_)
    if (x->pid > 0) known.insert(x->pid);
  std::vector<pid_t> todo(known.begin(), known.end());
  while (!todo.empty()) {
    pid_t p = todo.back();
    todo.pop_back();
    for (pid_t ch : listChildren(p)) {
      if (known.count(ch)) continue;
      known.insert(ch);
      todo.push_back(ch);
      Fd pidfd(int(::syscall(SYS_pidfd_open, ch, 0)));
      if (pidfd.valid()) sendKeeper('P', pidfd.get());
      for (auto& x : ctxs_)
        if (x->pid == 0) {
          x->pid = ch;  // only to be killed with the rest; which child owns which context does not matter
          break;
        }
    }
  }
}

void LazyServer::killTree(const std::string& why) {
  if (failure_.empty()) failure_ = why;
  for (auto& x : ctxs_)
    if (x->pid > 0) ::kill(x->pid, SIGKILL);
}

void LazyServer::serve() {
  std::vector<pollfd> pfd;
  std::vector<Ctx*> who;
  while (!stop_) {
    {
      std::lock_guard lk(mu_);
      pfd.assign(1, {wake_.get(), POLLIN, 0});
      who.assign(1, nullptr);
      for (auto& x : ctxs_)
        if (!x->dead) {
          pfd.push_back({x->uffd.get(), POLLIN, 0});
          who.push_back(x.get());
        }
    }
    bool busy = pushing_ && !done_;
    int n = ::poll(pfd.data(), pfd.size(), busy ? 0 : 200);
    if (stop_) break;
    if (n < 0 && errno != EINTR) {
      std::lock_guard lk(mu_);
      killTree(fmt::format("poll: {}", std::strerror(errno)));
      cv_.notify_all();
      return;
    }
    std::lock_guard lk(mu_);
    uint64_t drain;
    while (::read(wake_.get(), &drain, sizeof drain) > 0) {
    }
    Status st = success();
    for (size_t i = 1; i < pfd.size() && st.ok(); i++)
      if (n > 0 && pfd[i].revents) {
        if (pfd[i].revents & (POLLERR | POLLHUP)) who[i]->dead = true, who[i]->pending = 0;
        else st = handle(*who[i]);
      }
    if (st.ok() && needPidScan_) findForkedChildren();
    if (st.ok() && pushing_ && !done_) {
      st = pushSome();
      uint64_t left = 0;
      for (auto& x : ctxs_) left += x->dead ? 0 : x->pending;
      if (st.ok() && left == 0) {
        allInMs_ = msSince(pushStart_);
        done_ = true;
        cv_.notify_all();
        return;  // every page is in: the userfaultfds can go
      }
    }
    if (!st.ok()) {
      killTree(st.error().message);
      cv_.notify_all();
      return;
    }
  }
}

Result<Json> LazyServer::finish() {
  if (!thread_.joinable()) done_ = true;  // no lazy mapping at all
  // Tests: CRBENCH_LAZY_PUSH_DELAY_MS holds the background push back (faults are still served),
  // so what the tree does first happens while its memory is missing, whatever the machine's speed.
  if (const char* d = ::getenv("CRBENCH_LAZY_PUSH_DELAY_MS"))
    std::this_thread::sleep_for(std::chrono::milliseconds(std::atol(d)));
  {
    std::unique_lock lk(mu_);
    pushStart_ = Clock::now();
    pushing_ = true;
    uint64_t one = 1;
    (void)!::write(wake_.get(), &one, sizeof one);
    cv_.wait(lk, [&] { return done_.load() || !failure_.empty(); });
  }
  if (thread_.joinable()) thread_.join();
  if (!failure_.empty()) {
    abort();
    return makeError("lazy restore failed and the restored tree was killed: " + failure_);
  }
  ctxs_.clear();  // every page is in: closing the userfaultfds changes nothing for the tree
  sendKeeper('D', -1);
  keeper_.reset();
  if (keeperPid_ > 0) ::waitpid(keeperPid_, nullptr, 0);
  keeperPid_ = -1;
  std::sort(faultUs_.begin(), faultUs_.end());
  auto q = [&](double f) { return faultUs_.empty() ? 0.0 : faultUs_[size_t(f * double(faultUs_.size() - 1))]; };
  return Json{{"registered_pages", registeredPages_},
              {"lazy_data_pages", lazyDataPages_},
              {"faults", faults_},
              {"pages_on_fault", faultPages_},
              {"pages_pushed", pushedPages_},
              {"zero_pages_on_fault", zeroPages_},
              {"spurious_faults", spurious_},
              {"forks", forks_},
              {"discards", removes_},
              {"remaps", remaps_},
              {"fault_service_us", {{"median", q(0.5)}, {"p99", q(0.99)}, {"max", q(1.0)}}},
              {"resumed_to_all_pages_ms", allInMs_},
              {"cluster_pages", kFaultCluster},
              {"failure_safety", "keeper process: SIGKILLs the tree if the page server dies"}};
}

}  // namespace crb::native
