#include "engine/qemu/qemu_engine.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <thread>

#include "core/clock.hpp"
#include "core/fsutil.hpp"
#include "core/log.hpp"
#include "runtime/vm.hpp"

namespace crb {

namespace {

using std::chrono::milliseconds;
constexpr const char* kImageFdName = "crb-image";

// --- options ----------------------------------------------------------------------------------

Result<double> numOption(const Json& opts, const std::string& key, double fallback, double lo, double hi) {
  if (!opts.contains(key)) return fallback;
  const Json& v = opts[key];
  double n = 0;
  if (v.is_number()) {
    n = v.get<double>();
  } else if (v.is_string()) {
    try {
      size_t used = 0;
      n = std::stod(v.get<std::string>(), &used);
      if (used != v.get<std::string>().size()) throw std::invalid_argument("trailing");
    } catch (const std::exception&) {
      return makeError(fmt::format("engine option {}={} is not a number", key, v.get<std::string>()),
                       fmt::format("use --engine-opt {}=<{}..{}>", key, lo, hi), 2);
    }
  } else {
    return makeError(fmt::format("engine option {} must be a number", key), "", 2);
  }
  if (n < lo || n > hi)
    return makeError(fmt::format("engine option {}={} is out of range", key, n), fmt::format("use {}..{}", lo, hi), 2);
  return n;
}

bool boolOption(const Json& opts, const std::string& key) {
  if (!opts.contains(key)) return false;
  const Json& v = opts[key];
  if (v.is_boolean()) return v.get<bool>();
  if (v.is_number()) return v.get<double>() != 0;
  std::string t = v.is_string() ? v.get<std::string>() : "";
  return t == "1" || t == "true" || t == "yes" || t == "on";
}

struct MigrationSettings {
  double maxBandwidthMiBs = 0;  // MiB/s
  double downtimeLimitMs = 0;
  double timeoutS = 0;
  Json applied = Json::object();  // what we set, as QEMU reports it back
};

// QEMU's defaults (128 MiB/s, 300 ms) make a VM look slower than it is; we always set both
// explicitly and record them. Defaults here: bandwidth effectively unlimited for a local file or
// socket, downtime 100 ms.
Result<MigrationSettings> readSettings(const Json& opts, double defaultTimeoutS) {
  MigrationSettings s;
  CRB_ASSIGN(s.maxBandwidthMiBs, numOption(opts, "max_bandwidth_mib", 16384, 1, 1048576));
  CRB_ASSIGN(s.downtimeLimitMs, numOption(opts, "downtime_limit_ms", 100, 1, 2000000));
  CRB_ASSIGN(s.timeoutS, numOption(opts, "timeout_s", defaultTimeoutS, 1, 3600));
  return s;
}

Status applySettings(qmp::QmpClient& q, MigrationSettings& s) {
  Json params = {{"max-bandwidth", static_cast<int64_t>(s.maxBandwidthMiBs * 1024 * 1024)},
                 {"downtime-limit", static_cast<int64_t>(s.downtimeLimitMs)}};
  CRB_CHECK(q.execute("migrate-set-parameters", params, milliseconds(5000)));
  CRB_ASSIGN(Json now, q.execute("query-migrate-parameters", Json::object(), milliseconds(5000)));
  s.applied = {{"max-bandwidth", now.value("max-bandwidth", Json())},
               {"downtime-limit", now.value("downtime-limit", Json())}};
  return success();
}

Status setCapabilities(qmp::QmpClient& q, const std::vector<std::pair<std::string, bool>>& caps) {
  Json list = Json::array();
  for (auto& [name, on] : caps) list.push_back({{"capability", name}, {"state", on}});
  CRB_CHECK(q.execute("migrate-set-capabilities", Json{{"capabilities", list}}, milliseconds(5000)));
  return success();
}

// The figures of query-migrate worth keeping, next to crbench's own timings.
Json migrationFigures(const Json& info) {
  Json f = Json::object();
  for (auto k : {"status", "total-time", "downtime", "setup-time", "expected-downtime"})
    if (info.contains(k)) f[k] = info[k];
  if (info.contains("ram")) {
    auto& r = info["ram"];
    for (auto k : {"transferred", "total", "remaining", "duplicate", "normal", "normal-bytes",
                   "dirty-sync-count", "dirty-pages-rate", "mbps", "pages-per-second", "precopy-bytes",
                   "postcopy-bytes", "downtime-bytes", "postcopy-requests"})
      if (r.contains(k)) f["ram"][k] = r[k];
  }
  if (info.contains("xbzrle-cache")) f["xbzrle-cache"] = info["xbzrle-cache"];
  if (info.contains("error-desc")) f["error-desc"] = info["error-desc"];
  return f;
}

// Poll query-migrate until the migration leaves its active states or the deadline passes.
// `onPoll` may act on intermediate states (post-copy switch-over). Returns the last info.
Result<Json> waitMigration(qmp::QmpClient& q, const std::string& who, milliseconds timeout, bool* timedOut,
                           const std::function<Status(const Json&)>& onPoll = {}) {
  auto deadline = Clock::now() + timeout;
  *timedOut = false;
  Json info;
  for (;;) {
    auto r = q.execute("query-migrate", Json::object(), milliseconds(10000));
    if (!r.ok()) return r.error().context(fmt::format("{}: query-migrate", who));
    info = *r;
    std::string st = info.value("status", "");
    if (st == "completed" || st == "failed" || st == "cancelled") return info;
    if (onPoll) CRB_CHECK(onPoll(info));
    if (Clock::now() >= deadline) {
      *timedOut = true;
      return info;
    }
    // Short interval: the completion time we report is bounded by it.
    std::this_thread::sleep_for(milliseconds(5));
  }
}

Result<std::string> runState(qmp::QmpClient& q) {
  CRB_ASSIGN(Json s, q.execute("query-status", Json::object(), milliseconds(5000)));
  return s.value("status", "unknown");
}

// Leave the source VM running after a failed checkpoint, or say it is dead.
std::string recoverSource(VmSandbox& vm) {
  // A QEMU that hung up QMP is usually exiting: its sockets close before it can be reaped.
  auto until = Clock::now() + milliseconds(2000);
  while (!vm.qmp().connected() && vm.current().alive() && Clock::now() < until)
    std::this_thread::sleep_for(milliseconds(10));
  if (!vm.current().alive()) {
    int ws = vm.current().waitStatus;
    std::string how = WIFSIGNALED(ws)   ? fmt::format("was killed by signal {}", WTERMSIG(ws))
                      : WIFEXITED(ws) ? fmt::format("exited with status {}", WEXITSTATUS(ws))
                                      : "has exited";
    return fmt::format("the source QEMU (pid {}) {}; the VM is gone", vm.current().pid, how);
  }
  auto& q = vm.qmp();
  (void)q.execute("migrate_cancel", Json::object(), milliseconds(5000));
  auto st = runState(q);
  if (!st.ok()) return "the source QEMU does not answer QMP: " + st.error().message;
  if (*st != "running") {
    auto c = q.execute("cont", Json::object(), milliseconds(5000));
    if (!c.ok()) return fmt::format("the source VM is '{}' and could not be resumed: {}", *st, c.error().message);
    return fmt::format("the source VM was '{}' and has been resumed", *st);
  }
  return "the source VM is still running";
}

Result<uint32_t> crcOfFile(const fs::path& p, uint64_t* bytes) {
  Fd fd(::open(p.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd.valid()) return sysError("open " + p.string(), errno);
  std::string buf(1 << 20, '\0');
  uint32_t crc = 0;
  *bytes = 0;
  for (;;) {
    ssize_t n = ::read(fd.get(), buf.data(), buf.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      return sysError("read " + p.string(), errno);
    }
    if (n == 0) break;
    crc = crc32(std::string_view(buf.data(), static_cast<size_t>(n)), crc);
    *bytes += static_cast<uint64_t>(n);
  }
  return crc;
}

// Move the guest's RAM file into the image: a rename on one filesystem; across filesystems a copy
// (copy_file_range keeps holes where the filesystem can), which the caller reports as such.
Status moveRamFile(const fs::path& from, const fs::path& to, bool* copied) {
  *copied = false;
  if (::rename(from.c_str(), to.c_str()) == 0) return success();
  if (errno != EXDEV) return sysError(fmt::format("move the RAM file {} to {}", from.string(), to.string()), errno);
  *copied = true;
  Fd in(::open(from.c_str(), O_RDONLY | O_CLOEXEC));
  if (!in.valid()) return sysError("open " + from.string(), errno);
  Fd out(::open(to.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
  if (!out.valid()) return sysError("create " + to.string(), errno);
  for (;;) {
    ssize_t n = ::copy_file_range(in.get(), nullptr, out.get(), nullptr, 1 << 30, 0);
    if (n < 0) {
      if (errno == EINTR) continue;
      int e = errno;
      std::error_code ec;
      fs::remove(to, ec);
      return sysError(fmt::format("copy the RAM file {} to {}", from.string(), to.string()), e);
    }
    if (n == 0) break;
  }
  if (::fsync(out.get()) != 0) return sysError("fsync " + to.string(), errno);
  std::error_code ec;
  fs::remove(from, ec);
  return success();
}

uint64_t allocatedBytes(const fs::path& p) {
  struct stat st {};
  return ::stat(p.c_str(), &st) == 0 ? static_cast<uint64_t>(st.st_blocks) * 512 : 0;
}

}  // namespace

Result<Json> verifyQemuImage(const fs::path& dir) {
  fs::path mpath = dir / kQemuManifestFile;
  fs::path spath = dir / kQemuVmstateFile;
  std::error_code ec;
  if (!fs::exists(mpath, ec))
    return makeError(fmt::format("{} is not a complete qemu image: {} is missing", dir.string(), kQemuManifestFile),
                     "the checkpoint did not finish; take a new one");
  CRB_ASSIGN(std::string text, readFile(mpath));
  Json m = Json::parse(text, nullptr, false);
  if (m.is_discarded() || !m.is_object())
    return makeError(fmt::format("{} is not valid JSON", mpath.string()), "the image is damaged; take a new one");
  if (m.value("format", 0) != kQemuImageFormat || m.value("engine", "") != "qemu")
    return makeError(fmt::format("{}: not a qemu engine image of format {} (engine '{}', format {})", mpath.string(),
                                 kQemuImageFormat, m.value("engine", "?"), m.value("format", 0)),
                     "restore it with the crbench version that wrote it");
  if (!fs::exists(spath, ec))
    return makeError(fmt::format("qemu image {}: {} is missing", dir.string(), kQemuVmstateFile),
                     "the image is incomplete; take a new one");
  uint64_t want = m.value("vmstate_bytes", uint64_t(0));
  uint64_t have = fs::file_size(spath, ec);
  if (have != want)
    return makeError(fmt::format("qemu image {}: {} is {} ({} of the {} bytes recorded)", dir.string(),
                                 kQemuVmstateFile, have < want ? "truncated" : "longer than recorded", have, want),
                     "the image is damaged; restore refused — take a new checkpoint");
  if (m.contains("ram_file")) {
    // The RAM file is checked by size only: a CRC over all guest RAM would cost the restore the
    // time file-ram exists to save. Truncation (the likely damage) is still refused.
    fs::path rpath = dir / m.value("ram_file", "");
    uint64_t rwant = m.value("ram_bytes", uint64_t(0));
    uint64_t rhave = fs::exists(rpath, ec) ? fs::file_size(rpath, ec) : 0;
    if (ec || rhave != rwant)
      return makeError(fmt::format("qemu image {}: RAM file {} is {} ({} of the {} bytes recorded)", dir.string(),
                                   rpath.filename().string(), rhave < rwant ? "missing or truncated" : "longer than recorded",
                                   rhave, rwant),
                       "the image is damaged; restore refused — take a new checkpoint");
  }
  uint64_t n = 0;
  CRB_ASSIGN(uint32_t crc, crcOfFile(spath, &n));
  if (crc != m.value("vmstate_crc32", uint32_t(0)))
    return makeError(fmt::format("qemu image {}: {} does not match its recorded CRC-32 ({:08x} != {:08x})",
                                 dir.string(), kQemuVmstateFile, crc, m.value("vmstate_crc32", uint32_t(0))),
                     "the image is damaged; restore refused — take a new checkpoint");
  return m;
}

class QemuEngine : public Engine {
 public:
  std::string name() const override { return "qemu"; }

  Capabilities capabilities() override {
    Capabilities c;
    c.runtimes = {RuntimeKind::Vm};
    auto q = findQemuBinary();
    if (!q.ok()) {
      c.unavailable = q.error().text();
      return c;
    }
    c.modes = {modes::kStopAndCopy, modes::kLeaveRunning, modes::kPreCopy, modes::kPostCopy, modes::kFileRam};
    c.modeRuntimeFlavors[modes::kFileRam] = "vm-file-ram";
    c.unsupportedModes[modes::kIncremental] = "QEMU migration streams have no parent/child relation";
    c.unsupportedModes[modes::kLazy] = "use post-copy: QEMU serves pages on demand only during a live migration";
    c.unsupportedModes["cow"] = "QEMU's copy-on-write (write-protect) snapshot is background-snapshot: mode leave-running";
    c.unsupportedModes[modes::kBackground] = "QEMU's background-snapshot is the leave-running mode";
    c.versions["qemu_binary"] = *q;
    return c;
  }

  Result<PhaseReport> checkpoint(Sandbox& sandbox, const CheckpointContext& ctx) override {
    auto* vm = dynamic_cast<VmSandbox*>(&sandbox);
    if (!vm) return makeError("the qemu engine works on the vm runtime only", "use --runtime vm", 2);
    if (ctx.mode == modes::kStopAndCopy || ctx.mode == modes::kLeaveRunning) return saveToFile(*vm, ctx);
    if (ctx.mode == modes::kPreCopy || ctx.mode == modes::kPostCopy) return liveMigrate(*vm, ctx);
    if (ctx.mode == modes::kFileRam) return saveToFile(*vm, ctx);
    return makeError(fmt::format("the qemu engine has no mode '{}'", ctx.mode),
                     "use stop-and-copy, leave-running, pre-copy, post-copy or file-ram", 2);
  }

  Result<PhaseReport> restore(Sandbox& sandbox, const CheckpointContext& ctx) override {
    auto* vm = dynamic_cast<VmSandbox*>(&sandbox);
    if (!vm) return makeError("the qemu engine works on the vm runtime only", "use --runtime vm", 2);
    if (ctx.mode == modes::kPreCopy || ctx.mode == modes::kPostCopy) {
      PhaseReport r;
      r.notes.push_back("live migration: the target QEMU already runs the guest; nothing to restore");
      return r;
    }
    return restoreFromFile(*vm, ctx);
  }

 private:
  Result<PhaseReport> saveToFile(VmSandbox& vm, const CheckpointContext& ctx) {
    bool background = ctx.mode == modes::kLeaveRunning;
    bool fileRam = ctx.mode == modes::kFileRam;
    if (fileRam && vm.ramFile().empty())
      return makeError(fmt::format("qemu file-ram: VM {} was booted with anonymous RAM", vm.id()),
                       "file-ram needs the vm-file-ram runtime flavor (crbench run picks it for this mode)");
    for (const char* o : {"multifd", "xbzrle"})
      if (ctx.options.contains(o))
        return makeError(fmt::format("engine option {} applies to live migration (pre-copy, post-copy) only", o),
                         "xbzrle resends only changed bytes of pages sent before, and a file stream sends each "
                         "page once; multifd into a file needs QEMU's mapped-ram format, which crbench does not read");
    PhaseReport r;
    CRB_ASSIGN(MigrationSettings set, readSettings(ctx.options, 300));
    auto& q = vm.qmp();
    q.takeEvents();
    // x-ignore-shared: RAM in a shared named file is left out of the stream (it is the file).
    CRB_CHECK(setCapabilities(q, {{"background-snapshot", background}, {"x-ignore-shared", fileRam}}));
    CRB_CHECK(applySettings(q, set));
    fs::path tmp = ctx.imageDir / (std::string(".") + kQemuVmstateFile + ".partial");
    fs::path final = ctx.imageDir / kQemuVmstateFile;
    Fd file(::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
    if (!file.valid()) return sysError("create " + tmp.string(), errno);
    auto cleanup = [&] {
      std::error_code ec;
      fs::remove(tmp, ec);
    };
    // getfd hands QEMU its own copy of our descriptor: crbench decides where the image lives.
    auto g = q.execute("getfd", Json{{"fdname", kImageFdName}}, milliseconds(5000), file.get());
    if (!g.ok()) {
      cleanup();
      return g.error().context("qemu checkpoint: passing the image file to QEMU");
    }
    file.reset();  // QEMU holds the only reference it needs now

    auto t0 = Clock::now();
    if (!background) {
      ctx.mark("freeze-start");
      auto st = q.execute("stop", Json::object(), milliseconds(10000));
      if (!st.ok()) {
        cleanup();
        return st.error().context("qemu checkpoint: QMP stop (" + recoverSource(vm) + ")");
      }
      ctx.mark("frozen");
      r.phasesMs["stop"] = msSince(t0);
    }
    auto tm = Clock::now();
    auto mig = q.execute("migrate", Json{{"uri", fmt::format("fd:{}", kImageFdName)}}, milliseconds(10000));
    if (!mig.ok()) {
      std::string rec = recoverSource(vm);
      cleanup();
      return mig.error().context("qemu checkpoint: migrate to the image file (" + rec + ")");
    }
    bool timedOut = false;
    auto info = waitMigration(q, "qemu checkpoint", milliseconds(static_cast<int64_t>(set.timeoutS * 1000)), &timedOut);
    if (!info.ok() || timedOut || info->value("status", "") != "completed") {
      std::string why = !info.ok() ? info.error().message
                        : timedOut ? fmt::format("not completed within {:.0f} s (status {}, {} bytes written)",
                                                 set.timeoutS, info->value("status", "?"),
                                                 (*info)["ram"].value("transferred", 0))
                                   : fmt::format("status {}: {}", info->value("status", "?"), info->value("error-desc", ""));
      std::string rec = recoverSource(vm);
      cleanup();
      return makeError(fmt::format("qemu checkpoint ({}) failed: {}; {}", ctx.mode, why, rec),
                       "see the QEMU log in the sandbox's runtime directory");
    }
    r.phasesMs["migrate"] = msSince(tm);
    r.engineFigures["query_migrate"] = migrationFigures(*info);
    r.engineFigures["settings"] = set.applied;
    r.engineFigures["capabilities"] = {{"background-snapshot", background}, {"x-ignore-shared", fileRam}};

    // Durable before we call it saved.
    Fd sync(::open(tmp.c_str(), O_RDONLY | O_CLOEXEC));
    auto tsync = Clock::now();
    if (sync.valid()) ::fsync(sync.get());
    sync.reset();
    r.phasesMs["fsync"] = msSince(tsync);

    if (background) {
      // The guest kept running; QEMU resumed it if the snapshot paused it at the start.
      auto st = runState(q);
      if (st.ok() && *st != "running") (void)q.execute("cont", Json::object(), milliseconds(5000));
    } else {
      // Stop-and-copy: the workload is gone after the checkpoint; the restore brings it back.
      vm.kill(&vm.current());
      ctx.mark("source-ended");
    }
    Json ramFacts;
    if (fileRam) {
      // The source is gone, so the file holds the guest's RAM as of the stop; it becomes the image.
      fs::path ramDst = ctx.imageDir / kQemuRamFile;
      bool copied = false;
      auto tr = Clock::now();
      auto mv = moveRamFile(vm.ramFile(), ramDst, &copied);
      if (!mv.ok()) {
        cleanup();
        return mv.error().context("qemu file-ram checkpoint");
      }
      r.phasesMs[copied ? "ram_copy" : "ram_rename"] = msSince(tr);
      // The guest wrote its RAM through the page cache; making it durable means writing back
      // everything it touched, which stop-and-copy's stream does not pay for a RAM-sized file.
      // Off by default (the restore reads the page cache); fsync_ram=true pays for it here.
      bool durable = boolOption(ctx.options, "fsync_ram");
      if (durable) {
        auto ts = Clock::now();
        Fd rf(::open(ramDst.c_str(), O_RDONLY | O_CLOEXEC));
        if (!rf.valid() || ::fsync(rf.get()) != 0) {
          int e = errno;
          cleanup();
          return sysError("fsync " + ramDst.string(), e);
        }
        r.phasesMs["ram_fsync"] = msSince(ts);
      } else {
        r.notes.push_back("file-ram: the RAM file was not fsynced (--engine-opt fsync_ram=true makes it durable)");
      }
      if (copied)
        r.notes.push_back("file-ram: the RAM file was copied into the image (runtime and image directories are on "
                          "different filesystems); on one filesystem it is a rename");
      std::error_code ec;
      ramFacts = {{"file", kQemuRamFile},
                  {"bytes", fs::file_size(ramDst, ec)},
                  {"allocated_bytes", allocatedBytes(ramDst)},
                  {"moved_by", copied ? "copy" : "rename"},
                  {"fsynced", durable}};
      r.engineFigures["ram_file"] = ramFacts;
      if (r.phasesMs.count("stop")) r.phasesMs["pause_to_device_state_saved"] = r.phasesMs["stop"] + r.phasesMs["migrate"];
    }
    r.phasesMs["total"] = msSince(t0);
    for (auto& e : q.connected() ? q.takeEvents() : std::deque<qmp::Event>{})
      if (e.name == "STOP" || e.name == "RESUME") r.engineFigures["events"].push_back({{"event", e.name}, {"qemu_ts", e.qemuTimestamp}});

    // CRC after the guest is resumed / gone: not part of the downtime.
    uint64_t bytes = 0;
    auto tcrc = Clock::now();
    auto crc = crcOfFile(tmp, &bytes);
    if (!crc.ok()) {
      cleanup();
      return crc.error().context("qemu checkpoint: reading back the image");
    }
    r.phasesMs["checksum"] = msSince(tcrc);
    std::error_code ec;
    fs::rename(tmp, final, ec);
    if (ec) {
      cleanup();
      return sysError("rename to " + final.string(), ec.value());
    }
    Json manifest = {{"engine", "qemu"},
                     {"format", kQemuImageFormat},
                     {"mode", ctx.mode},
                     {"vmstate_bytes", bytes},
                     {"vmstate_crc32", *crc},
                     {"qemu_version", vm.qemuVersion()},
                     {"accelerator", vm.accelerator()},
                     {"memory_mib", vm.scenario().vmMemoryMiB},
                     {"kernel", vm.bootFiles().kernel.string()},
                     {"initramfs_hash", vm.bootFiles().initramfsHash},
                     {"source_argv", vm.buildArgv(QemuLaunch{})},
                     {"query_migrate", r.engineFigures["query_migrate"]}};
    if (fileRam) {
      manifest["ram_file"] = kQemuRamFile;
      manifest["ram_bytes"] = ramFacts["bytes"];
    }
    CRB_CHECK(writeFileAtomic(ctx.imageDir / kQemuManifestFile, manifest.dump(2), 0600));
    r.engineFigures["image_bytes_apparent"] = bytes;
    r.engineFigures["image_bytes_allocated"] = allocatedBytes(final);
    return r;
  }

  Result<PhaseReport> restoreFromFile(VmSandbox& vm, const CheckpointContext& ctx) {
    PhaseReport r;
    // Test hook (--engine-opt damage=truncate): cut the stream in half before the restore, so the
    // refusal path can be exercised end to end through `crbench run`.
    if (ctx.options.value("damage", "") == "truncate") {
      fs::path stream = ctx.imageDir / kQemuVmstateFile;
      std::error_code ec;
      auto size = fs::file_size(stream, ec);
      if (!ec) fs::resize_file(stream, size / 2, ec);
      r.notes.push_back("image damaged on request (damage=truncate)");
    }
    auto tv = Clock::now();
    CRB_ASSIGN(Json manifest, verifyQemuImage(ctx.imageDir));
    r.phasesMs["verify"] = msSince(tv);
    if (manifest.value("memory_mib", 0) != vm.scenario().vmMemoryMiB ||
        manifest.value("initramfs_hash", "") != vm.bootFiles().initramfsHash)
      return makeError(fmt::format("qemu image {} was taken of another machine (memory {} MiB, initramfs {})",
                                   ctx.imageDir.string(), manifest.value("memory_mib", 0),
                                   manifest.value("initramfs_hash", "?")),
                       "restore it into a VM of the same scenario");
    fs::path stream = ctx.imageDir / kQemuVmstateFile;
    Fd file(::open(stream.c_str(), O_RDONLY | O_CLOEXEC));
    if (!file.valid()) return sysError("open " + stream.string(), errno);

    auto t0 = Clock::now();
    // The same machine, waiting for a stream; the old QEMU (if still running) is replaced.
    QemuLaunch spec;
    spec.tag = "restore";
    spec.extraArgs = {"-incoming", "defer"};
    bool fileRam = manifest.contains("ram_file");
    if (fileRam) {
      // share=off maps the RAM file privately: the guest's writes stay in this QEMU, so the
      // image can be restored again.
      spec.ramFile = ctx.imageDir / manifest.value("ram_file", "");
      spec.ramShared = false;
    }
    CRB_ASSIGN(QemuInstance * inst, vm.relaunch(spec));
    r.phasesMs["spawn_to_qmp"] = inst->spawnToQmpMs;
    auto fail = [&](const Error& e) -> Result<PhaseReport> {
      std::string tail = vm.logTail(*inst, 6);
      vm.kill(inst);
      Error out = e.context("qemu restore");
      if (!tail.empty()) out.message += "\n" + tail;
      return out;
    };
    auto& q = *inst->qmp;
    if (fileRam) {
      // The stream carries the RAM block addresses only when both sides ignore shared RAM.
      auto c = setCapabilities(q, {{"x-ignore-shared", true}});
      if (!c.ok()) return fail(c.error());
    }
    auto g = q.execute("getfd", Json{{"fdname", kImageFdName}}, milliseconds(5000), file.get());
    if (!g.ok()) return fail(g.error());
    file.reset();
    auto ti = Clock::now();
    auto inc = q.execute("migrate-incoming", Json{{"uri", fmt::format("fd:{}", kImageFdName)}}, milliseconds(10000));
    if (!inc.ok()) return fail(inc.error());
    bool timedOut = false;
    auto info = waitMigration(q, "incoming", milliseconds(300000), &timedOut);
    if (!info.ok()) return fail(info.error());
    if (timedOut || info->value("status", "") != "completed")
      return fail(makeError(fmt::format("loading the stream did not complete (status {})", info->value("status", "?"))));
    r.phasesMs["load"] = msSince(ti);
    auto st = runState(q);
    if (!st.ok()) return fail(st.error());
    if (*st != "running") {
      auto c = q.execute("cont", Json::object(), milliseconds(10000));
      if (!c.ok()) return fail(c.error());
    }
    ctx.mark("resumed");
    r.phasesMs["total"] = msSince(t0);
    r.engineFigures["incoming"] = migrationFigures(*info);
    r.engineFigures["state_after_load"] = *st;
    r.engineFigures["qemu_pid"] = inst->pid;
    if (fileRam) r.engineFigures["ram_file"] = {{"path", spec.ramFile.string()}, {"share", false}};
    return r;
  }

  Result<PhaseReport> liveMigrate(VmSandbox& vm, const CheckpointContext& ctx) {
    bool postcopy = ctx.mode == modes::kPostCopy;
    PhaseReport r;
    CRB_ASSIGN(MigrationSettings set, readSettings(ctx.options, 60));
    bool xbzrle = boolOption(ctx.options, "xbzrle");
    int multifd = 0;
    if (ctx.options.contains("multifd")) {
      CRB_ASSIGN(double n, numOption(ctx.options, "multifd", 0, 0, 64));
      multifd = static_cast<int>(n);
    }
    auto& src = vm.current();
    auto& q = *src.qmp;
    q.takeEvents();
    CRB_CHECK(setCapabilities(q, {{"background-snapshot", false}, {"x-ignore-shared", false},
                                  {"postcopy-ram", postcopy}, {"xbzrle", xbzrle}, {"multifd", multifd > 0}}));
    CRB_CHECK(applySettings(q, set));
    if (xbzrle && ctx.options.contains("xbzrle_cache_mib")) {
      CRB_ASSIGN(double mib, numOption(ctx.options, "xbzrle_cache_mib", 64, 1, 65536));
      CRB_CHECK(q.execute("migrate-set-parameters", Json{{"xbzrle-cache-size", static_cast<int64_t>(mib * 1048576)}},
                          milliseconds(5000)));
    }
    if (multifd > 0)
      CRB_CHECK(q.execute("migrate-set-parameters", Json{{"multifd-channels", multifd}}, milliseconds(5000)));

    auto tl = Clock::now();
    QemuLaunch spec;
    spec.tag = "target";
    spec.hostForwards = false;  // the source holds the ports until the switch-over
    spec.extraArgs = {"-incoming", "defer"};
    CRB_ASSIGN(QemuInstance * dst, vm.launch(spec));
    r.phasesMs["target_spawn_to_qmp"] = msSince(tl);
    auto killTarget = [&] { vm.kill(dst); };
    // The target must agree on the stream's shape: post-copy and multifd channels.
    if (postcopy || multifd > 0) {
      Status c = setCapabilities(*dst->qmp, {{"postcopy-ram", postcopy}, {"multifd", multifd > 0}});
      if (c.ok() && multifd > 0) {
        auto p = dst->qmp->execute("migrate-set-parameters", Json{{"multifd-channels", multifd}}, milliseconds(5000));
        if (!p.ok()) c = p.error();
      }
      if (!c.ok()) {
        killTarget();
        return c.error().context("qemu live migration: capabilities on the target");
      }
    }
    fs::path sock = vm.runDir() / "migrate.sock";
    std::string uri = "unix:" + sock.string();
    auto inc = dst->qmp->execute("migrate-incoming", Json{{"uri", uri}}, milliseconds(10000));
    if (!inc.ok()) {
      killTarget();
      return inc.error().context("qemu live migration: migrate-incoming on the target");
    }
    auto t0 = Clock::now();
    auto mig = q.execute("migrate", Json{{"uri", uri}}, milliseconds(10000));
    if (!mig.ok()) {
      killTarget();
      return mig.error().context("qemu live migration: migrate (" + recoverSource(vm) + ")");
    }
    bool switched = false;
    double switchAtMs = 0;
    auto onPoll = [&](const Json& info) -> Status {
      // Switch to post-copy once the first pass over RAM is done (dirty-sync-count >= 2), as the
      // QEMU documentation suggests; earlier would pull almost every page on demand.
      if (postcopy && !switched && info.value("status", "") == "active" &&
          info.value("ram", Json::object()).value("dirty-sync-count", 0) >= 2) {
        CRB_CHECK(q.execute("migrate-start-postcopy", Json::object(), milliseconds(5000)));
        switched = true;
        switchAtMs = msSince(t0);
      }
      return success();
    };
    bool timedOut = false;
    auto info = waitMigration(q, "qemu live migration", milliseconds(static_cast<int64_t>(set.timeoutS * 1000)),
                              &timedOut, onPoll);
    if (!info.ok() || timedOut || info->value("status", "") != "completed") {
      Json figures = info.ok() ? migrationFigures(*info) : Json::object();
      std::string why;
      if (!info.ok())
        why = info.error().message;
      else if (timedOut)
        why = fmt::format("did not converge within {:.0f} s under downtime-limit {} ms and max-bandwidth {} MiB/s "
                          "(transferred {} of {} bytes, remaining {}, dirty rate {} pages/s, expected downtime {} ms, "
                          "{} dirty syncs)",
                          set.timeoutS, set.downtimeLimitMs, set.maxBandwidthMiBs,
                          figures["ram"].value("transferred", 0), figures["ram"].value("total", 0),
                          figures["ram"].value("remaining", 0), figures["ram"].value("dirty-pages-rate", 0),
                          figures.value("expected-downtime", 0), figures["ram"].value("dirty-sync-count", 0));
      else
        why = fmt::format("status {}: {}", info->value("status", "?"), info->value("error-desc", ""));
      // A post-copy migration past the switch cannot be cancelled: the guest lives in the target.
      if (switched && info.ok() && info->value("status", "") == "postcopy-active") {
        killTarget();
        return makeError(fmt::format("qemu post-copy migration failed after the switch-over: {}; the VM is lost", why));
      }
      std::string rec = recoverSource(vm);
      killTarget();
      return makeError(fmt::format("qemu live migration ({}) {}; migrate_cancel: {}", ctx.mode, why, rec),
                       "raise --engine-opt max_bandwidth_mib / downtime_limit_ms / timeout_s, or lower the dirty rate");
    }
    ctx.mark("migrated");
    r.phasesMs["migrate"] = msSince(t0);
    if (switched) r.phasesMs["postcopy_switch_at"] = switchAtMs;
    if (postcopy) {
      r.engineFigures["postcopy_switch_requested"] = switched;
      if (info->value("ram", Json::object()).value("postcopy-bytes", 0) == 0)
        r.notes.push_back("post-copy: no page moved after the switch-over (the migration converged in pre-copy "
                          "first); the figures are those of a pre-copy migration");
    }
    r.engineFigures["query_migrate"] = migrationFigures(*info);
    r.engineFigures["settings"] = set.applied;
    r.engineFigures["capabilities"] = {{"postcopy-ram", postcopy}, {"xbzrle", xbzrle}, {"multifd", multifd > 0}};
    if (multifd > 0) r.engineFigures["settings"]["multifd-channels"] = multifd;
    // The prober's ports now follow the guest to the target.
    auto tf = Clock::now();
    auto mv = vm.moveHostForwards(src, *dst);
    if (!mv.ok()) {
      std::string rec = recoverSource(vm);
      killTarget();
      return mv.error().context("qemu live migration: moving the agent ports (" + rec + ")");
    }
    r.phasesMs["move_forwards"] = msSince(tf);
    auto st = runState(*dst->qmp);
    if (st.ok() && *st != "running") (void)dst->qmp->execute("cont", Json::object(), milliseconds(5000));
    ctx.mark("resumed");
    for (auto& e : q.takeEvents())
      if (e.name == "STOP") r.engineFigures["source_stop_qemu_ts"] = e.qemuTimestamp;
    for (auto& e : dst->qmp->takeEvents())
      if (e.name == "RESUME") r.engineFigures["target_resume_qemu_ts"] = e.qemuTimestamp;
    if (r.engineFigures.contains("source_stop_qemu_ts") && r.engineFigures.contains("target_resume_qemu_ts"))
      r.engineFigures["stop_to_resume_events_ms"] =
          (r.engineFigures["target_resume_qemu_ts"].get<double>() - r.engineFigures["source_stop_qemu_ts"].get<double>()) * 1e3;
    CRB_CHECK(vm.adopt(dst));  // the source QEMU ends here
    r.engineFigures["qemu_pid"] = dst->pid;
    r.notes.push_back("QEMU's downtime figure is measured on the source only; the prober's gap is end to end");
    return r;
  }
};

CRB_REGISTER_ENGINE(QemuEngine, "qemu");

}  // namespace crb
