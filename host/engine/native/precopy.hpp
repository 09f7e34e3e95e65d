#pragma once
// Iterative pre-copy of a process tree's memory while it runs (DirtyTracker finds what each round
// must copy again), then a short freeze that takes the last dirty pages and the rest of the state
// (the ordinary dump, told by DumpOptions::precopy to copy only what changed). The tree runs again
// as soon as everything is captured; the image is assembled from the page store after the thaw.
//
// Pages live in a per-process store file in the image directory until the final image is written:
// an interval map (address -> slot) so a page dirtied again overwrites its own slot.
#include <sys/stat.h>
#include <sys/types.h>

#include <chrono>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/fsutil.hpp"
#include "core/json.hpp"
#include "core/result.hpp"
#include "engine/native/capture.hpp"
#include "engine/native/dirty.hpp"
#include "engine/native/state.hpp"

namespace crb::native {

struct DumpCtx;

struct PreCopyOptions {
  double targetDowntimeMs = 10;  // stop when the last dirty set would copy in this long
  int maxRounds = 12;            // after the first full copy
  double maxSeconds = 60;        // all rounds together
  double minShrink = 0.9;        // stop when a round's dirty set is not below this share of the last
  // auto | uffd-wp | soft-dirty; empty: $CRBENCH_DIRTY_TRACKING, else auto (chooseDirtyMethod).
  std::string dirtyTracking;
};

class PageStore {
 public:
  static Result<std::unique_ptr<PageStore>> create(const std::filesystem::path& file);
  ~PageStore();
  // Copies `pages` pages at `addr` of `pid` into the store. `live`: the process runs (a read
  // failure drops those pages from the store: the final round copies them); frozen: an error.
  Status copy(pid_t pid, uint64_t addr, uint64_t pages, bool live, uint64_t* copied);
  // Stores `pages` pages at `addr` from `data` (read by the caller).
  Status put(uint64_t addr, uint64_t pages, const char* data);
  void forget(uint64_t start, uint64_t end);
  // Parts of [addr, addr + pages) the store does not hold.
  std::vector<PageRun> gaps(uint64_t addr, uint64_t pages) const;
  // Reads `pages` stored pages at `addr` (all must be held) into `buf`.
  Status read(uint64_t addr, uint64_t pages, std::vector<char>* buf);
  // Streams the stored pages of `runs` (all must be held) in order into `out`.
  Status emit(const std::vector<PageRun>& runs, class PageSink& out, uint64_t* bytes);
  uint64_t slots() const { return nextSlot_; }

 private:
  struct Extent {
    uint64_t pages, slot;
  };
  // Splits [addr, +pages) into pieces each held contiguously (slot) or new (allocated at the end).
  std::vector<std::pair<PageRun, uint64_t>> place(uint64_t addr, uint64_t pages);
  std::filesystem::path path_;
  Fd fd_;
  std::map<uint64_t, Extent> ext_;  // by start address, non-overlapping
  uint64_t nextSlot_ = 0;
  std::vector<char> buf_;
};

class PreCopySession : public MemoryCapture {
 public:
  // Seizes the tree for a moment to give every process a dirty tracker (the pause is measured),
  // then lets it run. Nothing is copied yet.
  static Result<std::unique_ptr<PreCopySession>> start(pid_t root, const std::filesystem::path& dir,
                                                       const PreCopyOptions& o);
  ~PreCopySession() override;
  // Copy rounds while the tree runs, until the stop rule says the final freeze is short enough.
  Status iterate();
  // Called by the dump, frozen: does this session's tracker own the registration of [s, e)?
  bool ownsRegistration(pid_t pid, uint64_t start, uint64_t end) const override;
  // Frozen: copy what changed since the last round (and whatever the store lacks) into the store.
  Status frozen(DumpCtx& c, pid_t pid, ProcessState& ps) override;
  // After the thaw: write pages-<pid>.img from the store.
  Status afterThaw(DumpCtx& c, pid_t pid, ProcessState& ps) override;
  void released() override { stopTracking(); }  // the trackers go (unprotect) as the tree runs again
  const std::vector<MapsLine>* cachedLayout(pid_t pid) const override;
  Status frozenShmem(DumpCtx& c, ShmemObject& o, int fd, bool* handled) override;
  Status emitShmem(DumpCtx& c, const ShmemObject& o, ImageWriter& out) override;
  Status trackedPages(pid_t pid, uint64_t start, uint64_t end, bool* handled, std::vector<PageRun>* pages) override;
  // The last look at every process's layout (smaps) as the rounds end, while the tree runs.
  Status lookBeforeFreeze();
  void stopTracking();
  Json figures() const override { return fig_; }
  const char* mode() const override { return "pre-copy"; }

 private:
  using ShmKey = std::pair<uint64_t, uint64_t>;  // dev, inode (as the dump's ShmemObject)
  struct ShmRange {
    uint64_t start, end, pgoff;
    ShmKey key;
  };
  struct Proc {
    std::unique_ptr<DirtyTracker> tracker;
    std::unique_ptr<PageStore> store;
    std::vector<std::pair<uint64_t, uint64_t>> ranges;  // registered by us
    bool direct = false;  // not tracked (appeared later): the final dump copies it the usual way
    std::vector<MapsLine> layout;  // lookBeforeFreeze()
    bool haveLayout = false;
    // Frozen: pages written since the last round, by mapping start, found by trackedPages() in
    // the walk that also lists the present pages.
    std::map<uint64_t, std::vector<PageRun>> finalDirty;
    // Frozen: the final round's pages, read into memory (held) and stored after the thaw.
    std::vector<PageRun> held;
    std::unique_ptr<char[]> heldData;  // when the final buffer had no room left
    char* heldAt = nullptr;            // held pages: in finalBuf_ or heldData
    std::vector<ShmRange> shmRanges;  // shared memory mappings registered by us
  };
  // Shared memory (shared anonymous, memfd, deleted tmpfs) is pre-copied per object, by offset,
  // from writes seen through every mapping of it in the tree.
  struct ShmObj {
    Fd fd;
    std::unique_ptr<PageStore> store;  // "addresses" are offsets in the object
    std::string broken;                // why it is not pre-copied (copied in the freeze instead)
    struct stat st0 {};                // when first seen: write(2), truncate change mtime/ctime/size
    std::vector<PageRun> held;         // frozen: what changed, read into heldData
    std::unique_ptr<char[]> heldData;
    uint64_t rounds = 0;
  };
  Status shmemLine(pid_t pid, Proc& p, const MapsLine& m, uint64_t* copied, uint64_t* dirty);
  Status copyShm(ShmObj& o, const std::vector<PageRun>& offsets, uint64_t* copied);
  std::map<ShmKey, ShmObj> shm_;
  Status round(int n, Json& fig, uint64_t* dirtyPages, double* copyMs);
  PreCopyOptions opts_;
  std::filesystem::path dir_;
  pid_t root_ = 0;
  std::map<pid_t, Proc> procs_;
  Json fig_ = Json::object();
  std::chrono::steady_clock::time_point lastCollect_;
  double bytesPerMs_ = 0;  // copy speed measured in the rounds
  std::string method_;     // DirtyTracker::kUffdWp or kSoftDirty
  // The final round's destination, mapped and faulted in before the freeze (lookBeforeFreeze):
  // a page fault costs 2-4 us on this VM, paid by the freeze for every page of a fresh buffer.
  uint64_t lastRoundDirty_ = 0;
  char* finalBuf_ = nullptr;
  uint64_t finalBufPages_ = 0, finalBufUsed_ = 0;
};

}  // namespace crb::native
