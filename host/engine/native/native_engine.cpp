// The native engine behind the Engine interface, on the container runtime.
//
// What is checkpointed is the workload subtree, not the whole container: the scenario's program
// (the agent's child) and its descendants. The agent (the container's PID 1) holds the prober's
// UDP socket and a listening TCP socket, which the native engine cannot restore yet (sockets are
// issue #8), so it stays alive — but stopped: the container's cgroup is frozen, every thread of
// the agent and of the workload is seized while frozen, and the thaw lets them all run straight
// into ptrace stops. The agent stays in that stop for the whole dump (and, in stop-and-copy,
// until the restore is done), so the prober sees the workload's real downtime.
//
// Stop-and-copy kills the workload after the dump; the held agent is made to reap it by an
// injected wait4, so it never sees its program exit and its pid is free for the restore. The
// restore forks a helper into the container's pid namespace, which recreates the tree with
// clone3(set_tid) — same pids — in the container's mount/net/ipc/uts namespaces and cgroups; when
// the helper exits the restored root is reparented to the agent, whose program table still names
// that pid, so `status` reports it running and the agent reaps it as before. Leave-running
// restores the same way after killing the tree that ran on.
#include <signal.h>
#include <sys/syscall.h>
#include <sys/wait.h>

#include <chrono>
#include <memory>
#include <sstream>
#include <thread>
#include <utility>

#include "core/fsutil.hpp"
#include "engine/engine.hpp"
#include "engine/native/internal.hpp"
#include "engine/native/native.hpp"
#include "engine/native/cow.hpp"
#include "engine/native/incremental.hpp"
#include "engine/native/precopy.hpp"
#include "engine/native/procfs.hpp"
#include "runtime/container.hpp"
#include "core/fsutil.hpp"

namespace crb {
namespace {

// Copy-on-write dump (issue #9): the tree runs again right after the freeze, pages are copied
// after the thaw (a write first has its old page copied). Not a canonical mode name elsewhere.
constexpr const char* kCow = "cow";

using Clock = std::chrono::steady_clock;
double msSince(Clock::time_point t) { return std::chrono::duration<double, std::milli>(Clock::now() - t).count(); }

// The pid a host pid has in its own (innermost) pid namespace.
pid_t innermostPid(pid_t host) {
  auto st = native::readStatus(host);
  if (!st.ok() || !st->count("NSpid")) return -1;
  const std::string& v = st->at("NSpid");
  auto pos = v.find_last_of(" \t");
  return pid_t(std::stol(pos == std::string::npos ? v : v.substr(pos + 1)));
}

class NativeEngine : public Engine {
 public:
  ~NativeEngine() override { releaseAgent(); }
  std::string name() const override { return "native"; }
  Capabilities capabilities() override {
    Capabilities c;
    c.runtimes = {RuntimeKind::Container};
    c.modes = {modes::kStopAndCopy, modes::kLeaveRunning, modes::kPreCopy, kCow, modes::kIncremental, modes::kLazy};
    c.unsupportedModes[modes::kPostCopy] = "a VM migration mode (the process-level counterpart is lazy restore)";
    c.unsupportedModes[modes::kBackground] = "the native engine's write-protect based dump is mode cow";
    c.unsupportedModes[modes::kFileRam] = "a VM mode";
    c.versions["native-image-format"] = native::kImageFormatVersion;
    c.versions["native-checkpoints"] = "workload subtree (the agent's child); the agent is held stopped, not dumped";
    return c;
  }

  Result<PhaseReport> checkpoint(Sandbox& sandbox, const CheckpointContext& ctx) override {
    auto* c = dynamic_cast<ContainerSandbox*>(&sandbox);
    if (!c) return makeError("the native engine works on containers only");
    if (ctx.mode != modes::kStopAndCopy && ctx.mode != modes::kLeaveRunning && ctx.mode != modes::kPreCopy &&
        ctx.mode != kCow && ctx.mode != modes::kIncremental && ctx.mode != modes::kLazy)
      return makeError("native engine: mode " + ctx.mode + " is not supported",
                       "modes: stop-and-copy, leave-running, pre-copy, cow, incremental, lazy", 3);
    if (freshNs(ctx)) return checkpointWholeContainer(*c, ctx);
    if (ctx.mode == modes::kIncremental) return checkpointIncremental(sandbox, ctx);
    releaseAgent();
    bool precopy = ctx.mode == modes::kPreCopy;
    bool cowMode = ctx.mode == kCow;
    bool leave = ctx.mode == modes::kLeaveRunning || precopy || cowMode;
    pid_t agent = c->initPid();
    PhaseReport rep;
    // Pre-copy: rounds while everything runs; the freeze below is the short final round. The tree
    // (and the agent answering the prober) runs again as soon as the final round has captured it.
    // The guardian (guardian.hpp) starts before anything is frozen or seized: if crbench dies
    // mid-checkpoint it thaws the container and puts back what was changed in the agent and the
    // workload. One guardian serves the agent's hold and the workload's dump.
    agentHold_ = std::make_unique<native::Seizure>();
    agent_ = agent;
    // Started before the pre-copy rounds too: its fork then does not delay the final freeze.
    auto tg = Clock::now();
    if (auto st = agentHold_->useGuardian(); !st.ok()) {
      releaseAgent();
      return st.error().context("native engine");
    }
    rep.phasesMs["guardian_start"] = msSince(tg);
    std::unique_ptr<native::PreCopySession> session;
    auto tp = Clock::now();
    if (precopy) {
      auto kids = native::listChildren(agent);
      if (kids.size() != 1) {
        releaseAgent();
        return makeError(fmt::format("native engine: pre-copy needs exactly one workload tree under the agent, found {}",
                                     kids.size()), "", kids.empty() ? 1 : kUnsupportedExitCode);
      }
      native::PreCopyOptions po;
      for (auto [key, field] : {std::pair{"target_downtime_ms", &po.targetDowntimeMs},
                                std::pair{"max_seconds", &po.maxSeconds}, std::pair{"min_shrink", &po.minShrink}}) {
        if (!ctx.options.contains(key)) continue;
        try {
          *field = std::stod(ctx.options[key].is_string() ? ctx.options[key].get<std::string>()
                                                           : ctx.options[key].dump());
        } catch (...) {
          releaseAgent();
          return makeError(fmt::format("native engine: option {} is not a number", key), "e.g. --engine-opt "
                           "target_downtime_ms=10");
        }
      }
      if (ctx.options.contains("dirty_tracking")) {
        auto v = ctx.options["dirty_tracking"];
        po.dirtyTracking = v.is_string() ? v.get<std::string>() : v.dump();
      }
      if (ctx.options.contains("max_rounds")) {
        auto v = ctx.options["max_rounds"];
        po.maxRounds = v.is_string() ? std::atoi(v.get<std::string>().c_str()) : v.get<int>();
      }
      auto s = native::PreCopySession::start(kids[0], ctx.imageDir, po);
      if (!s.ok()) {
        releaseAgent();
        return s.error().context("native engine: pre-copy set-up (the workload was left running)");
      }
      session = std::move(*s);
      if (auto st = session->iterate(); !st.ok()) {
        releaseAgent();
        return st.error().context("native engine: pre-copy rounds (the workload was left running)");
      }
      rep.phasesMs["precopy_rounds"] = msSince(tp);
    }
    std::unique_ptr<native::CowSession> cow;
    if (cowMode) {
      cow = std::make_unique<native::CowSession>(ctx.imageDir);
      auto ta = Clock::now();
      if (auto st = cow->arm(native::listChildren(agent)); !st.ok()) {
        cow.reset();
        releaseAgent();
        return st.error().context("native engine: copy-on-write arming (the workload was left running)");
      }
      rep.phasesMs["cow_arm"] = msSince(ta);
      cow->lookBeforeFreeze(native::listChildren(agent));
    }
    auto guard = agentHold_->guardian();
    auto t0 = Clock::now();
    guard->noteFrozen((c->freezerCgroupDir() / "freezer.state").string());
    if (auto st = c->freeze(); !st.ok()) {
      guard->noteThawed();
      releaseAgent();
      return st.error();
    }
    ctx.mark("frozen");
    rep.phasesMs["cgroup_freeze"] = msSince(t0);
    // From here every path thaws: dumpTree thaws once all is seized; the guard covers the rest.
    auto thawIfFrozen = [&] {
      if (c->freezerState() != "THAWED") (void)c->thaw();
      if (c->freezerState() == "THAWED") guard->noteThawed();
    };
    auto children = native::listChildren(agent);
    // Every program the agent started is a tree of its own: all of them go into one image (the
    // agent, their parent, is held, not dumped). Pre-copy tracks one tree only.
    if (children.empty() || (precopy && children.size() != 1)) {
      thawIfFrozen();
      releaseAgent();
      return Error{children.empty() ? "native engine: the agent has no workload process to checkpoint"
                                        : fmt::format("native engine: unsupported: pre-copy of {} workload trees under "
                                                      "the agent (one is supported)", children.size()),
                       "the workload's programs are checkpointed as one tree: start one program that starts the rest",
                   children.empty() ? 1 : kUnsupportedExitCode};
    }
    pid_t root = children[0];
    pid_t rootNs = innermostPid(root);
    if (auto st = agentHold_->holdProcess(agent); !st.ok()) {
      thawIfFrozen();
      releaseAgent();
      return st.error().context("native engine: hold the agent");
    }
    native::DumpOptions o;
    o.leaveRunning = leave;
    o.nsReference = agent;
    o.moreRoots.assign(children.begin() + 1, children.end());
    o.rootPrefix = c->rootDir().string();
    o.reapKilled = [this] { reapAgentZombies(); };
    o.parent = std::exchange(nextParent_, {});  // incremental mode's second dump
    o.track = tracker_.get();                   // incremental mode: tracked from the base dump on
    // The agent is still held when dumpTree releases or kills the tree: marks come from here.
    o.mark = [](const std::string&) {};
    bool resumedMarked = false;
    if (precopy || cowMode) {
      o.capture = precopy ? static_cast<native::MemoryCapture*>(session.get()) : cow.get();
      // Pre-copy, COW: the workload runs again before the image is written; so does the agent.
      o.mark = [&](const std::string& e) {
        if (e != "resumed") return;
        auto tr = Clock::now();
        releaseAgent();
        rep.phasesMs["agent_release"] = msSince(tr);
        ctx.mark("resumed");
        resumedMarked = true;
        rep.phasesMs["cgroup_freeze_to_resumed"] = msSince(t0);
      };
    }
    // The agent's stop is collected before the kill so the reap hook can inject into it. When the
    // tree runs on (leave-running, pre-copy, COW) nothing is injected into the agent: it is only
    // held in its ptrace stop and detached, so it has nothing for the guardian to put back, and
    // the freeze saves the group stop, the injected mmap and, at the release, its munmap (2-3 ms
    // measured, more when the agent waits for a CPU to run them).
    bool agentReady = false;
    auto prepared = [&]() -> Status {
      if (agentReady) return success();
      agentReady = true;
      CRB_CHECK(agentHold_->waitPending());
      return leave ? success() : agentHold_->prepareInjection(agent);
    };
    o.guardian = guard;
    o.thaw = [c, &prepared, guard]() -> Status {
      CRB_CHECK(c->thaw());
      guard->noteThawed();
      return prepared();
    };
    rep.phasesMs["cgroup_freeze_to_dump"] = msSince(t0);
    auto r = native::dumpTree(root, ctx.imageDir, o);
    thawIfFrozen();
    if (!r.ok()) {
      releaseAgent();
      if (!resumedMarked) ctx.mark("resumed");
      Error e = r.error().context(fmt::format("native engine: dump of the workload tree {} (the agent and the workload "
                                              "were left running)", root));
      // The dump refuses what it cannot save with "unsupported: <object>": a refusal, not a fault.
      if (r.error().message.find("unsupported:") != std::string::npos) e.exitCode = kUnsupportedExitCode;
      return e;
    }
    if (auto st = prepared(); !st.ok()) {
      releaseAgent();
      return st.error().context("native engine: the agent after the dump");
    }
    rep.phasesMs.insert(r->phasesMs.begin(), r->phasesMs.end());
    rep.engineFigures = r->toJson();
    rep.engineFigures["checkpointed"] = "workload subtree";
    rep.engineFigures["workload_root_pid"] = rootNs;
    rep.engineFigures["workload_root_host_pid"] = root;
    rep.notes.push_back(
        "checkpointed the workload subtree (the agent's child and its descendants); the agent, which holds the "
        "prober's sockets, was held stopped with the workload and not dumped");
    if (leave) {
      releaseAgent();
      if (!resumedMarked) ctx.mark("resumed");
    }
    if (precopy) rep.phasesMs["checkpoint_total_with_rounds"] = msSince(tp);
    // Stop-and-copy: the agent stays stopped until the restore has recreated the workload.
    rep.phasesMs["checkpoint_total"] = msSince(t0);
    return rep;
  }

  Result<PhaseReport> restore(Sandbox& sandbox, const CheckpointContext& ctx) override {
    auto* c = dynamic_cast<ContainerSandbox*>(&sandbox);
    if (!c) return makeError("the native engine works on containers only");
    if (freshNs(ctx)) return restoreFreshNamespaces(*c, ctx);
    PhaseReport rep;
    auto t0 = Clock::now();
    pid_t agent = c->initPid();
    if (!agentHold_) {
      // Leave-running: the tree that ran on is replaced. Stop everything, kill the workload, make
      // the held agent reap it.
      agentHold_ = std::make_unique<native::Seizure>();
      agent_ = agent;
      if (auto st = agentHold_->useGuardian(); !st.ok()) {
        releaseAgent();
        return st.error().context("native engine");
      }
      auto guard = agentHold_->guardian();
      guard->noteFrozen((c->freezerCgroupDir() / "freezer.state").string());
      if (auto st = c->freeze(); !st.ok()) {
        guard->noteThawed();
        releaseAgent();
        return st.error();
      }
      ctx.mark("frozen");
      Status held = agentHold_->holdProcess(agent);
      auto pids = c->pids();
      if (held.ok() && pids.ok())
        for (pid_t p : *pids)
          if (p != agent) ::kill(p, SIGKILL);
      Status thawed = c->thaw();
      if (thawed.ok()) guard->noteThawed();
      Status stopped = agentHold_->waitPending();
      Status prep = held.ok() && stopped.ok() ? agentHold_->prepareInjection(agent) : success();
      for (const Status* s : {&held, &thawed, &stopped, &prep})
        if (!s->ok()) {
          releaseAgent();
          return s->error().context("native engine: stop the workload that ran on");
        }
      auto deadline = Clock::now() + std::chrono::seconds(5);
      for (;;) {
        reapAgentZombies();
        // Gone from the cgroup is not enough: a dead child stays a zombie (holding its pid, which
        // the restore needs) until the held agent has been made to reap it.
        bool left = false;
        if (pids.ok())
          for (pid_t p : *pids) left = left || (p != agent && ::kill(p, 0) == 0);
        auto now = c->pids();
        if (now.ok() && now->size() <= 1 && !left) break;
        if (Clock::now() > deadline) {
          releaseAgent();
          return makeError("native engine: the workload that ran on did not go away within 5 s");
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
      }
      rep.phasesMs["replace_running"] = msSince(t0);
    }
    native::RestoreOptions o;
    o.joinNamespacesOf = agent;
    // Files are opened through the agent's root, i.e. in the container's own mounts: a file opened
    // through the host's view of the overlay would show its host path in the workload's /proc.
    o.rootPrefix = fmt::format("/proc/{}/root", agent);
    o.joinCgroups = {(c->freezerCgroupDir() / "cgroup.procs").string(), (c->pidsCgroupDir() / "cgroup.procs").string()};
    // Lazy: the tree (and the agent answering the prober) runs before its memory is all in;
    // restoreTree returns once the page server has pushed the last page.
    bool resumed = false;
    o.lazy = ctx.mode == modes::kLazy;
    if (o.lazy)
      o.onResumed = [&] {
        releaseAgent();
        ctx.mark("resumed");
        resumed = true;
        rep.phasesMs["restore_to_resumed"] = msSince(t0);
      };
    auto r = native::restoreTree(ctx.imageDir, o);
    // The agent runs again either way: with the restored workload as its child, or without it.
    releaseAgent();
    if (!resumed) ctx.mark("resumed");
    if (!r.ok()) return r.error().context("native engine: restore into container " + c->id());
    rep.phasesMs.insert(r->phasesMs.begin(), r->phasesMs.end());
    rep.phasesMs["restore_total"] = msSince(t0);
    rep.engineFigures = {{"processes", r->processes},
                         {"threads", r->threads},
                         {"pages_restored", r->pagesRestored},
                         {"restored_root_pid", r->rootPid},
                         {"restored_into", "the container's own pid/mnt/net/ipc/uts namespaces and cgroups"}};
    if (o.lazy) {
      rep.engineFigures["lazy"] = r->lazy;
      // The controller adds restore_start_to_first_reply_ms (the prober's first reply).
      rep.engineFigures["lazy"]["restore_to_resumed_ms"] = rep.phasesMs["restore_to_resumed"];
      rep.engineFigures["lazy"]["restore_to_all_pages_ms"] = rep.phasesMs["restore_total"];
    }
    return rep;
  }

 private:
  // --engine-opt fresh_ns=1: the whole container (its init, the agent, and everything under it)
  // is dumped, and restored into new pid/mount/IPC/UTS namespaces built from the image
  // (RestoreOptions::freshNamespaces); the network namespace, which the runtime holds with the
  // veth the prober uses, is joined again.
  static bool freshNs(const CheckpointContext& ctx) {
    if (!ctx.options.contains("fresh_ns")) return false;
    auto& v = ctx.options["fresh_ns"];
    return v.is_string() ? (v.get<std::string>() == "1" || v.get<std::string>() == "true") : v.is_boolean() && v.get<bool>();
  }
  // A control connection (local port 7701) in any state but LISTEN and TIME_WAIT, from the
  // agent's network namespace's /proc/net/tcp.
  static bool agentHasOpenControlConnection(pid_t agent) {
    for (const char* f : {"tcp", "tcp6"}) {
      auto text = readFile(fmt::format("/proc/{}/net/{}", agent, f));
      if (!text.ok()) continue;
      std::istringstream in(*text);
      std::string line;
      std::getline(in, line);
      while (std::getline(in, line)) {
        std::istringstream ls(line);
        std::string slot, local, remote, state;
        ls >> slot >> local >> remote >> state;
        auto colon = local.rfind(':');
        if (colon == std::string::npos || std::stoul(local.substr(colon + 1), nullptr, 16) != 7701) continue;
        if (state != "0A" && state != "06") return true;
      }
    }
    return false;
  }
  Result<PhaseReport> checkpointWholeContainer(ContainerSandbox& c, const CheckpointContext& ctx) {
    if (ctx.mode != modes::kStopAndCopy && ctx.mode != modes::kLeaveRunning)
      return makeError("native engine: fresh_ns works with stop-and-copy and leave-running only", "",
                       kUnsupportedExitCode);
    releaseAgent();
    bool leave = ctx.mode == modes::kLeaveRunning;
    pid_t agent = c.initPid();
    PhaseReport rep;
    native::DumpOptions o;
    o.leaveRunning = leave;
    o.nsReference = agent;
    o.namespaceRoot = true;
    o.dropUdpQueues = true;  // the prober's pings queued while frozen: lost, as the prober counts them
    o.rootPrefix = c.rootDir().string();
    o.freezeCgroup = c.freezerCgroupDir().string();
    o.mark = [&](const std::string& e) {
      if (e == "frozen" || leave) ctx.mark(e);
    };
    Json before = native::describeNamespaces(agent);
    Json pidsInNs = Json::array();
    for (pid_t p : c.pids().valueOr({})) pidsInNs.push_back(innermostPid(p));
    // The agent closes a control connection a moment after crbench did: until then it is in
    // CLOSE_WAIT, which the dump refuses. Wait (bounded) for the agent's side to close.
    auto settle = Clock::now() + std::chrono::seconds(2);
    while (Clock::now() < settle && agentHasOpenControlConnection(agent))
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    auto t0 = Clock::now();
    auto r = native::dumpTree(agent, ctx.imageDir, o);
    if (!r.ok()) {
      ctx.mark("resumed");
      Error e = r.error().context(fmt::format("native engine: dump of container {} from its init {} (left running)",
                                              c.id(), agent));
      if (r.error().message.find("unsupported:") != std::string::npos) e.exitCode = kUnsupportedExitCode;
      return e;
    }
    rep.phasesMs.insert(r->phasesMs.begin(), r->phasesMs.end());
    rep.phasesMs["checkpoint_total"] = msSince(t0);
    rep.engineFigures = r->toJson();
    rep.engineFigures["checkpointed"] = "whole container";
    rep.engineFigures["workload_root_pid"] = 1;
    rep.engineFigures["namespaces"] = before;
    rep.engineFigures["pids_in_namespace"] = pidsInNs;
    rep.notes.push_back("checkpointed the whole container from its init (the agent) for a restore into fresh "
                        "namespaces");
    return rep;
  }
  Result<PhaseReport> restoreFreshNamespaces(ContainerSandbox& c, const CheckpointContext& ctx) {
    PhaseReport rep;
    auto t0 = Clock::now();
    // Leave-running: the container that ran on goes entirely (its namespaces die with its init).
    auto now = c.pids();
    if (now.ok() && !now->empty()) {
      for (pid_t p : *now) ::kill(p, SIGKILL);
      auto deadline = Clock::now() + std::chrono::seconds(5);
      while (c.pids().valueOr({}).size() > 0) {
        if (Clock::now() > deadline) return makeError("native engine: the container that ran on did not go away within 5 s");
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
      }
      rep.phasesMs["replace_running"] = msSince(t0);
    }
    auto netns = c.openNetns();
    if (!netns.ok()) return netns.error().context("native engine: restore into fresh namespaces");
    native::RestoreOptions o;
    o.freshNamespaces = true;
    o.rootfsDir = c.rootDir().string();
    o.freshNetnsFd = netns->get();
    o.joinCgroups = {(c.freezerCgroupDir() / "cgroup.procs").string(), (c.pidsCgroupDir() / "cgroup.procs").string()};
    auto r = native::restoreTree(ctx.imageDir, o);
    ctx.mark("resumed");
    if (!r.ok()) return r.error().context("native engine: restore of container " + c.id() + " into fresh namespaces");
    c.setInitPid(r->rootPid);
    rep.phasesMs.insert(r->phasesMs.begin(), r->phasesMs.end());
    rep.phasesMs["restore_total"] = msSince(t0);
    Json pidsInNs = Json::array();
    for (pid_t p : c.pids().valueOr({})) pidsInNs.push_back(innermostPid(p));
    rep.engineFigures = {{"processes", r->processes},
                         {"threads", r->threads},
                         {"pages_restored", r->pagesRestored},
                         {"restored_root_pid", 1},
                         {"restored_init_host_pid", r->rootPid},
                         {"namespaces", native::describeNamespaces(r->rootPid)},
                         {"pids_in_namespace", pidsInNs},
                         {"restored_into", "new pid/mnt/ipc/uts namespaces (mounts, host name recreated); the "
                                           "runtime's network namespace joined again"}};
    return rep;
  }
  // Mode incremental (issue #9): a full dump that leaves the workload running (into
  // <image>/base), the workload runs on for `incremental_delay_ms` (default 1000), then a
  // stop-and-copy dump that stores only the pages that changed (--parent base); the restore reads
  // the chain. Both dumps' figures are in the result; the downtime the prober sees covers both.
  Result<PhaseReport> checkpointIncremental(Sandbox& sandbox, const CheckpointContext& ctx) {
    double delayMs = 1000;
    if (ctx.options.contains("incremental_delay_ms")) {
      auto v = ctx.options["incremental_delay_ms"];
      try {
        delayMs = std::stod(v.is_string() ? v.get<std::string>() : v.dump());
      } catch (...) {
        return makeError("native engine: option incremental_delay_ms is not a number", "e.g. --engine-opt "
                         "incremental_delay_ms=1000");
      }
    }
    CheckpointContext base = ctx;
    base.mode = modes::kLeaveRunning;
    base.imageDir = ctx.imageDir / "base";
    base.mark = [](const std::string&) {};  // the controller's marks belong to the final dump
    if (auto st = makeDirs(base.imageDir, 0700); !st.ok()) return st.error();
    auto tb = Clock::now();
    // The base dump leaves the workload write-protected (async: it never waits for us) so the
    // incremental dump reads only the pages written since; dropped (unprotected) at the end.
    tracker_ = std::make_unique<native::MemoryTracker>();
    struct Drop {
      std::unique_ptr<native::MemoryTracker>& t;
      ~Drop() { t.reset(); }
    } drop{tracker_};
    auto b = checkpoint(sandbox, base);
    if (!b.ok()) return b.error().context("native engine: incremental mode's base dump");
    double baseMs = msSince(tb);
    std::this_thread::sleep_for(std::chrono::duration<double, std::milli>(delayMs));
    CheckpointContext fin = ctx;
    fin.mode = modes::kStopAndCopy;
    nextParent_ = base.imageDir;
    auto r = checkpoint(sandbox, fin);
    nextParent_.clear();
    if (!r.ok()) return r.error().context("native engine: incremental mode's incremental dump (the base was taken)");
    PhaseReport rep = std::move(*r);
    for (auto& [k, v] : b->phasesMs) rep.phasesMs["base_" + k] = v;
    rep.phasesMs["base_dump_total"] = baseMs;
    rep.engineFigures["base"] = b->engineFigures;
    rep.engineFigures["incremental_delay_ms"] = delayMs;
    rep.engineFigures["image_chain"] = {
        {"base_bytes", b->engineFigures.value("bytes_written", 0ull)},
        {"incremental_bytes", rep.engineFigures.value("bytes_written", 0ull)},
        {"method", rep.engineFigures["memory"]["incremental"].value("method", "")},
        {"tracker_attach_ms", tracker_->attachMs}};
    if (!tracker_->failure.empty()) rep.engineFigures["image_chain"]["tracking_failure"] = tracker_->failure;
    rep.notes.push_back(fmt::format("incremental: a full leave-running dump, {} ms of workload, then a stop-and-copy "
                                    "dump storing only changed pages; the restore reads both", delayMs));
    return rep;
  }
  std::filesystem::path nextParent_;
  std::unique_ptr<native::MemoryTracker> tracker_;
  // Inject wait4(pid, WNOHANG) into the held agent for each of its dead children, so their pids
  // are free and the agent never learns they died.
  void reapAgentZombies() {
    if (!agentHold_ || !agentHold_->procs.count(agent_)) return;
    for (pid_t ch : native::listChildren(agent_)) {
      auto stat = native::readStat(ch);
      if (!stat.ok() || (*stat)[3] != "Z") continue;
      pid_t ns = innermostPid(ch);
      if (ns <= 0) continue;
      auto inj = agentHold_->injector(agent_, agent_);
      (void)inj.call(SYS_wait4, uint64_t(ns), 0, WNOHANG | __WALL, 0);
      agentHold_->noteStray(inj);
    }
  }
  void releaseAgent() {
    if (!agentHold_) return;
    agentHold_->release();
    agentHold_.reset();
    agent_ = 0;
  }
  std::unique_ptr<native::Seizure> agentHold_;
  pid_t agent_ = 0;
};

}  // namespace
CRB_REGISTER_ENGINE(NativeEngine, "native");
}  // namespace crb
