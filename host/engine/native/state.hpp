#pragma once
// The state model of a native image: what each per-resource file (memory.cpp, threads.cpp ...)
// fills in at dump time and consumes at restore time. Serialized as JSON by image.cpp's helpers.
#include <sys/types.h>

#include <array>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "core/json.hpp"
#include "engine/native/unix_sockets.hpp"

namespace crb::native {

// A range of pages stored in pages-<pid>.img, in the order they appear there.
struct PageRun {
  uint64_t addr = 0;
  uint64_t pages = 0;
};

struct Vma {
  uint64_t start = 0, end = 0, pgoff = 0;
  int prot = 0;
  bool shared = false;
  // anon | file | shmem (shared anon, memfd, deleted tmpfs: content in blobs) | vdso | vvar |
  // vvar_vclock | deleted-private (content stored in full, mapped anonymous)
  std::string kind;
  std::string path;     // as /proc/<pid>/maps shows it
  std::string vmflags;  // smaps VmFlags
  int object = -1;      // mapped-file id (file) or shmem object id (shmem)
  std::vector<PageRun> pages;
};

struct SigAction {
  int sig = 0;
  uint64_t handler = 0, flags = 0, restorer = 0, mask = 0;
};

struct ThreadState {
  pid_t tid = 0;
  std::string gpregs;  // hex of user_regs_struct
  std::string xstate;  // hex of the NT_X86_XSTATE buffer
  uint64_t sigmask = 0;
  std::string name;
  uint64_t robustHead = 0, robustLen = 0, clearTid = 0;
  uint64_t altSp = 0, altSize = 0;
  int altFlags = 2;  // SS_DISABLE
  uint64_t rseqPtr = 0, rseqLen = 0, rseqSig = 0;
  std::vector<std::string> pending;  // hex siginfo, thread-private queue
};

struct FdEntry {
  int fd = 0;
  int file = -1;  // FileDesc id
  bool cloexec = false;
};

struct ProcessState {
  pid_t pid = 0, ppid = 0, pgid = 0, sid = 0;
  bool zombie = false;
  int exitCode = 0;  // zombies: the wait status
  std::array<uint32_t, 4> uids{}, gids{};  // real, effective, saved, fs
  std::vector<uint32_t> groups;
  unsigned umask = 022;
  unsigned long personality = 0;
  std::string comm, cwd, exe;
  std::vector<std::array<uint64_t, 2>> rlimits;  // RLIMIT_* order, {cur, max}
  std::vector<uint64_t> mm;                      // prctl_mm_map fields up to env_end (11)
  std::string auxv;                              // hex
  std::vector<SigAction> sigactions;
  std::vector<std::string> sharedPending;  // hex siginfo, process-wide queue
  std::vector<std::string> itimers;        // hex struct itimerval, REAL/VIRTUAL/PROF
  std::vector<ThreadState> threads;        // threads[0] is the main thread
  std::vector<FdEntry> fds;
  std::vector<Vma> vmas;
  int ctty = -1;     // session leaders: FileDesc id of the controlling terminal (tty.cpp)
  pid_t ttyPgrp = 0;  // its foreground process group
  Json posixTimers;   // events.cpp: id, clock, signal, notification, time left
};

// One open file description (shared by every fd, in any process, that refers to it).
struct FileDesc {
  int id = 0;
  // reg | dir | dev | deleted (content in blobs) | pipe | memfd | eventfd | epoll | timerfd | signalfd | inotify | stdio (inherited from
  // the restorer: an external pipe/tty/socket at fd 0-2)
  std::string kind;
  std::string path;
  int flags = 0;  // open flags without O_CLOEXEC
  uint64_t pos = 0;
  uint64_t dev = 0, ino = 0, size = 0;
  int mode = 0600;
  int object = -1;   // pipe id / shmem id
  int stdioFd = -1;  // stdio: which of the restorer's fds
  uint64_t count = 0;  // eventfd counter
  uint64_t blobLen = 0;  // deleted: content length in blobs.img
  // reg/dir of a container's process that lives outside its root (e.g. the log file the runtime
  // opened on the host and gave it as stdout): `path` is a host path, opened as such on restore.
  bool outsideRoot = false;
  // Kind-specific state kept by the file that owns the kind (events.cpp, tty.cpp, inet_sockets.cpp).
  Json detail;
};

struct PipeObject {
  int id = 0;
  uint64_t ino = 0;
  int capacity = 65536;
  uint64_t blobLen = 0;  // bytes in flight, stored in blobs.img
  bool readerInTree = false, writerInTree = false;
};

// A shmem-backed object whose contents we carry: shared anonymous memory, memfd, deleted tmpfs.
struct ShmemObject {
  int id = 0;
  uint64_t dev = 0, ino = 0, size = 0;
  std::string name;  // memfd name; "" for shared anonymous memory
  int seals = 0;
  std::vector<std::array<uint64_t, 2>> extents;  // {offset, length} stored in blobs.img in order
};

// A file mapped by path (libraries, executables, MAP_SHARED files).
struct MappedFile {
  int id = 0;
  std::string path;
  uint64_t dev = 0, ino = 0;
  bool writable = false;
};

struct TreeState {
  std::vector<ProcessState> procs;  // parents before children
  std::vector<FileDesc> files;
  std::vector<PipeObject> pipes;    // blobs.img order: pipes, then deleted files, then shmem
  std::vector<ShmemObject> shmem;
  std::vector<MappedFile> mapped;
  std::vector<UnixSocket> unixSockets;  // unix_sockets.cpp
};

void to_json(Json& j, const PageRun& v);
void from_json(const Json& j, PageRun& v);
void to_json(Json& j, const Vma& v);
void from_json(const Json& j, Vma& v);
void to_json(Json& j, const SigAction& v);
void from_json(const Json& j, SigAction& v);
void to_json(Json& j, const ThreadState& v);
void from_json(const Json& j, ThreadState& v);
void to_json(Json& j, const FdEntry& v);
void from_json(const Json& j, FdEntry& v);
void to_json(Json& j, const ProcessState& v);
void from_json(const Json& j, ProcessState& v);
void to_json(Json& j, const FileDesc& v);
void from_json(const Json& j, FileDesc& v);
void to_json(Json& j, const PipeObject& v);
void from_json(const Json& j, PipeObject& v);
void to_json(Json& j, const ShmemObject& v);
void from_json(const Json& j, ShmemObject& v);
void to_json(Json& j, const MappedFile& v);
void from_json(const Json& j, MappedFile& v);

}  // namespace crb::native
