#pragma once
// How the dump takes the memory when the tree is not simply kept frozen while every page is
// copied (stop-and-copy): pre-copy (precopy.hpp) copied most of it in rounds before the freeze,
// copy-on-write (cow.hpp) protects it and copies it after the thaw. The dump calls frozen() for
// each process instead of copying its pages, lets the tree run again, then afterThaw() writes
// pages-<pid>.img. Either way the tree is left running after the dump (leave-running).
#include <sys/types.h>

#include <cstdint>

#include "core/json.hpp"
#include "core/result.hpp"

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
};

}  // namespace crb::native
