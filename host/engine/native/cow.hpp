#pragma once
// Copy-on-write dump ("defer the copy until after the application resumes"): during the freeze the
// tree's writable private anonymous memory is write-protected through a *synchronous* userfaultfd
// (created in each process like the dirty tracker's); the tree runs again at once. crbench then
// copies every page in the background, and a handler thread serves each write fault by copying
// the page's old content first and only then lifting the protection, so the image holds the
// memory exactly as it was at the freeze. Downtime no longer grows with the memory's size (only
// the page-table walk of the protection does).
//
// Armed before the freeze (arm()): while the tree still runs, each process gets its userfaultfd
// and its writable private anonymous memory is registered and write-protected (the page-table walk
// that used to be most of the freeze). Until the freeze the handler only lifts the protection of a
// page the tree writes (no copy: there is no snapshot yet). In the freeze, one read-only
// PAGEMAP_SCAN per mapping, the walk the layout does anyway, lists its data pages and, among them,
// those not write-protected now (written since arming, new, or refilled after MADV_DONTNEED): only
// those are protected again. The kernel's own page-table bits are the record, not the handler's
// bookkeeping, so nothing written between arming and freeze can be missed. From the first look in
// the freeze the handler copies before it lifts a protection. A process forked or a mapping made
// after arming is protected whole in the freeze, as without arming.
//
// If crbench dies, its userfaultfd (the only reference) is released: the kernel wakes every
// blocked writer and clears every protection. If the tree unmaps or discards protected memory
// before it was copied (munmap, madvise, mremap: reported as uffd events), the old content is
// gone: the dump fails and says so; the tree runs on.
#include <sys/types.h>

#include <atomic>
#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "core/fsutil.hpp"
#include "core/json.hpp"
#include "engine/native/capture.hpp"
#include "engine/native/precopy.hpp"

namespace crb::native {

class CowSession : public MemoryCapture {
 public:
  explicit CowSession(std::filesystem::path dir) : dir_(std::move(dir)) {}
  ~CowSession() override;
  // While the tree runs, before the freeze: seize it for a moment to give every process a
  // userfaultfd (the pause is measured), let it run, then register and write-protect its writable
  // private anonymous memory and start the handler. An error leaves the tree running unprotected.
  Status arm(const std::vector<pid_t>& roots);
  Status trackedPages(pid_t pid, uint64_t start, uint64_t end, bool* handled, std::vector<PageRun>* pages) override;
  Status frozen(DumpCtx& c, pid_t pid, ProcessState& ps) override;
  void released() override;
  Status afterThaw(DumpCtx& c, pid_t pid, ProcessState& ps) override;
  bool ownsRegistration(pid_t pid, uint64_t start, uint64_t end) const override;
  // Shared memory is not write-protected: the dump reads each object in the freeze; this only
  // records it (and why) for the figures.
  Status frozenShmem(DumpCtx& c, ShmemObject& o, int fd, bool* handled) override;
  Json figures() const override;
  const char* mode() const override { return "cow"; }
  // While the tree still runs, right before the freeze: each process's layout with VmFlags
  // (smaps, a page-table walk), so the freeze reads only /proc/pid/maps (see capture.hpp).
  void lookBeforeFreeze(const std::vector<pid_t>& roots);
  const std::vector<MapsLine>* cachedLayout(pid_t pid) const override;

 private:
  struct Range {
    uint64_t start = 0, end = 0;
    std::vector<uint8_t> state;  // per page: 0 not in the image, 1 still protected and uncopied, 2 copied
  };
  struct Proc {
    pid_t pid = 0;
    Fd uffd;
    std::unique_ptr<PageStore> store;
    std::vector<Range> ranges;
    mutable std::mutex mu;  // ranges' states and the store, shared by the handler and the background copy
    std::string failure;
    uint64_t faultCopies = 0, faults = 0, backgroundPages = 0, frozenPages = 0;
    double maxFaultUs = 0;
    // Armed before the freeze: the ranges registered then (the tree may have changed them since:
    // each is registered again, harmlessly, before it is trusted in the freeze).
    std::vector<std::pair<uint64_t, uint64_t>> armed;
    bool snapshot = false;  // the freeze has begun: a fault copies the page before unprotecting
    // Pages copied by a fault in the freeze before their mapping's range was set up.
    std::set<uint64_t> early;
    uint64_t armedFaults = 0, reprotected = 0, armedPages = 0;
  };
  Range makeRange(Proc& p, uint64_t start, uint64_t end, const std::vector<PageRun>& pages);
  Status setupProc(DumpCtx* c, pid_t pid, std::unique_ptr<Proc>* out);
  void serve();  // handler thread: every process's uffd
  void stopHandler();
  Status copyPending(Proc& p, Range& r, uint64_t from, uint64_t to, bool* any);
  std::filesystem::path dir_;
  std::map<pid_t, std::unique_ptr<Proc>> procs_;
  mutable std::mutex procsMu_;  // procs_'s shape: the handler polls every uffd, new ones in the freeze
  std::atomic<uint64_t> procsGen_{0};
  bool armedBeforeFreeze_ = false;
  std::string armSkipped_;  // why arming was not done (figures)
  double armPauseMs_ = 0, armProtectMs_ = 0, reprotectMs_ = 0;
  double freezeSplitMs_[3] = {0, 0, 0};  // trackedPages(): lock + register again, scan, re-protect
  std::thread handler_;
  std::atomic<bool> stop_{false};
  Fd wake_;  // eventfd that ends the handler's poll
  double protectMs_ = 0, frozenCopyMs_ = 0, backgroundMs_ = 0, lookMs_ = -1;
  std::map<pid_t, std::vector<MapsLine>> looked_;
  Json shared_ = Json::array();  // shared memory objects copied in the freeze, and why
};

}  // namespace crb::native
