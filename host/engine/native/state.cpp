#include "engine/native/state.hpp"

namespace crb::native {

#define CRB_JSON(T, ...)                                                              \
  void to_json(Json& j, const T& v) { NLOHMANN_JSON_EXPAND(NLOHMANN_JSON_PASTE(NLOHMANN_JSON_TO, __VA_ARGS__)) } \
  void from_json(const Json& j, T& v) {                                               \
    const T d{};                                                                      \
    NLOHMANN_JSON_EXPAND(NLOHMANN_JSON_PASTE(NLOHMANN_JSON_FROM_WITH_DEFAULT, __VA_ARGS__)) \
  }
// NLOHMANN_JSON_FROM_WITH_DEFAULT reads from `nlohmann_json_default_obj`.
#define nlohmann_json_t v
#define nlohmann_json_j j
#define nlohmann_json_default_obj d

CRB_JSON(PageRun, addr, pages)
CRB_JSON(Vma, start, end, pgoff, prot, shared, kind, path, vmflags, object, pages)
CRB_JSON(SigAction, sig, handler, flags, restorer, mask)
CRB_JSON(ThreadState, tid, gpregs, xstate, sigmask, name, robustHead, robustLen, clearTid, altSp,
         altSize, altFlags, rseqPtr, rseqLen, rseqSig, pending)
CRB_JSON(FdEntry, fd, file, cloexec)
CRB_JSON(ProcessState, pid, ppid, pgid, sid, zombie, exitCode, uids, gids, groups, umask,
         personality, comm, cwd, exe, rlimits, mm, auxv, sigactions, sharedPending, itimers, threads,
         fds, vmas, ctty, ttyPgrp, posixTimers)
CRB_JSON(FileDesc, id, kind, path, flags, pos, dev, ino, size, mode, object, stdioFd, count, blobLen,
         outsideRoot, detail)
CRB_JSON(PipeObject, id, ino, capacity, blobLen, readerInTree, writerInTree)
CRB_JSON(ShmemObject, id, dev, ino, size, name, seals, extents)
CRB_JSON(MappedFile, id, path, dev, ino, writable)

}  // namespace crb::native
