// The state digest: a summary of every process's kernel-visible state, compared before a
// checkpoint and after a restore. Inode numbers of pipes and sockets are kept apart from the
// normalised path because they legitimately change across a restore.
#include <dirent.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <map>
#include <sstream>

#include "agent.hpp"

namespace agent {
namespace {

std::string readLink(const std::string& p) {
  char buf[4096];
  ssize_t n = ::readlink(p.c_str(), buf, sizeof buf - 1);
  if (n < 0) return {};
  return std::string(buf, static_cast<size_t>(n));
}

std::vector<int> numericEntries(const std::string& dir) {
  std::vector<int> out;
  DIR* d = ::opendir(dir.c_str());
  if (!d) return out;
  while (dirent* e = ::readdir(d)) {
    char* end = nullptr;
    long v = std::strtol(e->d_name, &end, 10);
    if (*e->d_name && !*end) out.push_back(static_cast<int>(v));
  }
  ::closedir(d);
  std::sort(out.begin(), out.end());
  return out;
}

struct Stat {
  std::string name;
  char state = '?';
  int ppid = 0;
  bool kernelThread = false;
};

// /proc/pid/stat: "pid (comm) S ppid ..." where comm may contain spaces and parentheses.
bool readStat(int pid, Stat& st) {
  std::string s;
  if (!readText("/proc/" + std::to_string(pid) + "/stat", s)) return false;
  auto open = s.find('('), close = s.rfind(')');
  if (open == std::string::npos || close == std::string::npos || close + 4 > s.size()) return false;
  st.name = s.substr(open + 1, close - open - 1);
  std::istringstream rest(s.substr(close + 2));
  long pgrp = 0, session = 0, tty = 0, tpgid = 0;
  unsigned long flags = 0;
  rest >> st.state >> st.ppid >> pgrp >> session >> tty >> tpgid >> flags;
  st.kernelThread = (flags & 0x00200000UL) != 0;  // PF_KTHREAD
  return true;
}

Json fdInfo(const std::string& base, int fd) {
  std::string target = readLink(base + "/fd/" + std::to_string(fd));
  if (target.empty()) return nullptr;  // closed while we looked (e.g. our own readdir fd)
  std::string kind = "file", path = target, inode;
  auto bracketed = [&](const char* prefix, const char* k) {
    size_t n = std::strlen(prefix);
    if (target.compare(0, n, prefix) != 0) return false;
    kind = k;
    path = target.substr(0, n - 2);  // "socket:[123]" -> "socket"
    inode = target.substr(n, target.size() - n - 1);
    return true;
  };
  if (bracketed("socket:[", "socket") || bracketed("pipe:[", "pipe")) {
  } else if (target.rfind("anon_inode:", 0) == 0) {
    kind = "anon";
  } else if (target.rfind("/dev/", 0) == 0) {
    kind = "dev";
  }
  Json j{{"fd", fd}, {"kind", kind}, {"path", path}};
  if (!inode.empty()) j["inode"] = inode;
  std::string info;
  if (readText(base + "/fdinfo/" + std::to_string(fd), info)) {
    std::istringstream ss(info);
    std::string key, val;
    while (ss >> key >> val) {
      if (key == "pos:") j["pos"] = std::strtoll(val.c_str(), nullptr, 10);
      else if (key == "flags:") j["flags"] = val;
      ss.ignore(1 << 20, '\n');
    }
  }
  return j;
}

Json mapsSummary(const std::string& base) {
  std::string maps;
  uint64_t count = 0, bytes = 0, anonBytes = 0, h = 0xcbf29ce484222325ULL, layout = h;
  if (readText(base + "/maps", maps, 64 << 20)) {
    std::istringstream ss(maps);
    std::string line;
    while (std::getline(ss, line)) {
      // start-end perms offset dev inode path: hash range, perms and path (dev/inode may differ
      // between host and restored filesystems without the mapping being wrong).
      std::istringstream ls(line);
      std::string range, perms, off, dev, ino, path;
      ls >> range >> perms >> off >> dev >> ino;
      std::getline(ls, path);
      path.erase(0, path.find_first_not_of(' '));
      auto dash = range.find('-');
      if (dash == std::string::npos) continue;
      std::string startHex = range.substr(0, dash), endHex = range.substr(dash + 1);
      uint64_t start = std::strtoull(startHex.c_str(), nullptr, 16);
      uint64_t end = std::strtoull(endHex.c_str(), nullptr, 16);
      count++;
      bytes += end - start;
      h = fnv1a(range + " " + perms + " " + path + "\n", h);
      // The layout hash leaves out what a live program changes on its own between two digests:
      // anonymous mappings (malloc arenas come and go), the heap's end (brk) and the stack's
      // low end. File-backed mappings, their placement and protections, the heap's start and the
      // stack's top must survive a restore exactly.
      if (path.empty()) {
        anonBytes += end - start;
      } else if (path == "[heap]") {
        layout = fnv1a("heap " + startHex + " " + perms + "\n", layout);
      } else if (path == "[stack]") {
        layout = fnv1a("stack " + endHex + " " + perms + "\n", layout);
      } else {
        layout = fnv1a(range + " " + perms + " " + off + " " + path + "\n", layout);
      }
    }
  }
  return Json{{"count", count}, {"bytes", bytes}, {"anon_bytes", anonBytes}, {"hash", hex64(h)},
              {"layout_hash", hex64(layout)}};
}

}  // namespace

static void recheckFds(Json& procs);

Json processDigest(int onlyTreeOf) {
  std::map<int, Stat> stats;
  for (int pid : numericEntries("/proc")) {
    Stat st;
    if (readStat(pid, st)) stats[pid] = st;
  }
  auto inTree = [&](int pid) {
    if (onlyTreeOf <= 0) return true;
    for (int p = pid, hops = 0; p > 0 && hops < 4096; ++hops) {
      if (p == onlyTreeOf) return true;
      auto it = stats.find(p);
      if (it == stats.end()) return false;
      p = it->second.ppid;
    }
    return false;
  };
  Json procs = Json::array();
  for (auto& [pid, st] : stats) {
    if (!inTree(pid)) continue;
    // Kernel threads (seen in the VM) come and go with the kernel's work, not the workload's:
    // listing them would make every VM digest comparison noisy.
    if (st.kernelThread) continue;
    std::string base = "/proc/" + std::to_string(pid);
    Json p{{"pid", pid}, {"ppid", st.ppid}, {"name", st.name}, {"state", std::string(1, st.state)}};
    std::string cmd;
    Json argv = Json::array();
    if (readText(base + "/cmdline", cmd)) {
      size_t at = 0;
      while (at < cmd.size()) {
        size_t z = cmd.find('\0', at);
        if (z == std::string::npos) z = cmd.size();
        argv.push_back(cmd.substr(at, z - at));
        at = z + 1;
      }
    }
    p["cmdline"] = argv;
    Json fds = Json::array();
    for (int fd : numericEntries(base + "/fd"))
      if (Json f = fdInfo(base, fd); !f.is_null()) fds.push_back(std::move(f));
    p["fds"] = fds;
    if (pid == ::getpid()) p["agent"] = true;
    p["maps"] = mapsSummary(base);
    // Resident and proportional set sizes: what the workload holds, shared pages split fairly.
    std::string rollup;
    if (readText(base + "/smaps_rollup", rollup)) {
      std::istringstream rs(rollup);
      std::string key;
      long long kib = 0;
      std::string line;
      while (std::getline(rs, line)) {
        std::istringstream ls(line);
        if (!(ls >> key >> kib)) continue;
        if (key == "Rss:") p["rss_kib"] = kib;
        else if (key == "Pss:") p["pss_kib"] = kib;
      }
    }
    p["cwd"] = readLink(base + "/cwd");
    std::string limits;
    p["limits_hash"] = readText(base + "/limits", limits) ? hex64(fnv1a(limits)) : "";
    procs.push_back(std::move(p));
  }
  // A descriptor a workload holds for a moment (a temp file written then renamed, a client
  // connection) is not part of its lasting state. Look twice more, 17 and 46 ms later (not a
  // multiple of the 10 ms period of a typical 100 Hz writer), and keep only descriptors that are
  // there every time with the same target; the ones dropped are counted.
  for (int ms : {17, 29}) {
    ::usleep(ms * 1000);
    recheckFds(procs);
  }
  return procs;
}

static void recheckFds(Json& procs) {
  for (auto& p : procs) {
    std::string base = "/proc/" + std::to_string(p["pid"].get<int>());
    Json stable = Json::array();
    int transient = 0;
    for (auto& f : p["fds"]) {
      Json again = fdInfo(base, f["fd"].get<int>());
      bool same = !again.is_null() && again.value("kind", std::string()) == f.value("kind", std::string()) &&
                  again.value("path", std::string()) == f.value("path", std::string()) &&
                  again.value("inode", std::string()) == f.value("inode", std::string());
      if (same)
        stable.push_back(f);
      else
        transient++;
    }
    p["fds"] = std::move(stable);
    if (transient) p["fds_transient"] = p.value("fds_transient", 0) + transient;
  }
}

}  // namespace agent
