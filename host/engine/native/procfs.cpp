#include "engine/native/procfs.hpp"

#include <dirent.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <sstream>

#include "core/fsutil.hpp"

namespace crb::native {

Result<std::string> readProc(pid_t pid, const std::string& file) {
  auto r = readFile(fmt::format("/proc/{}/{}", pid, file));
  if (!r.ok()) return r.error();
  return r;
}

Result<std::map<std::string, std::string>> readStatus(pid_t pid, pid_t tid) {
  CRB_ASSIGN(auto s, readProc(pid, tid ? fmt::format("task/{}/status", tid) : "status"));
  std::map<std::string, std::string> m;
  std::istringstream in(s);
  std::string line;
  while (std::getline(in, line)) {
    auto c = line.find(':');
    if (c == std::string::npos) continue;
    auto v = line.substr(c + 1);
    auto b = v.find_first_not_of(" \t");
    m[line.substr(0, c)] = b == std::string::npos ? "" : v.substr(b);
  }
  return m;
}

Result<std::vector<std::string>> readStat(pid_t pid) {
  CRB_ASSIGN(auto s, readProc(pid, "stat"));
  auto l = s.find('('), r = s.rfind(')');
  if (l == std::string::npos || r == std::string::npos)
    return makeError(fmt::format("cannot parse /proc/{}/stat", pid));
  std::vector<std::string> f{"", s.substr(0, l - 1), s.substr(l + 1, r - l - 1)};
  std::istringstream in(s.substr(r + 2));
  std::string w;
  while (in >> w) f.push_back(w);
  return f;
}

std::vector<pid_t> listTasks(pid_t pid) {
  std::vector<pid_t> out;
  DIR* d = ::opendir(fmt::format("/proc/{}/task", pid).c_str());
  if (!d) return out;
  while (auto* e = ::readdir(d))
    if (e->d_name[0] != '.') out.push_back(pid_t(std::atoi(e->d_name)));
  ::closedir(d);
  std::sort(out.begin(), out.end());
  // main thread first
  auto it = std::find(out.begin(), out.end(), pid);
  if (it != out.end()) std::rotate(out.begin(), it, it + 1);
  return out;
}

std::vector<pid_t> listChildren(pid_t pid) {
  std::vector<pid_t> out;
  for (pid_t t : listTasks(pid)) {
    auto s = readFile(fmt::format("/proc/{}/task/{}/children", pid, t));
    if (!s.ok()) continue;
    std::istringstream in(*s);
    pid_t c;
    while (in >> c) out.push_back(c);
  }
  return out;
}

Result<std::string> readLink(const std::string& path) {
  char buf[4096];
  ssize_t n = ::readlink(path.c_str(), buf, sizeof buf - 1);
  if (n < 0) return sysError("readlink " + path, errno);
  return std::string(buf, size_t(n));
}

uint64_t parseHex(const std::string& s) { return std::strtoull(s.c_str(), nullptr, 16); }

Result<std::vector<MapsLine>> readMaps(pid_t pid, bool withVmFlags) {
  CRB_ASSIGN(auto s, readProc(pid, withVmFlags ? "smaps" : "maps"));
  std::vector<MapsLine> out;
  std::istringstream in(s);
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("VmFlags:", 0) == 0) {
      if (!out.empty()) out.back().vmflags = line.substr(8);
      continue;
    }
    // A maps line starts with "<hex>-<hex> "; smaps detail lines start with "Name:".
    auto dash = line.find('-');
    auto sp = line.find(' ');
    if (dash == std::string::npos || sp == std::string::npos || dash > sp) continue;
    if (line.find(':') < dash) continue;
    MapsLine m;
    std::istringstream l(line);
    std::string range, off, dev;
    l >> range >> m.perms >> off >> dev >> m.ino;
    m.start = parseHex(range.substr(0, dash));
    m.end = parseHex(range.substr(dash + 1));
    m.pgoff = parseHex(off) / 4096;
    auto colon = dev.find(':');
    m.devMajor = unsigned(parseHex(dev.substr(0, colon)));
    m.devMinor = unsigned(parseHex(dev.substr(colon + 1)));
    std::string rest;
    std::getline(l, rest);
    auto b = rest.find_first_not_of(' ');
    m.path = b == std::string::npos ? "" : rest.substr(b);
    out.push_back(std::move(m));
  }
  return out;
}

Status pagemapScan(int fd, PmScanArg a, std::vector<PageRegion>& vec, const std::string& what,
                   const std::function<void(const PageRegion&)>& each) {
  const uint64_t end = a.end;
  for (uint64_t at = a.start; at < end;) {
    a.size = sizeof a;
    a.start = at;
    a.end = end;
    a.walk_end = 0;
    a.max_pages = 0;
    a.vec = reinterpret_cast<uint64_t>(vec.data());
    a.vec_len = vec.size();
    long n = ::ioctl(fd, kPagemapScan, &a);
    if (n < 0) return sysError(fmt::format("PAGEMAP_SCAN ({}) at {:#x}", what, at), errno);
    for (long i = 0; i < n; i++) each(vec[size_t(i)]);
    // Without max_pages only a full vec stops the walk before `end`.
    if (size_t(n) < vec.size()) break;
    uint64_t next = std::max<uint64_t>(a.walk_end, n > 0 ? vec[size_t(n) - 1].end : 0);
    if (next <= at) break;
    at = next;
  }
  return success();
}

}  // namespace crb::native
