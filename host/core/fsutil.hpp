#pragma once
// File helpers. Everything crbench persists (images, results) goes through writeFileAtomic:
// temp file in the same directory, fsync, rename, fsync of the directory.
#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>

#include "core/result.hpp"

namespace crb {

namespace fs = std::filesystem;

Status writeFileAtomic(const fs::path& path, std::string_view data, unsigned mode = 0644);
Result<std::string> readFile(const fs::path& path);
// Write `text` in one write() to an existing kernel control file (cgroup, /proc/<pid>/clear_refs):
// no temp file, no create; the error names the file and what was written.
Status writeControlFile(const fs::path& path, std::string_view text);
Status makeDirs(const fs::path& dir, unsigned mode = 0755);
// Fails with a clear error when `dir` cannot be created or written.
Status checkWritableDir(const fs::path& dir);

uint32_t crc32(std::string_view data, uint32_t seed = 0);
// Stable 64-bit content hash (FNV-1a), hex; used for cache keys, not security.
std::string contentHash(std::string_view data);

struct DiskUsage {
  uint64_t apparentBytes = 0;   // sum of file sizes
  uint64_t allocatedBytes = 0;  // sum of st_blocks * 512
  uint64_t files = 0;
};
DiskUsage diskUsage(const fs::path& path);

// RAII file descriptor.
class Fd {
 public:
  Fd() = default;
  explicit Fd(int fd) : fd_(fd) {}
  Fd(Fd&& o) noexcept : fd_(o.release()) {}
  Fd& operator=(Fd&& o) noexcept;
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  ~Fd();
  int get() const { return fd_; }
  int release() {
    int f = fd_;
    fd_ = -1;
    return f;
  }
  bool valid() const { return fd_ >= 0; }
  void reset(int fd = -1);

 private:
  int fd_ = -1;
};

}  // namespace crb
