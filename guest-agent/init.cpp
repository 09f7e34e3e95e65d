// What the agent does as PID 1 before it starts the workload: mounts, kernel modules (VM), network.
#include <arpa/inet.h>
#include <fcntl.h>
#include <linux/module.h>
#include <net/if.h>
#include <net/route.h>
#include <netinet/in.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <set>
#include <sstream>

#include "agent.hpp"

#ifndef MODULE_INIT_COMPRESSED_FILE
#define MODULE_INIT_COMPRESSED_FILE 4
#endif

namespace agent {
namespace {

std::set<std::string> mountPoints() {
  std::set<std::string> out;
  std::ifstream f("/proc/self/mountinfo");
  std::string line;
  while (std::getline(f, line)) {
    std::istringstream ss(line);
    std::string id, parent, devno, root, mp;
    if (ss >> id >> parent >> devno >> root >> mp) out.insert(mp);
  }
  return out;
}

void mountIfMissing(const std::set<std::string>& have, const char* src, const char* target,
                    const char* type, unsigned long flags, const char* data) {
  if (have.count(target)) return;
  ::mkdir(target, 0755);
  if (::mount(src, target, type, flags, data) != 0)
    logf("mount %s on %s failed: %s", type, target, std::strerror(errno));
}

// The kernel package ships no modules.dep, so the image builder lists modules in dependency order
// and we load them with finit_module ourselves (no kmod in the image).
void loadModules(const char* listPath) {
  std::ifstream f(listPath);
  if (!f) return;
  std::string line;
  int loaded = 0, failed = 0;
  while (std::getline(f, line)) {
    auto hash = line.find('#');
    if (hash != std::string::npos) line.resize(hash);
    std::istringstream ss(line);
    std::string path, params, word;
    if (!(ss >> path)) continue;
    while (ss >> word) params += (params.empty() ? "" : " ") + word;
    int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
      logf("module %s: %s", path.c_str(), std::strerror(errno));
      failed++;
      continue;
    }
    int flags = 0;
    if (path.ends_with(".xz") || path.ends_with(".zst") || path.ends_with(".gz")) flags = MODULE_INIT_COMPRESSED_FILE;
    long rc = ::syscall(SYS_finit_module, fd, params.c_str(), flags);
    int err = errno;
    ::close(fd);
    if (rc != 0 && err != EEXIST) {
      logf("module %s: finit_module: %s", path.c_str(), std::strerror(err));
      failed++;
    } else {
      loaded++;
    }
  }
  logf("modules: %d loaded, %d failed (from %s)", loaded, failed, listPath);
}

bool setIfFlags(int sock, const char* ifname, short set) {
  ifreq ifr{};
  std::strncpy(ifr.ifr_name, ifname, IFNAMSIZ - 1);
  if (::ioctl(sock, SIOCGIFFLAGS, &ifr) != 0) return false;
  ifr.ifr_flags |= set;
  return ::ioctl(sock, SIOCSIFFLAGS, &ifr) == 0;
}

bool setIfAddr(int sock, const char* ifname, unsigned long req, const char* addr) {
  ifreq ifr{};
  std::strncpy(ifr.ifr_name, ifname, IFNAMSIZ - 1);
  auto* sin = reinterpret_cast<sockaddr_in*>(&ifr.ifr_addr);
  sin->sin_family = AF_INET;
  ::inet_pton(AF_INET, addr, &sin->sin_addr);
  return ::ioctl(sock, req, &ifr) == 0;
}

// Value of `key=` on the kernel command line (the VM runtime passes crbench.net= and
// crbench.modules=), or `fallback`.
std::string kernelParam(const std::string& key, const std::string& fallback) {
  std::string cmdline;
  if (!readText("/proc/cmdline", cmdline)) return fallback;
  std::istringstream ss(cmdline);
  std::string word;
  while (ss >> word)
    if (word.rfind(key + "=", 0) == 0) return word.substr(key.size() + 1);
  return fallback;
}

std::string prefixToMask(int bits) {
  uint32_t m = bits <= 0 ? 0 : bits >= 32 ? 0xffffffffu : ~((1u << (32 - bits)) - 1);
  char b[32];
  std::snprintf(b, sizeof b, "%u.%u.%u.%u", m >> 24, (m >> 16) & 255, (m >> 8) & 255, m & 255);
  return b;
}

// QEMU user networking by default: the guest is 10.0.2.15/24, the gateway (and hostfwd source)
// 10.0.2.2; crbench.net=ADDR/PREFIX,GATEWAY on the kernel command line overrides it.
void setupGuestNetwork() {
  std::string net = kernelParam("crbench.net", "10.0.2.15/24,10.0.2.2");
  std::string addr = "10.0.2.15", gateway = "10.0.2.2";
  int prefix = 24;
  auto comma = net.find(',');
  std::string cidr = net.substr(0, comma);
  if (comma != std::string::npos) gateway = net.substr(comma + 1);
  auto slash = cidr.find('/');
  addr = cidr.substr(0, slash);
  if (slash != std::string::npos) prefix = std::atoi(cidr.c_str() + slash + 1);
  std::string mask = prefixToMask(prefix);
  // virtio_net probes asynchronously after insmod; give it a moment to register eth0.
  for (int i = 0; i < 500 && ::access("/sys/class/net/eth0", F_OK) != 0; ++i) ::usleep(10000);
  int s = ::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (s < 0) return;
  if (!setIfAddr(s, "eth0", SIOCSIFADDR, addr.c_str()) || !setIfAddr(s, "eth0", SIOCSIFNETMASK, mask.c_str()) ||
      !setIfFlags(s, "eth0", IFF_UP | IFF_RUNNING)) {
    logf("eth0: configuration failed: %s (is virtio_net loaded?)", std::strerror(errno));
    ::close(s);
    return;
  }
  rtentry rt{};
  auto* dst = reinterpret_cast<sockaddr_in*>(&rt.rt_dst);
  auto* gw = reinterpret_cast<sockaddr_in*>(&rt.rt_gateway);
  auto* genmask = reinterpret_cast<sockaddr_in*>(&rt.rt_genmask);
  dst->sin_family = gw->sin_family = genmask->sin_family = AF_INET;
  ::inet_pton(AF_INET, gateway.c_str(), &gw->sin_addr);
  rt.rt_flags = RTF_UP | RTF_GATEWAY;
  if (::ioctl(s, SIOCADDRT, &rt) != 0 && errno != EEXIST) logf("default route via %s: %s", gateway.c_str(), std::strerror(errno));
  ::close(s);
  logf("eth0: %s/%d via %s", addr.c_str(), prefix, gateway.c_str());
}

}  // namespace

void bringUpLoopback() {
  int s = ::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (s < 0) return;
  if (!setIfFlags(s, "lo", IFF_UP | IFF_RUNNING)) logf("lo: up failed: %s", std::strerror(errno));
  ::close(s);
}

void setupContainer() {
  // The container runtime prepared /dev and the root; /proc must be ours (our pid namespace).
  ::mkdir("/proc", 0555);
  if (::access("/proc/self", F_OK) != 0 && ::mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, nullptr) != 0)
    logf("mount proc: %s", std::strerror(errno));
  auto have = mountPoints();
  mountIfMissing(have, "devpts", "/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620");
  struct stat st {};
  if (::lstat("/dev/ptmx", &st) != 0 && ::symlink("pts/ptmx", "/dev/ptmx") != 0)
    logf("/dev/ptmx: %s", std::strerror(errno));
  mountIfMissing(have, "shm", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777");
  mountIfMissing(have, "tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777");
  mountIfMissing(have, "tmpfs", "/run", "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755");
  bringUpLoopback();
}

void setupVm() {
  ::mkdir("/proc", 0555);
  ::mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, nullptr);
  auto have = mountPoints();
  mountIfMissing(have, "sysfs", "/sys", "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, nullptr);
  mountIfMissing(have, "devtmpfs", "/dev", "devtmpfs", MS_NOSUID, "mode=0755");
  // The kernel opened the console before /dev existed if the initramfs had no /dev/console.
  if (::fcntl(1, F_GETFD) < 0) {
    int fd = ::open("/dev/console", O_RDWR);
    if (fd >= 0) {
      ::dup2(fd, 0), ::dup2(fd, 1), ::dup2(fd, 2);
      if (fd > 2) ::close(fd);
    }
  }
  have = mountPoints();
  mountIfMissing(have, "devpts", "/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC, "ptmxmode=0666,mode=0620");
  mountIfMissing(have, "shm", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777");
  mountIfMissing(have, "tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777");
  mountIfMissing(have, "tmpfs", "/run", "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755");
  loadModules(kernelParam("crbench.modules", "/etc/crbench/modules.list").c_str());
  bringUpLoopback();
  setupGuestNetwork();
}

}  // namespace agent
