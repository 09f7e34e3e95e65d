#include "image/image.hpp"

#include <sys/stat.h>
#include <unistd.h>

#include <map>
#include <random>
#include <set>
#include <sstream>

#include "core/clock.hpp"
#include "core/fsutil.hpp"
#include "core/paths.hpp"
#include "core/proc.hpp"

namespace crb {

namespace {

// Bump when the layout of the image changes, so old cache entries are not reused.
constexpr int kImageFormat = 2;
constexpr const char* kBusybox = "/bin/busybox";

const char* kPasswd =
    "root:x:0:0:root:/root:/bin/sh\n"
    "nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n";
const char* kGroup = "root:x:0:\nnogroup:x:65534:\n";
const char* kHosts = "127.0.0.1\tlocalhost\n::1\tlocalhost\n";
const char* kNsswitch = "passwd: files\ngroup: files\nhosts: files\n";

// A link target relative to the directory the link really lives in (through the image's
// merged-/usr links, which mirror the host's). Absolute targets are resolved by whoever follows
// them: a host-side tool walking the rootfs (cpio writer, overlay set-up) would land on the host's
// own files instead of the image's.
std::string relativeTarget(const fs::path& link, const fs::path& target) {
  if (!target.is_absolute()) return target.string();
  std::error_code ec;
  fs::path realParent = fs::weakly_canonical(link.parent_path(), ec);
  if (ec) realParent = link.parent_path();
  return target.lexically_normal().lexically_relative(realParent).string();
}

// One file of the image: where it comes from on the host (or its literal content) and its mode.
struct Entry {
  fs::path hostPath;    // copied (symlinks are recreated, not followed) when not empty
  std::string content;  // literal content otherwise
  unsigned mode = 0644;
  bool symlink = false;
  std::string linkTarget;
  bool directory = false;
};

// The full list of what goes into the image, keyed by the path inside it. Built first (cheaply) so
// its hash decides whether the cached image can be reused.
class Plan {
 public:
  // Adds a host path at the same place in the image, recreating the symlinks on the way: on
  // merged-/usr Debian /lib is a symlink to usr/lib and the loader path /lib64/ld-linux-x86-64.so.2
  // is a symlink too; the image must resolve them the same way.
  // `recurse`: a directory is copied with everything below it (scenario `files`); otherwise only
  // the directory itself is recorded (a parent on the way to a file).
  Status mirror(const fs::path& host, bool recurse = false, int depth = 0) {
    if (depth > 40) return makeError(fmt::format("too many symlinks resolving {}", host.string()));
    fs::path acc = "/";
    fs::path rel = host.lexically_normal().relative_path();
    for (auto it = rel.begin(); it != rel.end(); ++it) {
      acc /= *it;
      struct stat st {};
      if (::lstat(acc.c_str(), &st) != 0) return sysError("stat " + acc.string(), errno);
      bool last = std::next(it) == rel.end();
      if (S_ISLNK(st.st_mode)) {
        std::error_code ec;
        fs::path target = fs::read_symlink(acc, ec);
        if (ec) return sysError("readlink " + acc.string(), ec.value());
        fs::path absTarget = target.is_absolute() ? target : acc.parent_path() / target;
        // Relative targets keep the builder (which writes through these links on the host) and
        // the sandbox (which resolves them inside the image) pointing at the same place.
        Entry e;
        e.symlink = true;
        e.linkTarget = absTarget.lexically_normal().lexically_relative(acc.parent_path()).string();
        add(acc, std::move(e));
        // Continue through the link's target (and below it, for the rest of the path).
        fs::path restPath = absTarget.lexically_normal();
        for (auto r = std::next(it); r != rel.end(); ++r) restPath /= *r;
        return mirror(restPath, recurse, depth + 1);
      }
      if (S_ISDIR(st.st_mode)) {
        if (!entries_.count(acc)) {
          Entry e;
          e.directory = true;
          e.mode = st.st_mode & 07777;
          add(acc, std::move(e));
        }
        if (last && recurse) return mirrorTree(acc);
        continue;
      }
      if (!last) return makeError(fmt::format("{} is not a directory", acc.string()));
      if (!S_ISREG(st.st_mode)) return success();  // device nodes, sockets: nothing to copy
      Entry e;
      e.hostPath = acc;
      e.mode = st.st_mode & 07777;
      add(acc, std::move(e));
    }
    return success();
  }

  void addContent(const fs::path& p, std::string content, unsigned mode = 0644) {
    Entry e;
    e.content = std::move(content);
    e.mode = mode;
    add(p, std::move(e));
  }
  void addDir(const fs::path& p, unsigned mode = 0755) {
    Entry e;
    e.directory = true;
    e.mode = mode;
    add(p, std::move(e));
  }
  void addCopy(const fs::path& imagePath, const fs::path& host, unsigned mode) {
    Entry e;
    e.hostPath = host;
    e.mode = mode;
    add(imagePath, std::move(e));
  }
  void addLink(const fs::path& p, std::string target, bool replaceOnly = false) {
    if (replaceOnly && entries_.count(p)) return;
    Entry e;
    e.symlink = true;
    e.linkTarget = std::move(target);
    add(p, std::move(e));
  }
  bool has(const fs::path& p) const { return entries_.count(p) > 0; }
  const std::map<fs::path, Entry>& entries() const { return entries_; }

  // Hash of every path, mode, link and content byte: the cache key.
  Result<std::string> hash() const {
    std::string acc = fmt::format("crbench-image format {}\n", kImageFormat);
    for (auto& [p, e] : entries_) {
      acc += fmt::format("{} {:o} {} {}\n", p.string(), e.mode, e.directory ? "d" : e.symlink ? "l" : "f", e.linkTarget);
      if (!e.hostPath.empty()) {
        CRB_ASSIGN(std::string data, readFile(e.hostPath));
        acc += contentHash(data) + fmt::format(" {}\n", data.size());
      } else if (!e.symlink && !e.directory) {
        acc += contentHash(e.content) + "\n";
      }
    }
    return contentHash(acc);
  }

 private:
  void add(const fs::path& p, Entry e) {
    // A later explicit entry wins over an earlier one (scenario binaries over busybox applets).
    entries_[p] = std::move(e);
  }
  Status mirrorTree(const fs::path& dir) {
    std::error_code ec;
    for (auto it = fs::recursive_directory_iterator(dir, ec); !ec && it != fs::recursive_directory_iterator();
         it.increment(ec)) {
      struct stat st {};
      if (::lstat(it->path().c_str(), &st) != 0) continue;
      if (S_ISLNK(st.st_mode)) {
        auto target = fs::read_symlink(it->path(), ec);
        if (ec) return sysError("readlink " + it->path().string(), ec.value());
        addLink(it->path(), relativeTarget(it->path(), target));
      } else if (S_ISDIR(st.st_mode)) {
        addDir(it->path(), st.st_mode & 07777);
      } else if (S_ISREG(st.st_mode)) {
        addCopy(it->path(), it->path(), st.st_mode & 07777);
      }
    }
    if (ec) return sysError("read directory " + dir.string(), ec.value());
    return success();
  }

  std::map<fs::path, Entry> entries_;
};

// The shared libraries (and the dynamic loader) a host binary needs, as ldd resolves them.
Result<std::vector<fs::path>> sharedLibraries(const fs::path& binary) {
  auto r = runCommand({"ldd", binary.string()}, RunOptions{.timeout = std::chrono::seconds(30)});
  if (!r.ok()) return r.error().context("resolving the shared libraries of " + binary.string());
  std::vector<fs::path> libs;
  std::string all = r->out + r->err;
  if (all.find("not a dynamic executable") != std::string::npos || all.find("statically linked") != std::string::npos)
    return libs;
  if (!r->succeeded())
    return makeError(fmt::format("ldd {} failed: {}", binary.string(), r->describe()),
                     "is it an ELF binary for this machine?");
  std::istringstream ss(r->out);
  std::string line;
  while (std::getline(ss, line)) {
    if (line.find("not found") != std::string::npos)
      return makeError(fmt::format("{} needs a library the host does not have: {}", binary.string(),
                                   line.substr(line.find_first_not_of(" \t"))),
                       "install the Debian package that provides it");
    std::istringstream ls(line);
    std::string a, arrow, b;
    ls >> a >> arrow >> b;
    if (arrow == "=>" && !b.empty() && b[0] == '/') libs.emplace_back(b);
    else if (!a.empty() && a[0] == '/') libs.emplace_back(a);  // the loader: "/lib64/ld-linux-x86-64.so.2 (0x..)"
  }
  return libs;
}

Result<fs::path> resolveBinary(const Scenario& s, const std::string& spec, fs::path& imagePath) {
  fs::path host;
  if (spec.rfind("@build/", 0) == 0) {
    host = buildDir() / spec.substr(7);
    imagePath = fs::path("/usr/local/bin") / host.filename();
  } else {
    host = spec;
    imagePath = host;
  }
  std::error_code ec;
  if (!fs::is_regular_file(host, ec)) {
    std::string hint = spec.rfind("@build/", 0) == 0
                           ? fmt::format("build it first (ninja -C {})", buildDir().string())
                           : (s.requiredHostPackages.empty()
                                  ? "install the Debian package that provides it"
                                  : "install the Debian package(s): " + fmt::format("{}", fmt::join(s.requiredHostPackages, " ")));
    return makeError(fmt::format("scenario {}: binary {} ({}) does not exist", s.name, spec, host.string()), hint);
  }
  if (::access(host.c_str(), X_OK) != 0)
    return makeError(fmt::format("scenario {}: binary {} is not executable", s.name, host.string()));
  return host;
}

Result<Plan> planImage(const Scenario& s) {
  Plan plan;
  // Top-level links first so everything below resolves like on the host (merged /usr).
  for (const char* d : {"/bin", "/sbin", "/lib", "/lib64", "/lib32", "/libx32"}) {
    struct stat st {};
    if (::lstat(d, &st) == 0 && S_ISLNK(st.st_mode)) CRB_CHECK(plan.mirror(d));
  }
  for (const char* d : {"/usr/bin", "/usr/sbin", "/usr/local/bin", "/etc", "/etc/crbench", "/proc", "/sys", "/dev",
                        "/run", "/root", "/var"})
    plan.addDir(d);
  plan.addDir("/tmp", 01777);
  plan.addDir("/var/tmp", 01777);

  std::error_code ec;
  if (!fs::is_regular_file(kBusybox, ec))
    return makeError(fmt::format("{} is missing: the workload image needs a static busybox", kBusybox),
                     "install it: apt-get install busybox-static");
  CRB_ASSIGN(auto bbLibs, sharedLibraries(kBusybox));
  if (!bbLibs.empty())
    return makeError(fmt::format("{} is dynamically linked (the busybox package, not busybox-static)", kBusybox),
                     "install busybox-static: apt-get install busybox-static");
  CRB_CHECK(plan.mirror(kBusybox));
  auto applets = runCommand({kBusybox, "--list-full"});
  if (!applets.ok() || !applets->succeeded())
    return makeError(fmt::format("{} --list-full failed", kBusybox), "reinstall busybox-static");
  std::istringstream ss(applets->out);
  std::string applet;
  while (std::getline(ss, applet))
    if (!applet.empty() && applet != "bin/busybox") plan.addLink("/" + applet, relativeTarget("/" + applet, fs::canonical(kBusybox)));

  fs::path agentBin = guestAgentBinary();
  if (!fs::is_regular_file(agentBin, ec))
    return makeError(fmt::format("the guest agent {} is not built", agentBin.string()),
                     fmt::format("build it: ninja -C {} guest-agent/crbench-agent", buildDir().string()));
  CRB_ASSIGN(auto agentLibs, sharedLibraries(agentBin));
  if (!agentLibs.empty())
    return makeError(fmt::format("the guest agent {} is not statically linked", agentBin.string()),
                     "rebuild it from guest-agent/meson.build (link_args -static)");
  plan.addCopy("/sbin/crbench-agent", agentBin, 0755);
  plan.addCopy("/init", agentBin, 0755);

  std::set<fs::path> libs;
  for (auto& spec : s.binaries) {
    fs::path imagePath;
    CRB_ASSIGN(fs::path host, resolveBinary(s, spec, imagePath));
    if (imagePath == host) CRB_CHECK(plan.mirror(host));
    else plan.addCopy(imagePath, host, 0755);
    CRB_ASSIGN(auto need, sharedLibraries(host));
    libs.insert(need.begin(), need.end());
  }
  for (auto& lib : libs) {
    auto st = plan.mirror(lib);
    if (!st.ok()) return st.error().context("scenario " + s.name + ": shared library");
  }
  for (auto& f : s.files) {
    if (!fs::exists(f, ec))
      return makeError(fmt::format("scenario {}: file {} does not exist on this host", s.name, f),
                       s.requiredHostPackages.empty() ? "" : "install: " + fmt::format("{}", fmt::join(s.requiredHostPackages, " ")));
    CRB_CHECK(plan.mirror(f, true));
  }

  Json cfg = s.toJson();
  cfg.erase("file");  // the host path of the scenario must not change the image hash
  plan.addContent("/etc/crbench/scenario.json", cfg.dump(2) + "\n");
  plan.addContent("/etc/passwd", kPasswd);
  plan.addContent("/etc/group", kGroup);
  plan.addContent("/etc/hosts", kHosts);
  plan.addContent("/etc/hostname", "crbench\n");
  plan.addContent("/etc/nsswitch.conf", kNsswitch);
  return plan;
}

Status materialise(const Plan& plan, const fs::path& root) {
  CRB_CHECK(makeDirs(root));
  // Directories (recorded at their real, link-free paths) first, then links in path order (a
  // parent link before what goes through it), then files, which replace links at the same path
  // (a scenario binary wins over a busybox applet of the same name).
  for (auto& [p, e] : plan.entries()) {
    if (!e.directory) continue;
    fs::path dst = root / p.relative_path();
    std::error_code ec;
    fs::create_directories(dst, ec);
    if (ec) return sysError("create " + dst.string(), ec.value());
    ::chmod(dst.c_str(), e.mode);
  }
  for (auto& [p, e] : plan.entries()) {
    if (!e.symlink) continue;
    fs::path dst = root / p.relative_path();
    std::error_code ec;
    fs::create_directories(dst.parent_path(), ec);
    fs::remove(dst, ec);
    if (::symlink(e.linkTarget.c_str(), dst.c_str()) != 0) return sysError("symlink " + dst.string(), errno);
  }
  for (auto& [p, e] : plan.entries()) {
    if (e.directory || e.symlink) continue;
    fs::path dst = root / p.relative_path();
    std::error_code ec;
    fs::create_directories(dst.parent_path(), ec);
    if (ec) return sysError("create " + dst.parent_path().string(), ec.value());
    fs::remove(dst, ec);
    if (!e.hostPath.empty()) {
      if (!fs::copy_file(e.hostPath, dst, fs::copy_options::overwrite_existing, ec))
        return sysError(fmt::format("copy {} to {}", e.hostPath.string(), dst.string()), ec.value());
    } else {
      CRB_CHECK(writeFileAtomic(dst, e.content, e.mode));
    }
    if (::chmod(dst.c_str(), e.mode) != 0) return sysError("chmod " + dst.string(), errno);
  }
  return success();
}

// Removes build directories left by builders that died (their pid is in the name).
void removeStaleBuilds(const fs::path& images) {
  std::error_code ec;
  for (auto& e : fs::directory_iterator(images, ec)) {
    std::string n = e.path().filename().string();
    if (n.rfind(".build-", 0) != 0) continue;
    auto dash = n.rfind('-');
    pid_t pid = static_cast<pid_t>(std::atol(n.substr(dash + 1).c_str()));
    if (pid > 0 && !processAlive(pid)) fs::remove_all(e.path(), ec);
  }
}

}  // namespace

Result<WorkloadImage> buildWorkloadImage(const Scenario& scenario) {
  auto start = Clock::now();
  auto plan = planImage(scenario);
  if (!plan.ok()) return plan.error();
  CRB_ASSIGN(std::string hash, plan->hash());

  fs::path images = cacheDir() / "images";
  CRB_CHECK(makeDirs(images));
  fs::path final = images / hash;
  WorkloadImage img;
  img.hash = hash;
  img.rootfs = final / "rootfs";
  std::error_code ec;
  if (fs::is_directory(img.rootfs, ec)) {
    img.fromCache = true;
  } else {
    removeStaleBuilds(images);
    std::random_device rd;
    // The pid ends the name so removeStaleBuilds can tell a dead builder's leftovers.
    fs::path tmp = images / fmt::format(".build-{}-{:08x}-{}", hash, rd(), ::getpid());
    auto st = materialise(*plan, tmp / "rootfs");
    if (st.ok()) {
      Json manifest{{"hash", hash}, {"scenario", scenario.name}, {"format", kImageFormat},
                    {"files", plan->entries().size()}};
      st = writeFileAtomic(tmp / "manifest.json", manifest.dump(2) + "\n");
    }
    if (!st.ok()) {
      fs::remove_all(tmp, ec);
      return st.error().context(fmt::format("building the workload image of scenario {} in {}", scenario.name, tmp.string()));
    }
    // rename(2) of a directory is atomic; if a concurrent builder got there first, its (identical)
    // image stays and ours is dropped.
    if (::rename(tmp.c_str(), final.c_str()) != 0) {
      int err = errno;
      fs::remove_all(tmp, ec);
      if (!(err == ENOTEMPTY || err == EEXIST) || !fs::is_directory(img.rootfs, ec))
        return sysError(fmt::format("move the image of scenario {} into place at {}", scenario.name, final.string()), err);
      img.fromCache = true;
    }
  }
  img.bytes = diskUsage(img.rootfs).apparentBytes;
  img.buildSeconds = secondsSince(start);
  return img;
}

}  // namespace crb
