#pragma once
// Lazy restore (issue #9): the restored tree runs before its memory is in. Each restored process's
// writable private anonymous mappings are registered with a userfaultfd in MISSING mode (made in
// the process by an injected userfaultfd(), taken with pidfd_getfd, closed there) instead of being
// filled; a page-server thread in crbench answers each fault with UFFDIO_COPY from the image (or
// UFFDIO_ZEROPAGE for a page that held no data) and, once the tree runs, pushes every remaining
// page in the background. When all are in it closes the userfaultfds and restoreTree returns.
// What the tree needs to start (inventory, cores, files, blobs, the pages of mappings that are not
// served lazily) is verified before it runs; the served pages are verified chunk by chunk as they
// are first served (ChunkedPayload, image.hpp): a corrupt chunk found once the tree runs kills
// the tree (it cannot run on wrong memory) and the restore fails naming the file and offset. An
// image without chunk sums (older crbench) is verified whole before the tree runs.
//
// Non-cooperative events keep the served memory right: fork (the child's memory is served too),
// madvise(DONTNEED) and munmap (those pages read as zero from then on, never the image's), mremap
// (the pages move with the mapping).
//
// If the page server dies, the tree must not run on with pages it never got (once the last
// userfaultfd reference is closed the kernel fills missing pages with zeros) nor hang forever on a
// fault nobody answers: a *keeper* process, forked before the first userfaultfd exists, holds a
// copy of every userfaultfd and a pidfd of every restored process. If crbench's end of its socket
// closes without "done", the keeper SIGKILLs the tree, waits until it is gone and only then lets
// the userfaultfds go. (CRIU's lazy-pages daemon has the hang without the kill.) Processes the tree
// forks during the lazy phase are handed to the keeper when crbench sees them: one forked and
// killed in the same instant as the server can escape it.
#include <sys/types.h>

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "core/fsutil.hpp"
#include "core/json.hpp"
#include "core/result.hpp"
#include "engine/native/image.hpp"
#include "engine/native/incremental.hpp"
#include "engine/native/state.hpp"

namespace crb::native {

struct RestoreCtx;

// Registers `ps`'s writable private anonymous mappings with c.lazy (restoreMemory, after the
// mappings exist, before anything is written); returns them (they are not filled).
Result<std::vector<std::pair<uint64_t, uint64_t>>> lazyRegister(RestoreCtx& c, const ProcessState& ps);

class LazyServer {
 public:
  // Forks the keeper (no userfaultfd exists yet); the server thread starts with the first add().
  static Result<std::shared_ptr<LazyServer>> create(std::shared_ptr<PageChain> chain);
  ~LazyServer();
  Status add(pid_t pid, const ProcessState& ps, Fd uffd, std::vector<std::pair<uint64_t, uint64_t>> ranges);
  // The tree runs: push every remaining page, return once all are in (figures). On a failure the
  // tree is killed and the error says why.
  Result<Json> finish();
  void abort();  // the restore failed: stop serving (the restorer kills the tree)

 private:
  struct Range {
    uint64_t start = 0, end = 0, img = 0;  // img: the address in the image of `start`
    std::vector<uint8_t> st;               // per page: 0 pending, 1 in, 2 zero (no data / discarded)
  };
  struct Ctx {
    Fd uffd;
    pid_t pid = 0;  // 0: a child forked during the lazy phase, not yet identified
    pid_t imagePid = 0;
    std::shared_ptr<std::vector<Segment>> segs;
    std::vector<Range> ranges;
    uint64_t pending = 0;
    bool dead = false;
    size_t cursorRange = 0;
    uint64_t cursorPage = 0;
  };
  void serve();
  Status handle(Ctx& x);
  Status copyRun(Ctx& x, Range& r, uint64_t page, uint64_t maxPages, bool fault, uint64_t* done);
  Status pushSome();
  void sendKeeper(char tag, int fd);
  void killTree(const std::string& why);
  void findForkedChildren();
  Result<ChunkedPayload*> pagesFile(int level, pid_t imagePid);

  std::shared_ptr<PageChain> chain_;
  std::vector<std::unique_ptr<Ctx>> ctxs_;
  std::map<std::pair<int, pid_t>, ChunkedPayload> files_;  // each chunk verified as it is first served
  std::mutex mu_;
  std::thread thread_;
  Fd wake_, keeper_;
  pid_t keeperPid_ = -1;
  std::atomic<bool> stop_{false}, pushing_{false}, done_{false};
  std::condition_variable cv_;
  std::string failure_;
  bool needPidScan_ = false;
  std::vector<char> buf_;
  // Figures.
  std::chrono::steady_clock::time_point pushStart_;
  double allInMs_ = 0;
  uint64_t faults_ = 0, faultPages_ = 0, pushedPages_ = 0, zeroPages_ = 0, forks_ = 0, removes_ = 0, remaps_ = 0,
           spurious_ = 0;
  std::vector<double> faultUs_;
  uint64_t registeredPages_ = 0, lazyDataPages_ = 0;
};

}  // namespace crb::native
