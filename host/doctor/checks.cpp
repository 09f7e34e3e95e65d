#include "doctor/checks.hpp"

#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <sched.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <exception>
#include <fstream>
#include <set>
#include <sstream>

#include "core/fsutil.hpp"
#include "core/proc.hpp"
#include "crbench_config.h"
#include "crbench_git.h"
#include "engine/engine.hpp"
#include "kvm/accel.hpp"

namespace crb::doctor {

namespace {

std::string trim(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ' || s.back() == '\t')) s.pop_back();
  size_t i = 0;
  while (i < s.size() && (s[i] == ' ' || s[i] == '\t')) ++i;
  return s.substr(i);
}

std::string firstLine(const std::string& s) {
  return trim(s.substr(0, s.find('\n')));
}

// "key: value" lines (/proc/cpuinfo, /proc/meminfo); first occurrence wins.
std::string procField(const std::string& file, const std::string& key) {
  std::ifstream in(file);
  std::string line;
  while (std::getline(in, line)) {
    auto colon = line.find(':');
    if (colon == std::string::npos) continue;
    if (trim(line.substr(0, colon)) == key) return trim(line.substr(colon + 1));
  }
  return "";
}

// PATH lookup without running anything.
std::string findProgram(const std::string& name, const std::vector<std::string>& extraDirs = {}) {
  std::vector<std::string> dirs;
  if (const char* path = std::getenv("PATH")) {
    std::stringstream ss(path);
    std::string d;
    while (std::getline(ss, d, ':'))
      if (!d.empty()) dirs.push_back(d);
  }
  for (auto& d : extraDirs) dirs.push_back(d);
  for (auto& d : dirs) {
    std::string p = d + "/" + name;
    if (::access(p.c_str(), X_OK) == 0) return p;
  }
  return "";
}

// Linux 6.7 uapi (include/uapi/linux/fs.h); Debian 12's headers predate it.
struct PageRegion {
  uint64_t start, end, categories;
};
struct PmScanArg {
  uint64_t size, flags, start, end, walkEnd, vec, vecLen, maxPages, categoryInverted, categoryMask,
      categoryAnyofMask, returnMask;
};
constexpr uint64_t kPageIsPresent = 1 << 3;
constexpr unsigned long kPagemapScan = _IOWR('f', 16, PmScanArg);

// Bits of uffdio_api.features (include/uapi/linux/userfaultfd.h, 6.7), named here because the
// 6.1 headers lack the newer ones.
constexpr uint64_t kUffdFeatureWp = 1ULL << 0;  // UFFD_FEATURE_PAGEFAULT_FLAG_WP
constexpr uint64_t kUffdFeatureWpHugetlbfsShmem = 1ULL << 12;
constexpr uint64_t kUffdFeatureWpUnpopulated = 1ULL << 13;
constexpr uint64_t kUffdFeatureWpAsync = 1ULL << 15;

bool connectUnix(const std::string& path, std::string& err) {
  Fd s(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!s.valid()) {
    err = std::strerror(errno);
    return false;
  }
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::snprintf(addr.sun_path, sizeof(addr.sun_path), "%s", path.c_str());
  if (::connect(s.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    err = std::strerror(errno);
    return false;
  }
  return true;
}

}  // namespace

Json hostInfo() {
  Json h = Json::object();
  utsname u{};
  if (::uname(&u) == 0) {
    h["kernel"] = u.release;
    h["kernel_version"] = u.version;
    h["arch"] = u.machine;
  }
  std::string os = procField("/etc/os-release", "PRETTY_NAME");
  if (os.empty()) {
    std::ifstream in("/etc/os-release");
    std::string line;
    while (std::getline(in, line))
      if (line.rfind("PRETTY_NAME=", 0) == 0) os = line.substr(12);
  }
  if (os.size() >= 2 && os.front() == '"') os = os.substr(1, os.size() - 2);
  h["os"] = os;
  h["cpu_model"] = procField("/proc/cpuinfo", "model name");
  std::set<std::string> flags;
  {
    std::stringstream ss(procField("/proc/cpuinfo", "flags"));
    std::string f;
    while (ss >> f) flags.insert(f);
  }
  Json fl = Json::object();
  for (const char* f : {"avx512f", "avx2", "vmx", "svm", "hypervisor", "pdpe1gb"})
    fl[f] = flags.count(f) > 0;
  h["cpu_flags"] = fl;
  h["cores"] = ::sysconf(_SC_NPROCESSORS_ONLN);
  std::string mem = procField("/proc/meminfo", "MemTotal");  // "24576000 kB"
  h["memory_mib"] = mem.empty() ? Json(nullptr) : Json(std::stoull(mem) / 1024);
  h["root"] = ::geteuid() == 0;
  return h;
}

Json acceleratorInfo() {
  AccelChoice c = chooseAccelerator();
  return {{"accel", c.accel}, {"reason", c.reason}, {"forced", c.forced}, {"details", c.details}};
}

Json qemuInfo() {
  Json q = {{"available", false}};
  std::string bin = findProgram("qemu-system-x86_64");
  if (bin.empty()) {
    q["reason"] =
        "qemu-system-x86_64 not found in PATH (install qemu-system-x86: scripts/setup.sh)";
    return q;
  }
  q["binary"] = bin;
  RunOptions o;
  o.timeout = std::chrono::seconds(10);
  auto r = runCommand({bin, "--version"}, o);
  if (!r || !r->succeeded()) {
    q["reason"] = bin + " --version failed: " + (r ? r->describe() : r.error().message);
    return q;
  }
  std::string line = firstLine(r->out);  // "QEMU emulator version 10.0.2 (Debian ...)"
  q["version_line"] = line;
  auto pos = line.find("version ");
  q["version"] =
      pos == std::string::npos ? line : line.substr(pos + 8, line.find(' ', pos + 8) - pos - 8);
  q["available"] = true;
  return q;
}

Json namespaceInfo() {
  Json n = Json::object();
  const std::pair<const char*, int> kinds[] = {
      {"user", CLONE_NEWUSER},     {"pid", CLONE_NEWPID},
      {"mnt", CLONE_NEWNS},        {"net", CLONE_NEWNET},
      {"ipc", CLONE_NEWIPC},       {"uts", CLONE_NEWUTS},
      {"cgroup", CLONE_NEWCGROUP}, {"time", 0x00000080 /* CLONE_NEWTIME */}};
  for (auto& [name, flag] : kinds) {
    // In a child: unshare changes the caller, and doctor must leave its own namespaces alone.
    pid_t pid = ::fork();
    if (pid == 0) ::_exit(::unshare(flag) == 0 ? 0 : (errno & 0x7f));
    Json e = Json::object();
    int status = 0;
    if (pid < 0 || ::waitpid(pid, &status, 0) != pid || !WIFEXITED(status)) {
      e["available"] = false;
      e["error"] = "could not run the unshare test child";
    } else if (WEXITSTATUS(status) == 0) {
      e["available"] = true;
    } else {
      e["available"] = false;
      e["error"] =
          fmt::format("unshare(CLONE_NEW{}): {}", name, std::strerror(WEXITSTATUS(status)));
    }
    n[name] = e;
  }
  return n;
}

Json cgroupInfo() {
  Json c = {{"v1_freezer", nullptr}, {"v2", nullptr}};
  std::ifstream in("/proc/mounts");
  std::string dev, mnt, type, opts, line;
  while (std::getline(in, line)) {
    std::stringstream ss(line);
    ss >> dev >> mnt >> type >> opts;
    if (type == "cgroup2" && c["v2"].is_null()) c["v2"] = mnt;
    if (type == "cgroup" && ("," + opts + ",").find(",freezer,") != std::string::npos)
      c["v1_freezer"] = mnt;
  }
  if (!c["v1_freezer"].is_null()) {
    c["freezer"] = true;
    c["freezer_kind"] = "v1";
    c["detail"] = "cgroup v1 freezer mounted at " + c["v1_freezer"].get<std::string>();
  } else if (!c["v2"].is_null()) {
    // cgroup.freeze lives in every non-root v2 cgroup (Linux >= 5.2); the root has none.
    c["freezer"] = true;
    c["freezer_kind"] = "v2";
    c["detail"] = "cgroup v2 at " + c["v2"].get<std::string>() + " (cgroup.freeze)";
  } else {
    c["freezer"] = false;
    c["detail"] = "no cgroup freezer mounted (mount the v1 freezer or cgroup2)";
  }
  return c;
}

Json pagemapScanInfo() {
  Json p = {{"available", false}};
  Fd fd(::open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC));
  if (!fd.valid()) {
    p["reason"] = std::string("open /proc/self/pagemap: ") + std::strerror(errno);
    return p;
  }
  long page = ::sysconf(_SC_PAGESIZE);
  void* mem = ::mmap(nullptr, 4 * page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (mem == MAP_FAILED) {
    p["reason"] = std::string("mmap: ") + std::strerror(errno);
    return p;
  }
  static_cast<char*>(mem)[page] = 1;  // exactly one present page among four
  PageRegion regions[4]{};
  PmScanArg arg{};
  arg.size = sizeof(arg);
  arg.start = reinterpret_cast<uint64_t>(mem);
  arg.end = arg.start + 4 * page;
  arg.vec = reinterpret_cast<uint64_t>(regions);
  arg.vecLen = 4;
  arg.categoryMask = kPageIsPresent;
  arg.returnMask = kPageIsPresent;
  long n = ::ioctl(fd.get(), kPagemapScan, &arg);
  int err = errno;
  uint64_t touched = arg.start + page;
  ::munmap(mem, 4 * page);
  if (n < 0) {
    p["reason"] = std::string("ioctl(PAGEMAP_SCAN): ") + std::strerror(err) +
                  (err == ENOTTY || err == EINVAL ? " (needs Linux >= 6.7)" : "");
    return p;
  }
  if (n != 1 || regions[0].start != touched || regions[0].end != touched + page) {
    p["reason"] = fmt::format(
        "PAGEMAP_SCAN answered but reported {} regions instead of the one touched page", n);
    return p;
  }
  p["available"] = true;
  p["detail"] = "found the one touched page among four";
  return p;
}

Json userfaultfdInfo() {
  Json u = {{"available", false}, {"wp", false}, {"wp_async", false}};
  int fd = static_cast<int>(::syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK));
  if (fd < 0 && errno == EPERM) {
    // Unprivileged callers may only handle user-mode faults (vm.unprivileged_userfaultfd=0).
    fd = static_cast<int>(
        ::syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK | 1 /* UFFD_USER_MODE_ONLY */));
    u["user_mode_only"] = fd >= 0;
  }
  if (fd < 0) {
    u["reason"] = std::string("userfaultfd(): ") + std::strerror(errno);
    return u;
  }
  Fd guard(fd);
  uffdio_api api{};
  api.api = UFFD_API;
  api.features = 0;  // ask for nothing: the kernel answers with everything it supports
  if (::ioctl(fd, UFFDIO_API, &api) != 0) {
    u["reason"] = std::string("ioctl(UFFDIO_API): ") + std::strerror(errno);
    return u;
  }
  u["available"] = true;
  u["features"] = fmt::format("0x{:x}", static_cast<uint64_t>(api.features));
  u["wp"] = (api.features & kUffdFeatureWp) != 0;
  u["wp_async"] = (api.features & kUffdFeatureWpAsync) != 0;
  u["wp_unpopulated"] = (api.features & kUffdFeatureWpUnpopulated) != 0;
  u["wp_hugetlbfs_shmem"] = (api.features & kUffdFeatureWpHugetlbfsShmem) != 0;
  if (!u["wp_async"].get<bool>()) u["reason"] = "no UFFD_FEATURE_WP_ASYNC (needs Linux >= 6.7)";
  return u;
}

Json libvirtInfo() {
  Json l = {{"daemon_running", false}, {"startable", false}};
  std::string bin = findProgram("libvirtd", {"/usr/sbin", "/sbin"});
  l["libvirtd"] = bin.empty() ? Json(nullptr) : Json(bin);
  if (!bin.empty()) {
    RunOptions o;
    o.timeout = std::chrono::seconds(10);
    auto r = runCommand({bin, "--version"}, o);
    if (r && r->succeeded()) {
      std::string line = firstLine(r->out);  // "libvirtd (libvirt) 11.3.0"
      l["version"] = line.substr(line.rfind(' ') + 1);
    }
    l["startable"] = true;
  }
  // Monolithic daemon first, then the modular QEMU driver daemon.
  for (const char* sock : {"/run/libvirt/libvirt-sock", "/run/libvirt/virtqemud-sock"}) {
    std::string err;
    if (connectUnix(sock, err)) {
      l["daemon_running"] = true;
      l["socket"] = sock;
      break;
    }
    l["socket_errors"][sock] = err;
  }
  if (l["daemon_running"].get<bool>())
    l["detail"] = "daemon reachable at " + l["socket"].get<std::string>();
  else if (!bin.empty())
    l["detail"] = "daemon not running; " + bin + " is installed and can be started";
  else
    l["detail"] = "libvirtd not installed (install libvirt-daemon-system: scripts/setup.sh)";
  return l;
}

Json engineInfo() {
  Json all = Json::object();
  auto& reg = EngineRegistry::instance();
  for (auto& name : reg.names()) {
    Json e = Json::object();
    auto t0 = std::chrono::steady_clock::now();
    try {
      auto engine = reg.create(name);
      if (!engine) {
        e["available"] = false;
        e["unavailable"] = "engine factory returned nothing";
      } else {
        Capabilities c = engine->capabilities();
        e["available"] = c.available();
        if (!c.available()) e["unavailable"] = c.unavailable;
        Json rts = Json::array();
        for (auto r : c.runtimes) rts.push_back(toString(r));
        e["runtimes"] = rts;
        if (!c.runtimeFlavor.empty()) e["runtime_flavor"] = c.runtimeFlavor;
        e["modes"] = c.modes;
        e["unsupported_modes"] = c.unsupportedModes;
        e["versions"] = c.versions;
      }
    } catch (const std::exception& ex) {
      // An engine must not throw; doctor still reports the others.
      e["available"] = false;
      e["unavailable"] = std::string("capabilities() threw: ") + ex.what();
    }
    e["probe_seconds"] =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    all[name] = e;
  }
  return all;
}

Json collectAll() {
  Json r = Json::object();
  r["schema"] = "crbench-doctor/1";
  r["crbench"] = {{"version", CRBENCH_VERSION}, {"commit", CRBENCH_GIT_COMMIT}};
  r["host"] = hostInfo();
  r["accelerator"] = acceleratorInfo();
  r["qemu"] = qemuInfo();
  r["namespaces"] = namespaceInfo();
  r["cgroup"] = cgroupInfo();
  r["pagemap_scan"] = pagemapScanInfo();
  r["userfaultfd"] = userfaultfdInfo();
  r["libvirt"] = libvirtInfo();
  r["engines"] = engineInfo();
  return r;
}

namespace {
std::string str(const Json& j, const char* key, const std::string& dflt = "") {
  if (!j.contains(key) || j[key].is_null()) return dflt;
  return j[key].is_string() ? j[key].get<std::string>() : j[key].dump();
}
std::string yesNo(bool b) {
  return b ? "yes" : "no";
}
}  // namespace

std::string renderTable(const Json& r) {
  std::string out;
  auto row = [&](const std::string& what, const std::string& status, const std::string& detail) {
    out += fmt::format("  {:<16} {:<12} {}\n", what, status, detail);
  };
  const Json& h = r["host"];
  out += fmt::format("crbench {} (commit {})\n\nhost\n", str(r["crbench"], "version"),
                     str(r["crbench"], "commit"));
  row("kernel", str(h, "kernel"), str(h, "os"));
  std::string flags;
  for (auto& [k, v] : h["cpu_flags"].items())
    if (v.get<bool>()) flags += (flags.empty() ? "" : " ") + k;
  row("cpu", fmt::format("{} cores", str(h, "cores")),
      str(h, "cpu_model") + (flags.empty() ? "" : " [" + flags + "]"));
  row("memory", str(h, "memory_mib") + " MiB",
      h["root"].get<bool>() ? "running as root"
                            : "NOT root: privileged checks report what this user can do");

  out += "\nvirtualisation\n";
  const Json& a = r["accelerator"];
  row("accelerator", str(a, "accel") + (a["forced"].get<bool>() ? " (forced)" : ""),
      str(a, "reason"));
  const Json& q = r["qemu"];
  row("qemu", q["available"].get<bool>() ? str(q, "version") : "missing",
      q["available"].get<bool>() ? str(q, "binary") : str(q, "reason"));
  const Json& l = r["libvirt"];
  row("libvirt",
      l.contains("version") ? str(l, "version")
                            : (l["startable"].get<bool>() ? "installed" : "missing"),
      str(l, "detail"));

  out += "\nprocess checkpointing\n";
  std::string okNs, badNs;
  for (auto& [k, v] : r["namespaces"].items()) {
    if (v["available"].get<bool>())
      okNs += (okNs.empty() ? "" : " ") + k;
    else
      badNs += (badNs.empty() ? "" : "; ") + str(v, "error");
  }
  row("namespaces", badNs.empty() ? "all" : "partial",
      okNs + (badNs.empty() ? "" : "  (missing: " + badNs + ")"));
  const Json& c = r["cgroup"];
  row("cgroup freezer", c["freezer"].get<bool>() ? str(c, "freezer_kind") : "no", str(c, "detail"));
  const Json& p = r["pagemap_scan"];
  row("PAGEMAP_SCAN", yesNo(p["available"].get<bool>()),
      p["available"].get<bool>() ? str(p, "detail") : str(p, "reason"));
  const Json& u = r["userfaultfd"];
  row("userfaultfd",
      u["available"].get<bool>() ? fmt::format("wp={} async={}", yesNo(u["wp"].get<bool>()),
                                               yesNo(u["wp_async"].get<bool>()))
                                 : "no",
      u["available"].get<bool>()
          ? "features " + str(u, "features") + (u.contains("reason") ? "; " + str(u, "reason") : "")
          : str(u, "reason"));

  out += "\nengines\n";
  for (auto& [name, e] : r["engines"].items()) {
    std::string detail;
    if (!e["available"].get<bool>()) {
      detail = str(e, "unavailable");
    } else {
      std::string modes;
      for (auto& m : e["modes"]) modes += (modes.empty() ? "" : ",") + m.get<std::string>();
      std::string rts;
      for (auto& rt : e["runtimes"]) rts += (rts.empty() ? "" : ",") + rt.get<std::string>();
      detail = "on " + rts + "; modes " + (modes.empty() ? "(none)" : modes);
    }
    if (e.contains("versions") && !e["versions"].empty()) {
      std::string vs;
      for (auto& [k, v] : e["versions"].items())
        vs +=
            (vs.empty() ? "" : ", ") + k + " " + (v.is_string() ? v.get<std::string>() : v.dump());
      detail += "; " + vs;
    }
    row(name, e["available"].get<bool>() ? "available" : "unavailable", detail);
    // Engines often give one reason for several modes: print each reason once.
    std::vector<std::pair<std::string, std::string>>
        reasons;  // reason -> modes, in first-seen order
    if (e.contains("unsupported_modes"))
      for (auto& [m, why] : e["unsupported_modes"].items()) {
        std::string w = why.is_string() ? why.get<std::string>() : why.dump();
        auto it =
            std::find_if(reasons.begin(), reasons.end(), [&](auto& r) { return r.first == w; });
        if (it == reasons.end())
          reasons.emplace_back(w, m);
        else
          it->second += "," + m;
      }
    for (auto& [why, ms] : reasons) row("", "", "  not " + ms + ": " + why);
  }
  return out;
}

}  // namespace crb::doctor
