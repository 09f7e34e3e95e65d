// The `libvirt` engine: checkpoint/restore of a vm-libvirt sandbox through the libvirt C API.
//
//   stop-and-copy   virDomainSaveFlags -> <image>/domain.save; the domain is shut off (it stays
//                   defined, so libvirt keeps the completed job's statistics); restore =
//                   virDomainRestoreFlags.
//   leave-running   external memory snapshot (<memory snapshot='external'>, no disks, no snapshot
//                   metadata), live by default: QEMU copies RAM while the guest runs and pauses it
//                   only for the last pass. The restore destroys the running domain and restores
//                   the memory file, which has the same format as a save file.
//   snapshot        the same external memory snapshot, kept as libvirt snapshot metadata;
//                   restore = virDomainRevertToSnapshot (libvirt 11.3 reverts a disk-less
//                   external memory snapshot; where a libvirt refuses, its reason is the error).
// Options (--engine-opt): bypass-cache=true (VIR_DOMAIN_SAVE_BYPASS_CACHE on save and restore;
// the snapshot API has no such flag, so leave-running refuses it), live=false (leave-running
// pauses the guest for the whole copy), image_format=zstd|gzip|xz|lzop|bzip2 (stop-and-copy: the
// save image compressed by libvirt), damage=truncate (test hook: halve the image before restore).
// virDomainGetJobStats is polled during the job and read once more when it has completed; every
// field libvirt returns is recorded beside the prober's figures.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>

#include <atomic>
#include <thread>

#include "core/clock.hpp"
#include "core/fsutil.hpp"
#include "core/log.hpp"
#include "engine/engine.hpp"
#include "engine/libvirt/libvirt_conn.hpp"
#include "engine/libvirt/libvirt_sandbox.hpp"

namespace crb::libvirt {

namespace {

constexpr const char* kMetaFile = "libvirt-image.json";
// libvirt's own snapshot life cycle: create (external memory, with metadata), revert.
constexpr const char* kSnapshotMode = "snapshot";
constexpr int kImageVersion = 1;

Json typedParamsToJson(virTypedParameterPtr params, int n) {
  Json j = Json::object();
  for (int i = 0; i < n; ++i) {
    const auto& p = params[i];
    switch (p.type) {
      case VIR_TYPED_PARAM_INT: j[p.field] = p.value.i; break;
      case VIR_TYPED_PARAM_UINT: j[p.field] = p.value.ui; break;
      case VIR_TYPED_PARAM_LLONG: j[p.field] = p.value.l; break;
      case VIR_TYPED_PARAM_ULLONG: j[p.field] = p.value.ul; break;
      case VIR_TYPED_PARAM_DOUBLE: j[p.field] = p.value.d; break;
      case VIR_TYPED_PARAM_BOOLEAN: j[p.field] = p.value.b != 0; break;
      case VIR_TYPED_PARAM_STRING: j[p.field] = p.value.s ? p.value.s : ""; break;
      default: break;
    }
  }
  return j;
}

const char* jobTypeName(int t) {
  switch (t) {
    case VIR_DOMAIN_JOB_NONE: return "none";
    case VIR_DOMAIN_JOB_BOUNDED: return "bounded";
    case VIR_DOMAIN_JOB_UNBOUNDED: return "unbounded";
    case VIR_DOMAIN_JOB_COMPLETED: return "completed";
    case VIR_DOMAIN_JOB_FAILED: return "failed";
    case VIR_DOMAIN_JOB_CANCELLED: return "cancelled";
    default: return "unknown";
  }
}

// Job statistics of `dom`: the running job (flags 0) or the last completed one.
Result<Json> jobStats(virDomainPtr dom, unsigned flags) {
  int type = 0;
  virTypedParameterPtr params = nullptr;
  int n = 0;
  if (virDomainGetJobStats(dom, &type, &params, &n, flags) != 0)
    return lastError("virDomainGetJobStats");
  Json j = typedParamsToJson(params, n);
  j["job_type"] = jobTypeName(type);
  virTypedParamsFree(params, n);
  return j;
}

// Polls the running job's statistics on its own thread while the main thread is inside the
// blocking libvirt call. A persistent domain keeps the completed statistics, but the samples show
// progress and survive a job that fails.
class JobSampler {
 public:
  explicit JobSampler(virDomainPtr dom) : dom_(dom) {
    virDomainRef(dom_);
    thread_ = std::thread([this] { run(); });
  }
  ~JobSampler() { finish(); }
  void finish() {
    if (thread_.joinable()) {
      stop_ = true;
      thread_.join();
      virDomainFree(dom_);
    }
  }
  Json summary() const {
    Json j = Json::object();
    j["samples"] = samples_;
    if (!last_.is_null()) j["last_sample"] = last_;  // may already read "completed"
    return j;
  }

 private:
  void run() {
    auto t0 = Clock::now();
    while (!stop_) {
      auto s = jobStats(dom_, 0);
      if (s && s->value("job_type", "") != "none") {
        (*s)["sampled_at_ms"] = msSince(t0);
        last_ = *s;
        ++samples_;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
  }
  virDomainPtr dom_;
  std::thread thread_;
  std::atomic<bool> stop_{false};
  Json last_;
  int samples_ = 0;
};

bool optionTrue(const Json& opts, const std::string& key, bool fallback) {
  if (!opts.is_object() || !opts.contains(key)) return fallback;
  const Json& v = opts[key];
  if (v.is_boolean()) return v.get<bool>();
  if (v.is_number()) return v.get<double>() != 0;
  if (v.is_string()) {
    std::string s = v.get<std::string>();
    return s == "1" || s == "true" || s == "yes" || s == "on";
  }
  return fallback;
}

Result<LibvirtSandbox*> asLibvirtSandbox(Sandbox& sandbox) {
  auto* s = dynamic_cast<LibvirtSandbox*>(&sandbox);
  if (!s)
    return makeError(fmt::format("the libvirt engine works only on the vm-libvirt runtime, not on "
                                 "sandbox {} ({})",
                                 sandbox.id(), toString(sandbox.kind())),
                     "run with --runtime vm --engine libvirt (the runtime flavor follows the engine)");
  return s;
}

// A failed save or snapshot must not leave the guest paused: libvirt normally resumes it, and we
// make sure. Returns what happened for the error message.
std::string ensureRunningAfterFailure(virDomainPtr dom) {
  int state = 0, reason = 0;
  if (virDomainGetState(dom, &state, &reason, 0) != 0) {
    virResetLastError();
    return "the domain's state is unknown";
  }
  if (state == VIR_DOMAIN_RUNNING) return "the guest is still running";
  if (state == VIR_DOMAIN_PAUSED) {
    if (virDomainResume(dom) == 0) return "the guest was paused and has been resumed";
    return lastError("resume").message + "; the guest is left paused";
  }
  if (state == VIR_DOMAIN_SHUTOFF) return "the guest is gone (domain shut off)";
  return fmt::format("the domain is in state {}", state);
}

void addImageFigures(PhaseReport& r, const fs::path& file) {
  DiskUsage u = diskUsage(file);
  r.engineFigures["image"] = {{"file", file.filename().string()},
                              {"apparent_bytes", u.apparentBytes},
                              {"allocated_bytes", u.allocatedBytes}};
}

std::string bytesText(uint64_t b) { return fmt::format("{:.1f} MiB", b / 1048576.0); }

}  // namespace

class LibvirtEngine : public Engine {
 public:
  std::string name() const override { return "libvirt"; }
  std::vector<RuntimeKind> staticRuntimes() const override { return {RuntimeKind::Vm}; }

  Capabilities capabilities() override {
    Capabilities c;
    c.runtimes = {RuntimeKind::Vm};
    c.runtimeFlavor = "vm-libvirt";
    unsigned long lib = 0;
    initLibvirt();
    if (virGetVersion(&lib, nullptr, nullptr) == 0) c.versions["libvirt_client"] = versionText(lib);
    auto conn = connect();
    if (!conn) {
      c.unavailable = conn.error().text();
      // Known modes stay known, so a run asking for one is recorded as unsupported, with why.
      for (const char* m : {modes::kStopAndCopy, modes::kLeaveRunning})
        c.unsupportedModes[m] = c.unavailable;
      return c;
    }
    // Held while the engine lives, so the sandbox started next reuses this daemon instead of
    // crbench stopping and restarting its own between the two.
    conn_ = *conn;
    Json d = conn_->describe();
    for (const char* k : {"libvirt", "qemu"})
      if (d.contains(k)) c.versions[std::string(k) == "libvirt" ? "libvirtd" : "qemu"] = d[k];
    c.versions["uri"] = d["uri"];
    c.versions["daemon"] = d["daemon"];
    c.modes = {modes::kStopAndCopy, modes::kLeaveRunning, kSnapshotMode};
    const std::string migrate =
        "libvirt migrates only between two hosts: it refuses a destination that is the host the "
        "domain runs on (\"Attempt to migrate guest to the same host\"), and crbench has one host; "
        "the qemu engine measures live migration on one host";
    c.unsupportedModes[modes::kPreCopy] = migrate;
    c.unsupportedModes[modes::kPostCopy] = migrate;
    c.unsupportedModes[modes::kFileRam] =
        "libvirt has no save mode that keeps guest RAM in a shared file for copy-on-write restore; "
        "use the qemu engine's file-ram mode";
    c.unsupportedModes[modes::kBackground] =
        "libvirt 11 exposes no background-snapshot (userfaultfd write-protect) save; leave-running "
        "uses a live external memory snapshot instead";
    c.unsupportedModes[modes::kIncremental] = "libvirt memory snapshots are always full";
    c.unsupportedModes[modes::kLazy] = "libvirt restores read the whole memory image before resuming";
    return c;
  }

  Result<PhaseReport> checkpoint(Sandbox& sandbox, const CheckpointContext& ctx) override {
    CRB_ASSIGN(LibvirtSandbox * sb, asLibvirtSandbox(sandbox));
    if (ctx.mode == modes::kStopAndCopy) return save(*sb, ctx);
    if (ctx.mode == modes::kLeaveRunning) return snapshot(*sb, ctx);
    if (ctx.mode == kSnapshotMode) return snapshot(*sb, ctx);
    if (ctx.mode == modes::kPreCopy || ctx.mode == modes::kPostCopy) return migrate(*sb, ctx);
    return makeError(fmt::format("the libvirt engine has no mode '{}'", ctx.mode),
                     "use stop-and-copy or leave-running");
  }

  Result<PhaseReport> restore(Sandbox& sandbox, const CheckpointContext& ctx) override {
    CRB_ASSIGN(LibvirtSandbox * sb, asLibvirtSandbox(sandbox));
    PhaseReport r;
    CRB_ASSIGN(std::string metaText, readFile(ctx.imageDir / kMetaFile));
    Json meta = Json::parse(metaText, nullptr, false);
    if (meta.is_discarded() || meta.value("format", "") != "crbench-libvirt-image")
      return makeError(fmt::format("{} is not a crbench libvirt image description",
                                   (ctx.imageDir / kMetaFile).string()),
                       "restore an image directory written by the libvirt engine");
    if (meta.value("version", 0) != kImageVersion)
      return makeError(fmt::format("libvirt image version {} in {}; this crbench reads version {}",
                                   meta.value("version", 0), ctx.imageDir.string(), kImageVersion));
    fs::path file = ctx.imageDir / meta.value("file", "");
    std::error_code ec;
    // Test hook (--engine-opt damage=truncate): cut the image in half before the restore, so the
    // refusal path can be exercised end to end through `crbench run`.
    if (ctx.options.value("damage", "") == "truncate") {
      auto full = fs::file_size(file, ec);
      if (!ec) fs::resize_file(file, full / 2, ec);
      r.notes.push_back("image damaged on request (damage=truncate)");
    }
    auto size = fs::file_size(file, ec);
    if (ec)
      return makeError(fmt::format("libvirt image file {} is missing: {}", file.string(), ec.message()));
    uint64_t want = meta.value("bytes", uint64_t{0});
    if (size != want)
      return makeError(fmt::format("libvirt image file {} is {} bytes, the checkpoint wrote {}: "
                                   "truncated or modified, restore refused",
                                   file.string(), size, want));

    virDomainPtr dom = sb->domain();
    if (meta.value("mode", "") == kSnapshotMode) return revert(*sb, ctx, meta, file, r);
    if (virDomainIsActive(dom) == 1) {
      // leave-running: the snapshot's source still runs and owns the forwarded ports.
      auto t0 = Clock::now();
      if (virDomainDestroy(dom) != 0) return lastError("destroy the running domain before restore");
      r.phasesMs["destroy_running"] = msSince(t0);
      r.notes.push_back("the running domain was destroyed and replaced by the restored one");
    }
    virResetLastError();

    unsigned flags = VIR_DOMAIN_SAVE_RUNNING;
    bool bypass = optionTrue(ctx.options, "bypass-cache", false);
    if (bypass) flags |= VIR_DOMAIN_SAVE_BYPASS_CACHE;
    CRB_CHECK(sb->connection().ensureLogDaemon());
    auto t0 = Clock::now();
    int rc = virDomainRestoreFlags(sb->connection().get(), file.c_str(), nullptr, flags);
    r.phasesMs["restore"] = msSince(t0);
    if (rc != 0) {
      Error e = lastError("virDomainRestoreFlags from " + file.string());
      // libvirt kills the QEMU it started when a restore fails; make sure nothing runs.
      if (virDomainIsActive(dom) == 1) virDomainDestroy(dom);
      virResetLastError();
      return e;
    }
    ctx.mark("resumed");
    r.engineFigures["flags"] = {{"bypass_cache", bypass}, {"running", true}};
    r.engineFigures["source_mode"] = meta.value("mode", "");
    if (auto s = jobStats(dom, VIR_DOMAIN_JOB_STATS_COMPLETED); s && s->size() > 1)
      r.engineFigures["job_completed"] = *s;
    else
      r.notes.push_back("libvirt keeps no job statistics for a restore");
    virResetLastError();
    addImageFigures(r, file);
    return r;
  }

 private:
  std::shared_ptr<Connection> conn_;

  // The snapshot mode's restore: libvirt's own revert to the snapshot it created. When libvirt
  // refuses, its reason is the error; the running domain is left as it was (revert failed before
  // touching it) or destroyed if libvirt left it half-reverted.
  Result<PhaseReport> revert(LibvirtSandbox& sb, const CheckpointContext& ctx, const Json& meta,
                             const fs::path& file, PhaseReport& r) {
    virDomainPtr dom = sb.domain();
    std::string name = meta.value("flags", Json::object()).value("snapshot_name", "");
    virDomainSnapshotPtr snap = virDomainSnapshotLookupByName(dom, name.c_str(), 0);
    if (!snap) return lastError(fmt::format("libvirt snapshot '{}' of {}", name, sb.domainName()),
                                "the snapshot metadata is gone; take a new checkpoint");
    CRB_CHECK(sb.connection().ensureLogDaemon());
    auto t0 = Clock::now();
    int rc = virDomainRevertToSnapshot(snap, VIR_DOMAIN_SNAPSHOT_REVERT_RUNNING);
    r.phasesMs["revert"] = msSince(t0);
    if (rc != 0) {
      Error e = lastError(fmt::format("virDomainRevertToSnapshot to '{}'", name),
                          "libvirt cannot revert this snapshot; leave-running restores the same "
                          "memory file with virDomainRestore instead");
      virDomainSnapshotFree(snap);
      int state = 0, reason = 0;
      if (virDomainGetState(dom, &state, &reason, 0) == 0 && state == VIR_DOMAIN_PAUSED) virDomainDestroy(dom);
      virResetLastError();
      return e;
    }
    virDomainSnapshotFree(snap);
    ctx.mark("resumed");
    r.engineFigures["reverted_to"] = name;
    r.engineFigures["source_mode"] = meta.value("mode", "");
    addImageFigures(r, file);
    return r;
  }

  Result<PhaseReport> save(LibvirtSandbox& sb, const CheckpointContext& ctx) {
    PhaseReport r;
    unsigned flags = 0;
    bool bypass = optionTrue(ctx.options, "bypass-cache", false);
    if (bypass) flags |= VIR_DOMAIN_SAVE_BYPASS_CACHE;
    fs::path file = ctx.imageDir / "domain.save";
    fs::path tmp = ctx.imageDir / "domain.save.partial";
    virDomainPtr dom = sb.domain();
    // image_format=zstd|gzip|xz|lzop|bzip2: libvirt pipes QEMU's stream through that compressor
    // (virDomainSaveParams, libvirt >= 11.2); restore reads the format from the image header.
    std::string format = ctx.options.value("image_format", "");

    JobSampler sampler(dom);
    ctx.mark("stopping");
    auto t0 = Clock::now();
    int rc = -1;
    if (format.empty()) {
      rc = virDomainSaveFlags(dom, tmp.c_str(), nullptr, flags);
    } else {
      virTypedParameterPtr params = nullptr;
      int n = 0, max = 0;
      virTypedParamsAddString(&params, &n, &max, VIR_DOMAIN_SAVE_PARAM_FILE, tmp.c_str());
      virTypedParamsAddString(&params, &n, &max, VIR_DOMAIN_SAVE_PARAM_IMAGE_FORMAT, format.c_str());
      rc = virDomainSaveParams(dom, params, n, flags);
      virTypedParamsFree(params, n);
    }
    r.phasesMs["save"] = msSince(t0);
    sampler.finish();
    if (rc != 0) {
      Error e = lastError("virDomainSaveFlags of " + sb.domainName());
      std::error_code ec;
      fs::remove(tmp, ec);
      return e.context("stop-and-copy failed (" + ensureRunningAfterFailure(dom) + ")");
    }
    ctx.mark("stopped");
    return finishImage(sb, ctx, r, tmp, file, sampler,
                       {{"bypass_cache", bypass}, {"image_format", format.empty() ? "raw (default)" : format}});
  }

  Result<PhaseReport> snapshot(LibvirtSandbox& sb, const CheckpointContext& ctx) {
    PhaseReport r;
    if (optionTrue(ctx.options, "bypass-cache", false))
      return makeError("bypass-cache applies to stop-and-copy only: libvirt's snapshot API has no "
                       "such flag",
                       "drop --engine-opt bypass-cache for leave-running");
    if (ctx.options.contains("image_format"))
      return makeError("image_format applies to stop-and-copy only: an external memory snapshot's "
                       "format is the daemon's snapshot_image_format (qemu.conf), not a per-call flag",
                       "drop --engine-opt image_format for leave-running");
    bool live = optionTrue(ctx.options, "live", true);
    bool withMetadata = ctx.mode == kSnapshotMode;
    fs::path file = ctx.imageDir / "memory.save";
    // The snapshot mode's metadata records the memory file's path for the revert, so the file is
    // written under its final name there; the image is complete only once libvirt-image.json is.
    fs::path tmp = withMetadata ? file : ctx.imageDir / "memory.save.partial";
    std::string snapName = "crbench-" + sb.id();
    std::string xml = fmt::format(
        "<domainsnapshot><name>{}</name>"
        "<memory snapshot='external' file='{}'/><disks/></domainsnapshot>",
        snapName, tmp.string());
    // leave-running keeps no metadata: nothing to delete later, and its restore is a
    // virDomainRestore of the memory file. The snapshot mode keeps it to revert to.
    unsigned flags = withMetadata ? 0 : VIR_DOMAIN_SNAPSHOT_CREATE_NO_METADATA;
    if (live) flags |= VIR_DOMAIN_SNAPSHOT_CREATE_LIVE;
    virDomainPtr dom = sb.domain();

    JobSampler sampler(dom);
    auto t0 = Clock::now();
    virDomainSnapshotPtr snap = virDomainSnapshotCreateXML(dom, xml.c_str(), flags);
    r.phasesMs["snapshot"] = msSince(t0);
    sampler.finish();
    if (!snap) {
      Error e = lastError("virDomainSnapshotCreateXML (external memory) of " + sb.domainName());
      std::error_code ec;
      fs::remove(tmp, ec);
      return e.context("leave-running failed (" + ensureRunningAfterFailure(dom) + ")");
    }
    virDomainSnapshotFree(snap);
    std::string state = ensureRunningAfterFailure(dom);
    if (state != "the guest is still running")
      r.notes.push_back("after the snapshot: " + state);
    Json flagsJson = {{"live", live}, {"metadata", withMetadata}};
    if (withMetadata) flagsJson["snapshot_name"] = snapName;
    return finishImage(sb, ctx, r, tmp, file, sampler, flagsJson);
  }

  Result<PhaseReport> migrate(LibvirtSandbox& sb, const CheckpointContext& ctx) {
    // Ask libvirt for real so the reason is its own, not ours. Peer-to-peer to our own URI.
    unsigned long flags = VIR_MIGRATE_LIVE | VIR_MIGRATE_PEER2PEER;
    if (ctx.mode == modes::kPostCopy) flags |= VIR_MIGRATE_POSTCOPY;
    int rc = virDomainMigrateToURI3(sb.domain(), sb.connection().uri().c_str(), nullptr, 0, flags);
    if (rc == 0)
      return makeError("libvirt accepted a migration to the same host, which crbench does not "
                       "handle; the domain may have moved");
    Error e = lastError("mode " + ctx.mode + " is unsupported by libvirt on one host");
    e.message += " (" + ensureRunningAfterFailure(sb.domain()) + ")";
    e.exitCode = 3;
    return e;
  }

  Result<PhaseReport> finishImage(LibvirtSandbox& sb, const CheckpointContext& ctx, PhaseReport& r,
                                  const fs::path& tmp, const fs::path& file,
                                  const JobSampler& sampler, Json flags) {
    virDomainPtr dom = sb.domain();
    r.engineFigures["flags"] = std::move(flags);
    r.engineFigures["job_during"] = sampler.summary();
    auto done = jobStats(dom, VIR_DOMAIN_JOB_STATS_COMPLETED);
    if (done) {
      r.engineFigures["job_completed"] = *done;
      // The three figures the comparison reads, named the way the other VM engine names them.
      Json& j = *done;
      if (j.contains(VIR_DOMAIN_JOB_DOWNTIME))
        r.engineFigures["downtime_ms"] = j[VIR_DOMAIN_JOB_DOWNTIME];
      if (j.contains(VIR_DOMAIN_JOB_TIME_ELAPSED))
        r.engineFigures["total_time_ms"] = j[VIR_DOMAIN_JOB_TIME_ELAPSED];
      if (j.contains(VIR_DOMAIN_JOB_MEMORY_PROCESSED))
        r.engineFigures["memory_transferred_bytes"] = j[VIR_DOMAIN_JOB_MEMORY_PROCESSED];
    } else {
      r.notes.push_back("no completed job statistics: " + done.error().message);
    }
    virResetLastError();

    // libvirt wrote the file itself; make it durable and give it its final name atomically.
    auto t0 = Clock::now();
    {
      Fd f(::open(tmp.c_str(), O_RDONLY | O_CLOEXEC));
      if (!f.valid() || ::fsync(f.get()) != 0) return sysError("fsync " + tmp.string(), errno);
    }
    std::error_code ec;
    if (tmp != file) fs::rename(tmp, file, ec);
    if (ec) return makeError(fmt::format("rename {} -> {}: {}", tmp.string(), file.string(), ec.message()));
    uint64_t bytes = fs::file_size(file, ec);
    Json meta = {{"format", "crbench-libvirt-image"},
                 {"version", kImageVersion},
                 {"mode", ctx.mode},
                 {"file", file.filename().string()},
                 {"bytes", bytes},
                 {"domain", sb.domainName()},
                 {"accelerator", sb.describe().value("accelerator", Json::object()).value("accel", "")},
                 {"flags", r.engineFigures["flags"]},
                 {"libvirt", sb.connection().describe()}};
    CRB_CHECK(writeFileAtomic(ctx.imageDir / kMetaFile, meta.dump(2) + "\n", 0600));
    r.phasesMs["sync"] = msSince(t0);
    addImageFigures(r, file);
    spdlog::debug("libvirt {}: {} in {:.0f} ms", ctx.mode, bytesText(bytes),
                  r.phasesMs.count("save") ? r.phasesMs["save"] : r.phasesMs["snapshot"]);
    return r;
  }
};

CRB_REGISTER_ENGINE(LibvirtEngine, "libvirt");

}  // namespace crb::libvirt
