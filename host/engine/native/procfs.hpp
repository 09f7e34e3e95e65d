#pragma once
// Small readers of /proc/<pid>/... used by every per-resource file.
#include <sys/ioctl.h>
#include <sys/types.h>

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "core/result.hpp"

namespace crb::native {

// The PAGEMAP_SCAN ioctl on /proc/<pid>/pagemap (Linux 6.7), declared here because Debian 12's
// headers predate it: the layout scan (memory.cpp) and dirty tracking (dirty.cpp) use it.
struct PageRegion {
  uint64_t start, end, categories;
};
struct PmScanArg {
  uint64_t size, flags, start, end, walk_end, vec, vec_len, max_pages, category_inverted,
      category_mask, category_anyof_mask, return_mask;
};
constexpr unsigned long kPagemapScan = _IOWR('f', 16, PmScanArg);
constexpr uint64_t kScanWpMatching = 1, kScanCheckWpAsync = 2;  // PM_SCAN_* flags
constexpr uint64_t kIsWritten = 1 << 1, kIsFile = 1 << 2, kIsPresent = 1 << 3, kIsSwapped = 1 << 4,
                   kIsPfnZero = 1 << 5;  // PAGE_IS_* categories
// PAGEMAP_SCAN of [a.start, a.end) with a's flags and masks (max_pages unset), as many calls as it
// takes with `vec`: `each` gets every matching region in address order, each page once. The
// kernel's walk_end cannot be trusted alone: it is set only when a buffer fills, so when its
// internal buffer (512 regions) filled and the walk then finished within a larger vec, walk_end
// stays where the buffer filled, before regions already returned (seen on 6.18: the next call
// reported them again, and pre-copy's image held a 4 GiB mapping twice).
Status pagemapScan(int fd, PmScanArg a, std::vector<PageRegion>& vec, const std::string& what,
                   const std::function<void(const PageRegion&)>& each);

Result<std::string> readProc(pid_t pid, const std::string& file);
// "Key:\tvalue" lines of /proc/<pid>/status (or task/<tid>/status).
Result<std::map<std::string, std::string>> readStatus(pid_t pid, pid_t tid = 0);
// Fields of /proc/<pid>/stat, 1-based like proc(5) (field 2 is comm without parentheses).
Result<std::vector<std::string>> readStat(pid_t pid);
std::vector<pid_t> listTasks(pid_t pid);
std::vector<pid_t> listChildren(pid_t pid);  // children of every thread of pid
Result<std::string> readLink(const std::string& path);
uint64_t parseHex(const std::string& s);

struct MapsLine {
  uint64_t start = 0, end = 0, pgoff = 0, ino = 0;
  unsigned devMajor = 0, devMinor = 0;
  std::string perms, path;
  std::string vmflags;  // filled from smaps when asked
};
Result<std::vector<MapsLine>> readMaps(pid_t pid, bool withVmFlags);

}  // namespace crb::native
