#pragma once
// Copy-on-write dump ("defer the copy until after the application resumes"): during the freeze the
// tree's writable private anonymous memory is write-protected through a *synchronous* userfaultfd
// (created in each process like the dirty tracker's); the tree runs again at once. crbench then
// copies every page in the background, and a handler thread serves each write fault by copying
// the page's old content first and only then lifting the protection, so the image holds the
// memory exactly as it was at the freeze. Downtime no longer grows with the memory's size (only
// the page-table walk of the protection does).
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
  Status frozen(DumpCtx& c, pid_t pid, ProcessState& ps) override;
  void released() override;
  Status afterThaw(DumpCtx& c, pid_t pid, ProcessState& ps) override;
  bool ownsRegistration(pid_t pid, uint64_t start, uint64_t end) const override;
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
  };
  void serve();  // handler thread: every process's uffd
  void stopHandler();
  Status copyPending(Proc& p, Range& r, uint64_t from, uint64_t to, bool* any);
  std::filesystem::path dir_;
  std::map<pid_t, std::unique_ptr<Proc>> procs_;
  std::thread handler_;
  std::atomic<bool> stop_{false};
  Fd wake_;  // eventfd that ends the handler's poll
  double protectMs_ = 0, frozenCopyMs_ = 0, backgroundMs_ = 0, lookMs_ = -1;
  std::map<pid_t, std::vector<MapsLine>> looked_;
};

}  // namespace crb::native
