#pragma once
// Dirty-page tracking of a running process, for pre-copy rounds: which pages were written since
// the last look. Userfaultfd write-protect in async mode (UFFD_FEATURE_WP_ASYNC: a write to a
// protected page just clears the protection in the kernel, nobody handles a fault) read and
// re-armed atomically by PAGEMAP_SCAN (Linux >= 6.7), or soft-dirty bits where a kernel keeps them.
//
// The userfaultfd belongs to the target's mm, so it is created *in* the target by an injected
// userfaultfd() while the process is seized, taken with pidfd_getfd() and closed in the target at
// once: crbench holds the only reference. If crbench dies, the kernel releases the context, which
// unregisters every range and clears every write-protect bit: the tree is never left protected.
#include <sys/types.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/fsutil.hpp"
#include "core/result.hpp"
#include "engine/native/state.hpp"

namespace crb::native {

class Seizure;

// Creates a userfaultfd in `pid` (seized, injection prepared), takes it with pidfd_getfd and
// closes it there. Without CAP_SYS_PTRACE in the target (vm.unprivileged_userfaultfd=0) only a
// user-mode-only one can be made: allowed when `allowUserModeOnly` (async WP never faults to us;
// a sync handler would see the tree's own syscalls fail with EFAULT on protected buffers).
Result<Fd> injectUserfaultfd(Seizure& s, pid_t pid, bool allowUserModeOnly, bool* userModeOnly = nullptr);
// One read-only PAGEMAP_SCAN walk of [start, end) of pid's open /proc/<pid>/pagemap: the data
// pages (present or swapped, not the zero page) into *data and, among them, those not
// write-protected (written since their protection) into *written. flags: kScanCheckWpAsync for a
// WP_ASYNC userfaultfd's range, 0 for a synchronous one (COW). `what` names the walk in errors.
Status scanDataAndWritten(int pagemapFd, pid_t pid, uint64_t start, uint64_t end, uint64_t flags,
                          std::vector<PageRun>* data, std::vector<PageRun>* written, const char* what);

// One /proc/<pid>/pagemap entry (Documentation/admin-guide/mm/pagemap.rst).
struct PagemapEntry {
  bool present = false, swapped = false, fileOrShared = false, exclusive = false, softDirty = false;
  uint64_t pfn = 0;  // 0 unless the reader has CAP_SYS_ADMIN
};
PagemapEntry parsePagemapEntry(uint64_t e);

// What this kernel offers for dirty tracking, probed in crbench's own memory.
struct DirtyMethods {
  bool uffdWpAsync = false;  // userfaultfd with UFFD_FEATURE_WP_ASYNC (+ WP_UNPOPULATED)
  bool pagemapScan = false;  // the PAGEMAP_SCAN ioctl
  bool softDirty = false;    // CONFIG_MEM_SOFT_DIRTY: pagemap bit 55, cleared by clear_refs "4"
  std::string why;           // what is missing, for messages
};
DirtyMethods probeDirtyMethods();
// The method to use: `forced` is "" / "auto" (UFFD-WP + PAGEMAP_SCAN, else soft-dirty), "uffd-wp"
// or "soft-dirty" (from --dirty-tracking or CRBENCH_DIRTY_TRACKING); an error names what is missing.
Result<std::string> chooseDirtyMethod(const DirtyMethods& have, const std::string& forced);

class DirtyTracker {
 public:
  // Method names recorded in results.
  static constexpr const char* kUffdWp = "uffd-wp-async+pagemap-scan";
  static constexpr const char* kSoftDirty = "soft-dirty";

  // `pid` must be seized in `s` with injection prepared. Tries UFFD-WP first, then soft-dirty;
  // the error says why neither works.
  static Result<std::unique_ptr<DirtyTracker>> attach(Seizure& s, pid_t pid);
  // With a method from chooseDirtyMethod().
  static Result<std::unique_ptr<DirtyTracker>> attach(Seizure& s, pid_t pid, const std::string& method);
  // Soft-dirty only: clear the process's soft-dirty bits (process-wide, so after collect() of
  // every range, with the process stopped: a write between the read and the clear would be lost).
  Status rearm();
  bool softDirty() const { return method_ == kSoftDirty; }
  ~DirtyTracker() { stop(); }
  const std::string& method() const { return method_; }
  bool userModeOnly() const { return userModeOnly_; }
  // Can shared memory mappings (shmem) be tracked too (UFFD_FEATURE_WP_HUGETLBFS_SHMEM)?
  bool tracksShmem() const { return shmem_; }

  // Start tracking [start, end) (a writable private anonymous or, with tracksShmem(), shared
  // memory mapping): register it and
  // write-protect every page, populated or not. Pages written after this are reported by
  // collect(). Returns false (no error) if the kernel would not register that range.
  Result<bool> track(uint64_t start, uint64_t end);
  // Pages of [start, end) written since track() or the previous collect(); re-protects them in
  // the same walk, so no write is lost between the scan and the re-arm.
  Result<std::vector<PageRun>> collect(uint64_t start, uint64_t end);
  // The tree frozen, tracking about to end: the data pages of [start, end) (present or swapped,
  // not the zero page) and, among them, those written since the last collect(), in one walk that
  // re-arms nothing. Fails (EPERM) if the range is no longer registered by this tracker.
  Status scanFinal(uint64_t start, uint64_t end, std::vector<PageRun>* data, std::vector<PageRun>* written);
  // Pages of [start, end) still protected since the last arming (present or swapped, or an
  // unpopulated page's marker, with the write-protect bit): read-only walk. For shared memory the
  // rest of the range is what may have been written: a written page whose page-table entry was
  // dropped since (MADV_DONTNEED, reclaim) keeps its data in the object but shows as nothing.
  Status protectedPages(uint64_t start, uint64_t end, std::vector<PageRun>* out);
  // Write-protect [start, end) again (pages that protectedPages() did not list).
  Status protect(uint64_t start, uint64_t end);
  // Unregister everything (clears all protection). Also done by the destructor.
  void stop();
  // For tests: the fd crbench holds (the tree holds none).
  int fd() const { return uffd_.get(); }

 private:
  pid_t pid_ = 0;
  std::string method_;
  bool userModeOnly_ = false;
  bool shmem_ = false;
  Fd uffd_, pagemap_, clearRefs_;
  // Soft-dirty: pagemap entries of [start, end): data pages (present or swapped) and those with
  // the soft-dirty bit.
  Status readSoftDirty(uint64_t start, uint64_t end, std::vector<PageRun>* data, std::vector<PageRun>* written);
  std::vector<std::pair<uint64_t, uint64_t>> tracked_;
};

}  // namespace crb::native
