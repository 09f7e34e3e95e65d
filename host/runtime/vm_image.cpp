#include "runtime/vm_image.hpp"

#include <elf.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <set>

#include "core/clock.hpp"
#include "core/fsutil.hpp"
#include "core/paths.hpp"
#include "image/image.hpp"

namespace crb {

namespace {

// Bump when the initramfs layout changes so stale cache entries are not reused.
constexpr int kInitramfsFormat = 3;

// Modules the guest needs for the agent's network (virtio-net over virtio-pci); their
// dependencies (virtio, virtio_ring, failover, net_failover, ...) are found from modinfo.
const std::vector<std::string> kWantedModules = {"virtio_pci", "virtio_net"};

std::string normalizeModName(std::string s) {
  std::replace(s.begin(), s.end(), '-', '_');
  return s;
}

// --- newc cpio -----------------------------------------------------------------------------------

class CpioBuilder {
 public:
  void add(const std::string& name, unsigned mode, std::string_view data, unsigned rdevMajor = 0,
           unsigned rdevMinor = 0) {
    // Names in the archive are relative ("etc/x"); the kernel extracts them under /.
    std::string n = name;
    while (!n.empty() && n[0] == '/') n.erase(0, 1);
    if (n.empty()) n = ".";
    out_ += fmt::format("070701{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}",
                        ino_++, mode, 0, 0, S_ISDIR(mode) ? 2 : 1, 0, data.size(), 0, 0,
                        rdevMajor, rdevMinor, n.size() + 1, 0);
    out_ += n;
    out_.push_back('\0');
    pad();
    out_.append(data.data(), data.size());
    pad();
  }
  std::string finish() {
    add("TRAILER!!!", 0, {});
    return std::move(out_);
  }

 private:
  void pad() {
    while (out_.size() % 4) out_.push_back('\0');
  }
  std::string out_;
  unsigned ino_ = 721;
};

Result<std::string> gzipBytes(const std::string& in) {
  z_stream zs{};
  // windowBits 15 + 16: gzip wrapper, which the kernel's initramfs unpacker understands.
  if (deflateInit2(&zs, 6, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY) != Z_OK)
    return makeError("zlib: deflateInit2 failed");
  std::string out;
  out.resize(deflateBound(&zs, in.size()) + 64);
  zs.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(in.data()));
  zs.avail_in = static_cast<uInt>(in.size());
  zs.next_out = reinterpret_cast<Bytef*>(out.data());
  zs.avail_out = static_cast<uInt>(out.size());
  int rc = deflate(&zs, Z_FINISH);
  size_t n = zs.total_out;
  deflateEnd(&zs);
  if (rc != Z_STREAM_END) return makeError("zlib: compressing the initramfs failed");
  out.resize(n);
  return out;
}

// Tree fingerprint for a rootfs that did not come from the image builder (paths, sizes, mtimes).
std::string treeFingerprint(const fs::path& root) {
  std::vector<std::string> lines;
  std::error_code ec;
  for (auto it = fs::recursive_directory_iterator(root, ec); !ec && it != fs::end(it); it.increment(ec)) {
    struct stat st {};
    if (::lstat(it->path().c_str(), &st) != 0) continue;
    lines.push_back(fmt::format("{} {:o} {} {}", it->path().lexically_relative(root).string(), st.st_mode,
                                st.st_size, st.st_mtim.tv_sec));
  }
  std::sort(lines.begin(), lines.end());
  std::string all;
  for (auto& l : lines) all += l + "\n";
  return contentHash(all);
}

}  // namespace

// --- kernel ------------------------------------------------------------------------------------

Result<GuestKernel> findGuestKernel() {
  GuestKernel k;
  const char* env = std::getenv("CRBENCH_KERNEL");
  bool overridden = env && *env;
  k.vmlinuz = overridden ? fs::path(env) : depsDir() / "kernel" / "vmlinuz";
  std::string fix = overridden
                        ? "pass an existing, readable bzImage with --kernel PATH (or $CRBENCH_KERNEL)"
                        : "run scripts/setup.d/kernel.sh (or scripts/setup.sh) as root from the project "
                          "root, or pass --kernel PATH";
  std::error_code ec;
  if (!fs::exists(k.vmlinuz, ec))
    return makeError(fmt::format("guest kernel {} is missing", k.vmlinuz.string()), fix);
  Fd fd(::open(k.vmlinuz.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd.valid())
    return makeError(fmt::format("guest kernel {} is not readable: {}", k.vmlinuz.string(),
                                 std::strerror(errno)),
                     fix);
  // A bzImage carries "HdrS" at offset 0x202 (x86 boot protocol); catch an empty or wrong file
  // here rather than as a silent QEMU boot failure.
  char magic[4] = {};
  if (::pread(fd.get(), magic, 4, 0x202) != 4 || std::memcmp(magic, "HdrS", 4) != 0)
    return makeError(fmt::format("guest kernel {} is not an x86 bzImage (no HdrS header)",
                                 k.vmlinuz.string()),
                     fix);
  // Modules: <kernel dir>/lib/modules/<release>/ as kernel.sh lays them out.
  fs::path base = fs::canonical(k.vmlinuz, ec).parent_path();
  if (base.filename() == "boot") base = base.parent_path();
  if (auto rel = readFile(base / "kernel-release"); rel.ok()) {
    k.release = *rel;
    while (!k.release.empty() && std::isspace(static_cast<unsigned char>(k.release.back())))
      k.release.pop_back();
  }
  fs::path mods = base / "lib" / "modules";
  if (!k.release.empty() && fs::is_directory(mods / k.release, ec)) {
    k.modulesDir = mods / k.release;
  } else if (fs::is_directory(mods, ec)) {
    for (auto& d : fs::directory_iterator(mods, ec))
      if (d.is_directory()) {
        k.modulesDir = d.path();
        if (k.release.empty()) k.release = d.path().filename().string();
        break;
      }
  }
  return k;
}

// --- modules -------------------------------------------------------------------------------------

Result<KernelModule> readKernelModule(const fs::path& ko) {
  CRB_ASSIGN(std::string bytes, readFile(ko));
  auto bad = [&](const std::string& why) {
    return makeError(fmt::format("kernel module {}: {}", ko.string(), why),
                     "re-run scripts/setup.d/kernel.sh; compressed modules (.ko.xz) are not supported");
  };
  if (bytes.size() < sizeof(Elf64_Ehdr) || std::memcmp(bytes.data(), ELFMAG, SELFMAG) != 0 ||
      bytes[EI_CLASS] != ELFCLASS64)
    return bad("not a 64-bit ELF object");
  Elf64_Ehdr eh;
  std::memcpy(&eh, bytes.data(), sizeof eh);
  if (eh.e_shoff == 0 || eh.e_shentsize != sizeof(Elf64_Shdr) || eh.e_shstrndx >= eh.e_shnum ||
      eh.e_shoff + uint64_t(eh.e_shnum) * sizeof(Elf64_Shdr) > bytes.size())
    return bad("malformed section table");
  auto sh = [&](unsigned i) {
    Elf64_Shdr s;
    std::memcpy(&s, bytes.data() + eh.e_shoff + i * sizeof(Elf64_Shdr), sizeof s);
    return s;
  };
  Elf64_Shdr strtab = sh(eh.e_shstrndx);
  if (strtab.sh_offset + strtab.sh_size > bytes.size()) return bad("malformed section names");
  KernelModule m;
  m.path = ko;
  m.name = normalizeModName(ko.stem().string());
  bool found = false;
  for (unsigned i = 0; i < eh.e_shnum; i++) {
    Elf64_Shdr s = sh(i);
    if (s.sh_name >= strtab.sh_size) continue;
    const char* nm = bytes.data() + strtab.sh_offset + s.sh_name;
    if (std::strcmp(nm, ".modinfo") != 0) continue;
    if (s.sh_offset + s.sh_size > bytes.size()) return bad("malformed .modinfo");
    found = true;
    std::string_view info(bytes.data() + s.sh_offset, s.sh_size);
    size_t pos = 0;
    while (pos < info.size()) {
      size_t end = info.find('\0', pos);
      if (end == std::string_view::npos) end = info.size();
      std::string_view kv = info.substr(pos, end - pos);
      pos = end + 1;
      if (kv.rfind("name=", 0) == 0) m.name = normalizeModName(std::string(kv.substr(5)));
      if (kv.rfind("depends=", 0) == 0) {
        std::string deps(kv.substr(8));
        size_t p = 0;
        while (p < deps.size()) {
          size_t c = deps.find(',', p);
          if (c == std::string::npos) c = deps.size();
          if (c > p) m.depends.push_back(normalizeModName(deps.substr(p, c - p)));
          p = c + 1;
        }
      }
    }
  }
  if (!found) return bad("no .modinfo section");
  return m;
}

Result<std::vector<KernelModule>> moduleLoadOrder(const fs::path& modulesDir,
                                                  const std::vector<std::string>& wanted) {
  std::map<std::string, KernelModule> byName;
  std::error_code ec;
  for (auto it = fs::recursive_directory_iterator(modulesDir, ec); !ec && it != fs::end(it);
       it.increment(ec)) {
    if (it->path().extension() != ".ko") continue;
    CRB_ASSIGN(KernelModule m, readKernelModule(it->path()));
    byName[m.name] = m;
  }
  if (ec) return sysError("list kernel modules in " + modulesDir.string(), ec.value());
  std::set<std::string> builtin;
  if (auto b = readFile(modulesDir / "modules.builtin"); b.ok()) {
    size_t p = 0;
    while (p < b->size()) {
      size_t e = b->find('\n', p);
      if (e == std::string::npos) e = b->size();
      fs::path line = b->substr(p, e - p);
      if (!line.empty()) builtin.insert(normalizeModName(line.stem().string()));
      p = e + 1;
    }
  }
  std::vector<KernelModule> order;
  std::set<std::string> done, visiting;
  std::function<Status(const std::string&, const std::string&)> visit =
      [&](const std::string& name, const std::string& neededBy) -> Status {
    if (done.count(name) || builtin.count(name)) return success();
    if (visiting.count(name))
      return makeError(fmt::format("kernel modules in {}: dependency cycle through {}",
                                   modulesDir.string(), name));
    auto it = byName.find(name);
    if (it == byName.end())
      return makeError(fmt::format("kernel module {} (needed by {}) is not in {}", name, neededBy,
                                   modulesDir.string()),
                       "re-run scripts/setup.d/kernel.sh, which keeps the virtio modules");
    visiting.insert(name);
    for (auto& d : it->second.depends) CRB_CHECK(visit(d, name));
    visiting.erase(name);
    done.insert(name);
    order.push_back(it->second);
    return success();
  };
  for (auto& w : wanted) CRB_CHECK(visit(normalizeModName(w), "the crbench guest"));
  return order;
}

// --- initramfs -----------------------------------------------------------------------------------

Status writeInitramfs(const fs::path& rootfs, const std::vector<CpioExtraFile>& extra,
                      const fs::path& out) {
  std::set<std::string> overridden;
  for (auto& e : extra) overridden.insert(fs::path(e.guestPath).lexically_normal().relative_path().string());
  std::vector<fs::path> entries;
  std::error_code ec;
  for (auto it = fs::recursive_directory_iterator(rootfs, ec); !ec && it != fs::end(it); it.increment(ec))
    entries.push_back(it->path().lexically_relative(rootfs));
  if (ec) return sysError("list rootfs " + rootfs.string(), ec.value());
  std::sort(entries.begin(), entries.end());
  CpioBuilder cpio;
  std::set<std::string> dirs;
  for (auto& rel : entries) {
    if (overridden.count(rel.string())) continue;
    fs::path p = rootfs / rel;
    struct stat st {};
    if (::lstat(p.c_str(), &st) != 0) return sysError("stat " + p.string(), errno);
    unsigned perm = st.st_mode & 07777;
    // Every path the rootfs has, whatever its type: the overlay must not emit a directory where
    // the rootfs has a symlink (merged /usr: lib -> usr/lib), because the kernel's unpacker
    // replaces an entry of another type, which would cut /lib off from the dynamic loader.
    dirs.insert(rel.string());
    if (S_ISDIR(st.st_mode)) {
      cpio.add(rel.string(), S_IFDIR | perm, {});
    } else if (S_ISREG(st.st_mode)) {
      CRB_ASSIGN(std::string data, readFile(p));
      cpio.add(rel.string(), S_IFREG | perm, data);
    } else if (S_ISLNK(st.st_mode)) {
      auto target = fs::read_symlink(p, ec);
      if (ec) return sysError("readlink " + p.string(), ec.value());
      cpio.add(rel.string(), S_IFLNK | 0777, target.string());
    } else if (S_ISCHR(st.st_mode) || S_ISBLK(st.st_mode) || S_ISFIFO(st.st_mode)) {
      cpio.add(rel.string(), (st.st_mode & S_IFMT) | perm, {}, major(st.st_rdev), minor(st.st_rdev));
    }
    // sockets are skipped: they mean nothing in a fresh guest
  }
  auto ensureDir = [&](const fs::path& d) {
    fs::path acc;
    for (auto& part : d) {
      acc /= part;
      if (dirs.insert(acc.string()).second) cpio.add(acc.string(), S_IFDIR | 0755, {});
    }
  };
  // The kernel opens /dev/console for init before anything is mounted; without the node init runs
  // with no stdin/stdout/stderr.
  ensureDir("dev");
  if (!overridden.count("dev/console")) cpio.add("dev/console", S_IFCHR | 0600, {}, 5, 1);
  for (auto& e : extra) {
    fs::path rel = fs::path(e.guestPath).lexically_normal().relative_path();
    ensureDir(rel.parent_path());
    if (!e.hostPath.empty()) {
      CRB_ASSIGN(std::string data, readFile(e.hostPath));
      cpio.add(rel.string(), S_IFREG | e.mode, data);
    } else {
      cpio.add(rel.string(), S_IFREG | e.mode, e.data);
    }
  }
  CRB_ASSIGN(std::string gz, gzipBytes(cpio.finish()));
  CRB_CHECK(makeDirs(out.parent_path()));
  return writeFileAtomic(out, gz, 0644);
}

Result<VmBootFiles> prepareVmBootFiles(const Scenario& scenario) {
  auto start = Clock::now();
  VmBootFiles bf;
  CRB_ASSIGN(GuestKernel k, findGuestKernel());
  bf.kernel = k.vmlinuz;
  bf.kernelRelease = k.release;

  fs::path rootfs;
  if (const char* r = std::getenv("CRBENCH_VM_ROOTFS"); r && *r) {
    // Test hook / expert override: boot a prepared rootfs instead of building the workload image.
    rootfs = r;
    if (!fs::exists(fs::symlink_status(rootfs / "init")))
      return makeError(fmt::format("$CRBENCH_VM_ROOTFS {} has no /init", rootfs.string()),
                       "point it at a rootfs whose /init is the guest agent");
    bf.imageHash = "rootfs:" + treeFingerprint(rootfs);
  } else {
    CRB_ASSIGN(WorkloadImage img, buildWorkloadImage(scenario));
    rootfs = img.rootfs;
    bf.imageHash = img.hash;
  }

  std::vector<KernelModule> mods;
  if (!k.modulesDir.empty()) {
    auto order = moduleLoadOrder(k.modulesDir, kWantedModules);
    if (!order.ok()) return order.error().context("guest kernel " + k.vmlinuz.string());
    mods = std::move(*order);
  }
  std::vector<CpioExtraFile> extra;
  std::string list, key = fmt::format("format={} image={} kernel={}\n", kInitramfsFormat, bf.imageHash,
                                      k.release);
  for (auto& m : mods) {
    std::string guest = fmt::format("{}/{}.ko", kVmModulesDir, m.name);
    extra.push_back({guest, m.path.string(), {}, 0644});
    list += guest + "\n";
    bf.modules.push_back(m.name);
    struct stat st {};
    ::stat(m.path.c_str(), &st);
    key += fmt::format("{} {} {}\n", m.name, st.st_size, st.st_mtim.tv_sec);
  }
  extra.push_back({kVmModulesList, {}, list, 0644});

  bf.initramfsHash = contentHash(key);
  bf.initramfs = cacheDir() / "initramfs" / (bf.initramfsHash + ".cpio.gz");
  std::error_code ec;
  if (fs::exists(bf.initramfs, ec)) {
    bf.initramfsFromCache = true;
  } else {
    auto st = writeInitramfs(rootfs, extra, bf.initramfs);
    if (!st.ok()) return st.error().context("building the VM initramfs");
  }
  bf.initramfsBytes = fs::file_size(bf.initramfs, ec);
  // quiet + loglevel: the serial console under TCG costs boot time per line.
  // mitigations=off: nothing to protect inside a throwaway benchmark guest, and TCG runs faster.
  bf.cmdline = fmt::format(
      "console=ttyS0 quiet loglevel=3 panic=-1 rdinit=/init mitigations=off "
      "crbench.vm=1 crbench.net={},{} crbench.modules={}",
      kVmGuestAddress, kVmGuestGateway, kVmModulesList);
  bf.buildSeconds = secondsSince(start);
  return bf;
}

}  // namespace crb
