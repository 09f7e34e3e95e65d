#pragma once
// Incremental images (issue #9): a dump that names a parent image stores only the pages that
// changed since it; a restore reads each page from the newest image of the chain that holds it.
//
// On disk (format version 2, docs/native-image.md): an incremental image is a complete image
// (every core/files/blobs file) whose pages-<pid>.img holds only the *stored* pages, listed in
// pageindex-<pid>.img; inventory.img names the parent by relative path, uuid and the checksum of
// its inventory, all verified on restore. Every incremental image also has pagesums-<pid>.img:
// one 64-bit hash (CRC-64) per page of the process's memory, in address order, so the next dump
// of the chain compares against it without reading the parent's pages.
#include <sys/types.h>

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "core/fsutil.hpp"
#include "core/json.hpp"
#include "core/result.hpp"
#include "engine/native/image.hpp"
#include "engine/native/state.hpp"

namespace crb::native {

struct DumpCtx;
struct RestoreCtx;

uint64_t pageHash(const void* page);  // CRC-64 (ECMA, reflected) of one 4 KiB page
std::string newImageUuid();

// Sorted, non-overlapping page runs.
std::vector<PageRun> intersectRuns(const std::vector<PageRun>& a, const std::vector<PageRun>& b);
std::vector<PageRun> subtractRuns(const std::vector<PageRun>& a, const std::vector<PageRun>& b);
uint64_t runPages(const std::vector<PageRun>& r);
std::vector<PageRun> logicalRuns(const ProcessState& ps);  // every data page of the process, by address

// What an incremental dump compares the tree against: the parent's page hashes per image pid.
struct ParentIndex {
  std::filesystem::path dir;
  std::string relPath, uuid;
  uint32_t inventoryCrc = 0;
  int depth = 1;  // images in the parent's chain, the parent included
  std::map<pid_t, std::unordered_map<uint64_t, uint64_t>> hashes;  // image pid -> page address -> hash
  double loadMs = 0;
};
// Verifies the whole chain under `parent` (links, every checksum) and loads its page hashes
// (pagesums-<pid>.img, or computed from a full image's pages).
Result<std::shared_ptr<ParentIndex>> loadParentIndex(const std::filesystem::path& parent,
                                                     const std::filesystem::path& childDir);
// Where the dump's pages of one process go, fed every data page of `ps` in the image's order
// (ps.vmas, then each one's pages): without a parent, straight into pages-<pid>.img; with one
// (--parent), each page is hashed and only those that differ from the parent's page at that
// address are stored (plus pagesums- and pageindex-<pid>.img). Every capture writes through it
// (stop-and-copy here, pre-copy's and COW's page stores after the thaw), so de-duplication against
// the parent does not depend on how a page was captured.
class PageSink {
 public:
  static Result<PageSink> open(DumpCtx& c, pid_t pid, const ProcessState& ps);
  // The next len / 4096 pages.
  Status write(const void* data, size_t len);
  // The next page is known to equal the parent's (tracked and not written since): not read.
  Status unchanged();
  // True if the next page can be skipped by unchanged(); its hash goes to pagesums.
  bool parentHas(uint64_t addr) const;
  uint64_t nextAddr() const;
  // Writes the files and adds what was stored to c.stats.
  Status commit();

 private:
  PageSink() = default;
  Status advance();
  DumpCtx* c_ = nullptr;
  pid_t ipid_ = 0;
  std::optional<ImageWriter> w_;
  const std::unordered_map<uint64_t, uint64_t>* parent_ = nullptr;
  bool incremental_ = false;
  std::vector<PageRun> runs_;
  size_t run_ = 0;
  uint64_t inRun_ = 0, total_ = 0, seen_ = 0;
  std::vector<uint64_t> sums_;
  std::vector<PageRun> stored_;
  uint64_t bytes_ = 0, unchanged_ = 0, notRead_ = 0;
};

// Dump side, per process (frozen): reads every data page, stores only those whose hash differs
// from the parent's page at that address. Writes pages-, pageindex- and pagesums-<pid>.img.
Status dumpIncrementalPages(DumpCtx& c, pid_t pid, ProcessState& ps);
// The inventory fields of an incremental dump ("parent", "incremental").
void incrementalInventory(DumpCtx& c, Json& inv);  // also names the method in the figures

// One image of a chain, newest first. `dir` stays valid after the restorer changes its mount
// namespace (an O_PATH descriptor's /proc/self/fd path).
struct ChainLevel {
  std::filesystem::path dir, shownPath;
  Fd dirFd;
  Json inventory;
  bool incremental = false;
};
// Where each page of a process comes from: a run of pages stored contiguously in one level's
// pages-<pid>.img (filePage: index of the first page in that file's payload).
struct Segment {
  uint64_t addr = 0, pages = 0;
  int level = 0;
  uint64_t filePage = 0;
};
class PageChain {
 public:
  // `dir` is the newest image; its parents are followed and verified (missing, replaced or
  // corrupt: an error naming the image).
  static Result<std::shared_ptr<PageChain>> load(const std::filesystem::path& dir);
  const std::vector<ChainLevel>& levels() const { return levels_; }
  // Segments covering exactly the logical pages of `ps` (the newest image's process), by address.
  Result<std::vector<Segment>> segments(const ProcessState& ps) const;
  // Writes every page of `ps` held by the chain into the process through `memFd`
  // (/proc/pid/mem), skipping [skip) ranges (lazy restore), streaming each level's file and
  // verifying its checksum. Returns pages written.
  Result<uint64_t> restorePages(const ProcessState& ps, int memFd,
                                const std::vector<std::pair<uint64_t, uint64_t>>& skip) const;
  Json describe() const;

 private:
  Result<std::vector<PageRun>> storedRuns(int level, pid_t pid) const;
  std::vector<ChainLevel> levels_;
};

class Seizure;
class DirtyTracker;
// Dirty tracking between two dumps made by one crbench process (the engine's incremental mode):
// attached to each process while the base dump holds it (DumpOptions::track), the tree runs on
// write-protected in async mode (dirty.hpp), and the incremental dump reads only the pages written
// since — the others are the parent's, unread. A userfaultfd lives as long as crbench's
// descriptor, so `crbench cr dump --parent` in a new process cannot use one: it compares hashes.
// If attaching fails (no WP-async here) the incremental dump falls back to hashes and says why.
class MemoryTracker {
 public:
  MemoryTracker();
  ~MemoryTracker();
  void attach(Seizure& s, pid_t pid);  // pid seized, injection prepared
  bool owns(pid_t pid, uint64_t start, uint64_t end) const;
  // Pages of [start, end) of pid written since attach; false if that range is not tracked.
  bool written(pid_t pid, uint64_t start, uint64_t end, std::vector<PageRun>* out);
  std::string failure;  // why some process is not tracked ("" = all are)
  double attachMs = 0;

 private:
  struct Proc;
  std::map<pid_t, std::unique_ptr<Proc>> procs_;
};

// `crbench cr flatten`: a self-contained image with every page of the chain's newest state.
Result<Json> flattenImage(const std::filesystem::path& src, const std::filesystem::path& out, bool sync);

}  // namespace crb::native
