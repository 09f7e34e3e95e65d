#pragma once
// How the dump takes the memory when the tree is not simply kept frozen while every page is
// copied (stop-and-copy): pre-copy (precopy.hpp) copied most of it in rounds before the freeze,
// copy-on-write (cow.hpp) protects it and copies it after the thaw. The dump calls frozen() for
// each process instead of copying its pages, lets the tree run again, then afterThaw() writes
// pages-<pid>.img. Either way the tree is left running after the dump (leave-running).
#include <sys/types.h>

#include <cstdint>
#include <vector>

#include "core/json.hpp"
#include "core/result.hpp"
#include "engine/native/image.hpp"
#include "engine/native/procfs.hpp"
#include "engine/native/state.hpp"

namespace crb::native {

struct DumpCtx;
struct ProcessState;

class MemoryCapture {
 public:
  virtual ~MemoryCapture() = default;
  virtual Status frozen(DumpCtx& c, pid_t pid, ProcessState& ps) = 0;
  virtual Status afterThaw(DumpCtx& c, pid_t pid, ProcessState& ps) = 0;
  // Called right after the tree was released, before the first afterThaw().
  virtual void released() {}
  // Is [start, end) of pid registered (uffd-wp) by this capture, not by the tree itself?
  virtual bool ownsRegistration(pid_t pid, uint64_t start, uint64_t end) const = 0;
  virtual Json figures() const = 0;
  // The engine mode's name, recorded in an incremental image (incremental.cpp).
  virtual const char* mode() const { return "capture"; }
  // The process's mappings with VmFlags as read (smaps, a page-table walk) just before the freeze
  // while the tree ran, or null. The frozen dump then reads only /proc/pid/maps (no walk) and takes
  // the flags of each identical line from here; dump.cpp checks them against a look after the
  // release (verifyCachedVmFlags), and any line not found here sends it back to smaps.
  virtual const std::vector<MapsLine>* cachedLayout(pid_t) const { return nullptr; }
  // Frozen: the data pages (present or swapped, not the zero page) of [start, end) if the capture
  // tracks that mapping and can find them in the walk it does anyway (pre-copy: the final dirty
  // scan); `handled` false: the dump scans the usual way.
  virtual Status trackedPages(pid_t, uint64_t, uint64_t, bool* handled, std::vector<PageRun>*) {
    *handled = false;
    return success();
  }
  // Frozen: a shared memory object (shared anonymous, memfd, deleted tmpfs file; `fd` open on it)
  // the capture pre-copied: it sets o.extents and holds what changed since its last round;
  // emitShmem() writes the data to blobs.img after the thaw. `handled` false: the dump reads the
  // object itself (into memory, written after the thaw in the objects' order).
  virtual Status frozenShmem(DumpCtx&, ShmemObject&, int /*fd*/, bool* handled) {
    *handled = false;
    return success();
  }
  virtual Status emitShmem(DumpCtx&, const ShmemObject& o, ImageWriter&) {
    return makeError(fmt::format("internal: shared memory object {} was not captured", o.id));
  }
};

}  // namespace crb::native
