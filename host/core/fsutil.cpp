#include "core/fsutil.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include <cerrno>
#include <cstring>
#include <random>

namespace crb {

Error sysError(const std::string& what, int err) {
  return makeError(fmt::format("{}: {}", what, std::strerror(err)),
                   err == ENOSPC ? "the disk is full: free space or choose another directory" : "");
}

Fd& Fd::operator=(Fd&& o) noexcept {
  if (this != &o) reset(o.release());
  return *this;
}
Fd::~Fd() { reset(); }
void Fd::reset(int fd) {
  if (fd_ >= 0) ::close(fd_);
  fd_ = fd;
}

static Status writeAll(int fd, std::string_view data, const fs::path& path) {
  while (!data.empty()) {
    ssize_t n = ::write(fd, data.data(), data.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      return sysError("write " + path.string(), errno);
    }
    data.remove_prefix(static_cast<size_t>(n));
  }
  return success();
}

Status writeControlFile(const fs::path& path, std::string_view text) {
  Fd fd(::open(path.c_str(), O_WRONLY | O_CLOEXEC));
  if (!fd.valid()) return sysError("open " + path.string(), errno);
  if (::write(fd.get(), text.data(), text.size()) != static_cast<ssize_t>(text.size()))
    return sysError("write '" + std::string(text) + "' to " + path.string(), errno);
  return success();
}

Status writeFileAtomic(const fs::path& path, std::string_view data, unsigned mode) {
  fs::path dir = path.parent_path().empty() ? fs::path(".") : path.parent_path();
  std::random_device rd;
  fs::path tmp = dir / fmt::format(".{}.tmp{:08x}", path.filename().string(), rd());
  Fd fd(::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode));
  if (!fd.valid()) return sysError("create " + tmp.string(), errno);
  auto st = writeAll(fd.get(), data, tmp);
  if (st.ok() && ::fsync(fd.get()) != 0) st = sysError("fsync " + tmp.string(), errno);
  if (st.ok() && ::fchmod(fd.get(), mode) != 0) st = sysError("chmod " + tmp.string(), errno);
  fd.reset();
  if (st.ok() && ::rename(tmp.c_str(), path.c_str()) != 0) st = sysError("rename to " + path.string(), errno);
  if (!st.ok()) {
    ::unlink(tmp.c_str());
    return st;
  }
  Fd dfd(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (dfd.valid()) ::fsync(dfd.get());
  return success();
}

Result<std::string> readFile(const fs::path& path) {
  Fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd.valid()) return sysError("open " + path.string(), errno);
  std::string out;
  char buf[65536];
  for (;;) {
    ssize_t n = ::read(fd.get(), buf, sizeof buf);
    if (n < 0) {
      if (errno == EINTR) continue;
      return sysError("read " + path.string(), errno);
    }
    if (n == 0) break;
    out.append(buf, static_cast<size_t>(n));
  }
  return out;
}

Status makeDirs(const fs::path& dir, unsigned mode) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) return makeError(fmt::format("cannot create directory {}: {}", dir.string(), ec.message()));
  ::chmod(dir.c_str(), mode);
  return success();
}

Status checkWritableDir(const fs::path& dir) {
  CRB_CHECK(makeDirs(dir));
  if (::access(dir.c_str(), W_OK) != 0)
    return makeError(fmt::format("directory {} is not writable", dir.string()),
                     "choose a writable directory");
  fs::path probe = dir / ".crbench-write-probe";
  Fd fd(::open(probe.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
  if (!fd.valid())
    return makeError(fmt::format("directory {} is not writable: {}", dir.string(), std::strerror(errno)),
                     "choose a writable directory");
  ::unlink(probe.c_str());
  return success();
}

uint32_t crc32(std::string_view data, uint32_t seed) {
  return static_cast<uint32_t>(::crc32(seed, reinterpret_cast<const Bytef*>(data.data()),
                                       static_cast<uInt>(data.size())));
}

std::string contentHash(std::string_view data) {
  uint64_t h = 1469598103934665603ull;
  for (unsigned char c : data) {
    h ^= c;
    h *= 1099511628211ull;
  }
  return fmt::format("{:016x}", h);
}

DiskUsage diskUsage(const fs::path& path) {
  DiskUsage u;
  auto add = [&](const fs::path& p) {
    struct stat st {};
    if (::lstat(p.c_str(), &st) != 0 || !S_ISREG(st.st_mode)) return;
    u.apparentBytes += static_cast<uint64_t>(st.st_size);
    u.allocatedBytes += static_cast<uint64_t>(st.st_blocks) * 512;
    u.files++;
  };
  std::error_code ec;
  if (fs::is_directory(path, ec)) {
    for (auto it = fs::recursive_directory_iterator(path, ec); !ec && it != fs::recursive_directory_iterator();
         it.increment(ec))
      add(it->path());
  } else {
    add(path);
  }
  return u;
}

}  // namespace crb
