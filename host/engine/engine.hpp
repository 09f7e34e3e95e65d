#pragma once
// One interface for every checkpoint/restore engine; each engine lives in host/engine/<name>/ and
// registers itself by name with CRB_REGISTER_ENGINE. Engines never fake a figure: what they cannot
// do they report as unsupported (with the reason) or failed (with the error).
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/json.hpp"
#include "core/result.hpp"
#include "runtime/sandbox.hpp"

namespace crb {

// Canonical mode names (engines may add their own, documented in their folder):
//   stop-and-copy   freeze, dump, workload gone; restore continues it
//   leave-running   dump, workload keeps running (restore then replaces it)
//   pre-copy        iterative copy while running, short final freeze
//   post-copy       switch early, pages pulled on demand (VM live migration)
//   lazy            restore with memory served on demand
//   incremental     dump relative to a parent image
//   background      snapshot while running (write-protect based)
//   file-ram        VM RAM in a file, copy-on-write restore
namespace modes {
inline constexpr const char* kStopAndCopy = "stop-and-copy";
inline constexpr const char* kLeaveRunning = "leave-running";
inline constexpr const char* kPreCopy = "pre-copy";
inline constexpr const char* kPostCopy = "post-copy";
inline constexpr const char* kLazy = "lazy";
inline constexpr const char* kIncremental = "incremental";
inline constexpr const char* kBackground = "background";
inline constexpr const char* kFileRam = "file-ram";
}  // namespace modes

struct Capabilities {
  std::vector<RuntimeKind> runtimes{RuntimeKind::Container};  // runtimes the engine works on
  std::string runtimeFlavor;  // "" = default runtime of that kind; else e.g. "vm-libvirt"
  // Modes that need a differently built sandbox (e.g. qemu file-ram boots the guest with its RAM
  // in a file): mode -> runtime flavor, used instead of runtimeFlavor for that mode.
  std::map<std::string, std::string> modeRuntimeFlavors;
  bool supportsRuntime(RuntimeKind k) const {
    for (auto r : runtimes)
      if (r == k) return true;
    return false;
  }
  std::vector<std::string> modes;                        // modes that work on this host
  std::map<std::string, std::string> unsupportedModes;  // mode -> why not (here / at all)
  std::string unavailable;  // non-empty: the engine cannot run on this host at all, and why
  Json versions = Json::object();  // tool versions the engine uses (criu, qemu, libvirt ...)
  bool available() const { return unavailable.empty(); }
};

// What an engine reports about one checkpoint or restore. Times measured by crbench around the
// engine call are added by the controller; these are the engine's own figures.
struct PhaseReport {
  std::map<std::string, double> phasesMs;  // e.g. "freeze", "memdump", "write" — measured here
  Json engineFigures = Json::object();      // the engine's own numbers (criu stats, query-migrate)
  double engineCpuSeconds = 0;              // CPU used by helper processes (criu, qemu target)
  long enginePeakRssKiB = 0;
  std::vector<std::string> notes;
};

// Hooks the controller gives the engine so engine-neutral measurements stay outside it.
struct CheckpointContext {
  std::string mode;
  std::filesystem::path imageDir;  // exists, empty, 0700
  Json options = Json::object();    // engine options from the command line (--engine-opt k=v)
  // Called by the engine at the moment the workload stops / resumes executing, if it knows.
  std::function<void(const std::string& event)> mark = [](const std::string&) {};
};

class Engine {
 public:
  virtual ~Engine() = default;
  virtual std::string name() const = 0;
  virtual Capabilities capabilities() = 0;
  // The runtimes the engine could ever work on, known without probing ({} = ask capabilities()):
  // lets compare skip an expensive probe (libvirt starts a daemon) when no such runtime is asked.
  virtual std::vector<RuntimeKind> staticRuntimes() const { return {}; }
  // Checkpoint the sandbox into ctx.imageDir. On failure the workload must be left running
  // (thawed) or, when that is impossible, killed and the error must say so.
  virtual Result<PhaseReport> checkpoint(Sandbox& sandbox, const CheckpointContext& ctx) = 0;
  // Restore from ctx.imageDir into `sandbox` (whose workload is gone after stop-and-copy, or is
  // replaced after leave-running). On failure everything the restore started is cleaned up.
  virtual Result<PhaseReport> restore(Sandbox& sandbox, const CheckpointContext& ctx) = 0;
};

using EngineFactory = std::function<std::unique_ptr<Engine>()>;

class EngineRegistry {
 public:
  static EngineRegistry& instance();
  void add(const std::string& name, EngineFactory f);
  std::unique_ptr<Engine> create(const std::string& name) const;
  std::vector<std::string> names() const;

 private:
  std::map<std::string, EngineFactory> factories_;
};

struct EngineRegistrar {
  EngineRegistrar(const std::string& name, EngineFactory f) {
    EngineRegistry::instance().add(name, std::move(f));
  }
};

}  // namespace crb

#define CRB_REGISTER_ENGINE(cls, name) \
  static ::crb::EngineRegistrar crb_engine_registrar_##cls(name, [] { return std::make_unique<cls>(); })
