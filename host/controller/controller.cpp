#include "controller/controller.hpp"

#include <sys/resource.h>
#include <sys/stat.h>

#include <algorithm>
#include <thread>

#include "agent/agent_client.hpp"
#include "core/clock.hpp"
#include "core/fsutil.hpp"
#include "core/log.hpp"
#include "core/paths.hpp"
#include "engine/engine.hpp"
#include "fidelity/fidelity.hpp"
#include "fidelity/rest_of_system.hpp"
#include "prober/prober.hpp"
#include "controller/workload_stats.hpp"
#include "results/results.hpp"
#include "runtime/sandbox.hpp"
#include "scenario/scenario.hpp"

namespace crb {

namespace {

struct Usage {
  double threadCpu = 0, childrenCpu = 0;
  long childrenMaxRssKiB = 0;
};
double tvSeconds(const timeval& t) { return static_cast<double>(t.tv_sec) + static_cast<double>(t.tv_usec) / 1e6; }
Usage usageNow() {
  Usage u;
  rusage r{};
  ::getrusage(RUSAGE_THREAD, &r);
  u.threadCpu = tvSeconds(r.ru_utime) + tvSeconds(r.ru_stime);
  ::getrusage(RUSAGE_CHILDREN, &r);
  u.childrenCpu = tvSeconds(r.ru_utime) + tvSeconds(r.ru_stime);
  u.childrenMaxRssKiB = r.ru_maxrss;
  return u;
}

Json phaseJson(const PhaseReport& p, const Usage& before, const Usage& after, double wallMs) {
  Json j;
  j["wall_ms"] = wallMs;
  j["phases_ms"] = p.phasesMs;
  j["engine_figures"] = p.engineFigures;
  j["engine_reported"] = {{"cpu_s", p.engineCpuSeconds}, {"peak_rss_kib", p.enginePeakRssKiB}};
  // Measured by crbench around the call: CPU of the calling thread (engines that run in-process)
  // and of child processes reaped during it (criu, helpers).
  j["measured"] = {{"thread_cpu_s", after.threadCpu - before.threadCpu},
                   {"children_cpu_s", after.childrenCpu - before.childrenCpu},
                   {"children_max_rss_kib", after.childrenMaxRssKiB}};
  j["notes"] = p.notes;
  return j;
}

Json errorJson(const Error& e, const std::string& phase) {
  Json j{{"message", e.message}, {"phase", phase}};
  if (!e.hint.empty()) j["hint"] = e.hint;
  return j;
}

CheckRun runCheck(Sandbox& sb, const ScenarioCheck& c) {
  CheckRun r;
  int ms = int(c.timeoutSeconds * 1000);
  auto reply = agentCall(sb, Json{{"op", "exec"}, {"argv", c.argv}, {"timeout_ms", ms}},
                         std::chrono::milliseconds(ms + 5000));
  if (!reply.ok()) {
    r.error = reply.error().message;
    return r;
  }
  if (!reply->value("ok", false)) {
    r.error = reply->value("error", std::string("agent refused the exec request"));
    return r;
  }
  r.ran = true;
  r.exitCode = reply->contains("exit") ? (*reply)["exit"] : Json(nullptr);
  r.out = reply->value("stdout", std::string());
  return r;
}

// Digest plus scenario checks: the state fidelity compares.
struct StateSample {
  Json digest;  // null when it could not be taken
  std::string digestError;
  std::vector<CheckRun> checks;
};

StateSample sampleState(Sandbox& sb, const Scenario& sc) {
  StateSample s;
  auto d = agentCall(sb, Json{{"op", "digest"}}, std::chrono::seconds(20));
  if (!d.ok())
    s.digestError = d.error().message;
  else if (!d->value("ok", false))
    s.digestError = d->value("error", std::string("agent refused the digest request"));
  else
    s.digest = *d;
  for (auto& c : sc.checks) s.checks.push_back(runCheck(sb, c));
  return s;
}

Json checksJson(const Scenario& sc, const StateSample& s) {
  Json j = Json::object();
  for (size_t i = 0; i < sc.checks.size() && i < s.checks.size(); i++) j[sc.checks[i].name] = s.checks[i].toJson();
  return j;
}

bool contains(const std::vector<std::string>& v, const std::string& s) {
  return std::find(v.begin(), v.end(), s) != v.end();
}

// Engine, runtime and mode agree? Returns the mode to use, or an error for "unsupported".
Result<std::string> pickMode(const Capabilities& caps, RuntimeKind kind, const std::string& engine,
                             const std::string& requested) {
  if (!caps.available()) return makeError(fmt::format("engine {} cannot run on this host: {}", engine, caps.unavailable));
  if (!caps.supportsRuntime(kind))
    return makeError(fmt::format("engine {} does not work on the {} runtime", engine, toString(kind)),
                     "pick another --runtime or --engine");
  if (requested.empty()) {
    if (caps.modes.empty())
      return makeError(fmt::format("engine {} has no mode that works on this host", engine));
    return caps.modes.front();
  }
  if (contains(caps.modes, requested)) return requested;
  auto it = caps.unsupportedModes.find(requested);
  if (it != caps.unsupportedModes.end())
    return makeError(fmt::format("engine {} cannot do mode '{}': {}", engine, requested, it->second));
  std::string known;
  for (auto& m : caps.modes) known += (known.empty() ? "" : ", ") + m;
  return makeError(fmt::format("engine {} has no mode '{}'", engine, requested), "its modes here: " + known);
}

}  // namespace

Status validateRunSpec(const RunSpec& spec) {
  auto usage = [](Error e) {
    e.exitCode = 2;
    return e;
  };
  auto sc = loadScenario(spec.scenario, spec.params);
  if (!sc.ok()) return usage(sc.error());
  auto kind = parseRuntimeKind(spec.runtime);
  if (!kind.ok()) return usage(kind.error());
  if (!contains(sc->runtimes, spec.runtime))
    return usage(makeError(fmt::format("scenario {} does not run on the {} runtime", sc->name, spec.runtime)));
  auto engine = EngineRegistry::instance().create(spec.engine);
  if (!engine) {
    std::string names;
    for (auto& n : EngineRegistry::instance().names()) names += (names.empty() ? "" : ", ") + n;
    return usage(makeError(fmt::format("unknown engine '{}'", spec.engine), "engines built in: " + names));
  }
  auto caps = engine->capabilities();
  // An engine that exists but cannot run here, or lacks the mode, is a usage error only when the
  // mode is unknown to it altogether; a host limitation is recorded as an "unsupported" run.
  if (!spec.mode.empty() && !contains(caps.modes, spec.mode) && !caps.unsupportedModes.count(spec.mode)) {
    std::string known;
    for (auto& m : caps.modes) known += (known.empty() ? "" : ", ") + m;
    return usage(makeError(fmt::format("engine {} has no mode '{}'", spec.engine, spec.mode),
                           "its modes: " + (known.empty() ? std::string("none here") : known)));
  }
  if (spec.writeRecord) {
    auto dir = spec.resultsDir.empty() ? defaultResultsDir() : spec.resultsDir;
    auto st = checkWritableDir(dir);
    if (!st.ok()) return usage(makeError(st.error().message, "pass a writable directory with --results DIR"));
  }
  return success();
}

RunOutcome runOnce(const RunSpec& spec) {
  RunOutcome out;
  out.runId = spec.runId.empty() ? newRunId(fs::path(spec.scenario).stem().string(), spec.runtime, spec.engine) : spec.runId;
  Json rec = newRunRecord(out.runId);
  auto progress = [&](const std::string& s) {
    spdlog::info("{}: {}", out.runId, s);
    if (spec.progress) spec.progress(s);
  };
  rec["runtime"] = spec.runtime;
  rec["engine"] = spec.engine;
  rec["mode"] = spec.mode.empty() ? Json(nullptr) : Json(spec.mode);
  rec["engine_options"] = spec.engineOptions;
  rec["scenario"] = {{"name", spec.scenario}, {"params_overrides", spec.params}};
  rec["timings_ms"] = Json::object();
  rec["fidelity"] = {{"verdict", "none"}, {"checks", Json::array()}};
  rec["probe"] = nullptr;
  rec["downtime_ms"] = nullptr;
  rec["sandbox"] = nullptr;
  rec["image"] = nullptr;
  rec["engine_report"] = Json::object();
  rec["environment"] = environmentFacts();

  std::unique_ptr<Sandbox> sandbox;
  std::unique_ptr<Prober> prober;
  fs::path imageDir;
  auto finish = [&](const std::string& status, const std::optional<Error>& err, const std::string& phase) {
    if (prober) prober->stop();
    if (sandbox) {
      progress("tearing down the sandbox");
      auto t = Clock::now();
      auto st = sandbox->stop();
      rec["timings_ms"]["teardown"] = msSince(t);
      if (!st.ok()) rec["teardown_error"] = st.error().message;
      sandbox.reset();
    }
    if (!imageDir.empty() && !spec.keepImage) {
      std::error_code ec;
      fs::remove_all(imageDir, ec);
      if (rec["image"].is_object()) rec["image"]["kept"] = false;
    }
    rec["status"] = status;
    if (err) rec["error"] = errorJson(*err, phase);
    // A run that did not finish while a stop was asked for (its failure may be the stop's doing)
    // is marked, so compare and the report do not count it as the engine's failure, nor as a figure.
    if (status != "ok" && spec.cancelled && spec.cancelled()) rec["interrupted"] = true;
    if (status == "ok" && rec.contains("teardown_error")) {
      rec["status"] = "failed";
      rec["error"] = Json{{"message", "the sandbox was not torn down cleanly: " + rec["teardown_error"].get<std::string>()},
                          {"phase", "teardown"}};
    }
    noteRunEnd(rec);
    rec["finished_at"] = isoTimeNow();
    out.status = rec["status"];
    out.record = rec;
    if (spec.writeRecord) {
      auto dir = spec.resultsDir.empty() ? defaultResultsDir() : spec.resultsDir;
      auto p = writeRunRecord(rec, dir);
      if (p.ok())
        out.recordPath = *p;
      else
        out.writeError = p.error().text();
    }
    return out;
  };

  auto stopRequested = [&] { return spec.cancelled && spec.cancelled(); };
  auto interrupted = [&](const std::string& phase) {
    return finish("failed", makeError("interrupted by a signal before the run finished; the sandbox was torn down"), phase);
  };
  // Sleep that ends early when the run is cancelled; false when it was.
  auto waitMs = [&](int ms) {
    auto until = Clock::now() + std::chrono::milliseconds(ms);
    while (Clock::now() < until) {
      if (stopRequested()) return false;
      std::this_thread::sleep_for(std::chrono::milliseconds(std::min(ms, 20)));
    }
    return !stopRequested();
  };

  try {
    // 1. What to run, and can this engine do it here?
    auto sc = loadScenario(spec.scenario, spec.params);
    if (!sc.ok()) return finish("failed", sc.error(), "scenario");
    rec["scenario"] = {{"name", sc->name}, {"file", sc->file.string()}, {"params", sc->params},
                       {"params_overrides", spec.params}, {"description", sc->description}};
    auto kind = parseRuntimeKind(spec.runtime);
    if (!kind.ok()) return finish("failed", kind.error(), "runtime");
    if (!contains(sc->runtimes, spec.runtime))
      return finish("unsupported", makeError(fmt::format("scenario {} does not run on the {} runtime", sc->name, spec.runtime)),
                    "capabilities");
    auto engine = EngineRegistry::instance().create(spec.engine);
    if (!engine) return finish("failed", makeError(fmt::format("unknown engine '{}'", spec.engine)), "engine");
    Capabilities caps = engine->capabilities();
    rec["environment"]["tool_versions"]["engine"] = caps.versions;
    auto mode = pickMode(caps, *kind, spec.engine, spec.mode);
    if (!mode.ok()) return finish("unsupported", mode.error(), "capabilities");
    rec["mode"] = *mode;

    if (stopRequested()) return interrupted("capabilities");
    // 2. Sandbox and prober.
    progress(fmt::format("starting the {} sandbox", spec.runtime));
    SandboxOptions so;
    so.verbose = spec.verbose;
    auto modeFlavor = caps.modeRuntimeFlavors.find(*mode);
    so.flavor = modeFlavor != caps.modeRuntimeFlavors.end() ? modeFlavor->second : caps.runtimeFlavor;
    auto t0 = Clock::now();
    auto sb = startSandbox(*kind, *sc, so);
    rec["timings_ms"]["sandbox_start_total"] = msSince(t0);
    if (!sb.ok()) return finish("failed", sb.error(), "sandbox-start");
    sandbox = std::move(sb).value();
    rec["sandbox"] = sandbox->describe();
    if (stopRequested()) return interrupted("sandbox-start");
    auto agentUp = waitForAgent(*sandbox, std::chrono::seconds(30));
    if (!agentUp.ok()) return finish("failed", agentUp.error(), "agent");
    auto sock = sandbox->openProbeSocket();
    if (!sock.ok()) return finish("failed", sock.error(), "prober");
    prober = std::make_unique<Prober>(std::move(sock).value(), ProberOptions{spec.probeRateHz, 200});
    if (auto st = prober->start(); !st.ok()) return finish("failed", st.error(), "prober");
    if (!prober->waitForReplies(10, 0, 5000))
      return finish("failed", makeError("the agent does not answer UDP probes on port 7700"), "prober");
    int warmupMs = spec.warmupMs;
    if (spec.warmupPastStartDelays) {
      double lastDelay = 0;
      for (auto& prog : sc->programs) lastDelay = std::max(lastDelay, prog.startDelaySeconds);
      if (lastDelay > 0) warmupMs = std::max(warmupMs, int(2000 + lastDelay * 1000));
    }
    rec["timings_ms"]["warmup"] = warmupMs;
    if (!waitMs(warmupMs)) return interrupted("warm-up");
    if (sc->ready) {
      // A workload still filling its memory would be checkpointed smaller than its size says
      // (seen: a 1 GiB memory workload under TCG took longer than the warm-up to fill).
      progress("waiting for the workload to be ready");
      auto tr = Clock::now();
      auto deadline = tr + std::chrono::milliseconds(int(sc->ready->timeoutSeconds * 1000));
      ScenarioCheck probe = *sc->ready;
      probe.timeoutSeconds = std::max(1.0, std::min(probe.timeoutSeconds, 30.0));
      CheckRun last;
      for (;;) {
        last = runCheck(*sandbox, probe);
        if (last.ran && last.exitCode == Json(0)) break;
        if (Clock::now() > deadline)
        {
          std::string cmd;
          for (auto& a : sc->ready->argv) cmd += (cmd.empty() ? "" : " ") + a;
          std::string why = last.ran ? last.out : last.error;
          while (!why.empty() && (why.back() == '\n' || why.back() == ' ')) why.pop_back();
          return finish("failed",
                        makeError(fmt::format("the workload was not ready within {} s ([ready] {}): {}",
                                              sc->ready->timeoutSeconds, cmd, why)),
                        "ready");
        }
        if (!waitMs(200)) return interrupted("ready");
      }
      rec["timings_ms"]["ready_wait"] = msSince(tr);
    }
    if (spec.dirtyWindowMs > 0) progress(fmt::format("measuring the workload's dirty rate ({} ms)", spec.dirtyWindowMs));
    rec["workload"]["dirty_rate"] = measureDirtyRate(*sandbox, spec.dirtyWindowMs);

    // Rest-of-system checks (host/fidelity/rest_of_system.hpp) start before the "before" digest so
    // the outside peer's connection is part of the state both digests see.
    RestOfSystem rest(*sandbox, sc->restOfSystem);
    if (rest.any()) {
      progress("starting the rest-of-system checks (outside TCP peer, clock, bus name)");
      rest.begin();
    }

    // 3. State before.
    progress("taking the state digest before the checkpoint");
    // Marked: the digest keeps the agent busy (hashing the workload's memory), so the noise floor
    // below is taken before it.
    int64_t digestStart = prober->mark("state-before-start");
    StateSample before = sampleState(*sandbox, *sc);
    rec["digests"] = {{"before", before.digest.is_null() ? Json(before.digestError) : before.digest}};
    rec["scenario_checks"] = {{"before", checksJson(*sc, before)}};
    rec["workload"]["memory"] = workloadMemory(before.digest);

    if (stopRequested()) return interrupted("state-before");
    // 4. Checkpoint (every agent connection is closed: agentCall closes its own).
    imageDir = (spec.imageRoot.empty() ? fs::path("/var/tmp/crbench/images") : spec.imageRoot) / out.runId;
    if (auto st = makeDirs(imageDir.parent_path(), 0700); !st.ok()) return finish("failed", st.error(), "image-dir");
    if (::mkdir(imageDir.c_str(), 0700) != 0) return finish("failed", sysError("create " + imageDir.string(), errno), "image-dir");
    CheckpointContext ctx;
    ctx.mode = *mode;
    ctx.imageDir = imageDir;
    ctx.options = Json(spec.engineOptions);
    Prober* pr = prober.get();
    ctx.mark = [pr](const std::string& e) { pr->mark(e); };
    rest.beforeCheckpoint();
    progress(fmt::format("checkpoint with {} ({})", spec.engine, *mode));
    auto u0 = usageNow();
    auto tc = Clock::now();
    rest.checkpointStarting();
    int64_t ckStart = prober->mark("checkpoint-start");
    auto ck = engine->checkpoint(*sandbox, ctx);
    int64_t ckEnd = prober->mark("checkpoint-end");
    double ckMs = msSince(tc);
    auto u1 = usageNow();
    rec["timings_ms"]["checkpoint"] = ckMs;
    if (!ck.ok()) {
      rec["engine_report"]["checkpoint"] = {{"wall_ms", ckMs}, {"error", ck.error().message}};
      // Record what the prober saw around the failed checkpoint too.
      prober->waitForReplies(1, ckEnd, 2000);
      prober->stop();
      auto tr = prober->trace();
      rec["probe"] = {{"stats", Json::object()}, {"trace", tr.toJson()}};
      auto after = tr.firstReplyAfter(ckEnd);
      rec["workload_after_failed_checkpoint"] =
          after ? "running: probes answered again" : "not answering probes after the failed checkpoint";
      // An engine that refuses the workload (an object it cannot save) says so with
      // makeUnsupported(): that is `unsupported` data, not a failure of the engine.
      return finish(ck.error().exitCode == kUnsupportedExitCode ? "unsupported" : "failed", ck.error(), "checkpoint");
    }
    rec["engine_report"]["checkpoint"] = phaseJson(*ck, u0, u1, ckMs);
    // A workload that runs on after its checkpoint (the engine marked it resumed) answers again
    // before the restore begins: wait for that answer (<= 2 s, normally ~1 ms at 1 kHz) so the
    // checkpoint's own gap is closed and not merged with the restore's (checkpoint_downtime_ms).
    {
      bool resumed = false;
      for (auto& m : prober->trace().marks) resumed = resumed || (m.name == "resumed" && m.ns >= ckStart && m.ns <= ckEnd);
      if (resumed) prober->waitForReplies(1, ckEnd, 2000);
    }
    DiskUsage du = diskUsage(imageDir);
    rec["image"] = {{"dir", imageDir.string()}, {"apparent_bytes", du.apparentBytes},
                    {"allocated_bytes", du.allocatedBytes}, {"files", du.files}, {"kept", spec.keepImage}};

    if (stopRequested()) return interrupted("checkpoint");
    // 5. Restore.
    progress("restore");
    auto u2 = usageNow();
    auto tr0 = Clock::now();
    int64_t rsStart = prober->mark("restore-start");
    auto rs = engine->restore(*sandbox, ctx);
    int64_t rsEnd = prober->mark("restore-end");
    rest.restoreFinished();
    double rsMs = msSince(tr0);
    auto u3 = usageNow();
    rec["timings_ms"]["restore"] = rsMs;
    if (!rs.ok()) {
      rec["engine_report"]["restore"] = {{"wall_ms", rsMs}, {"error", rs.error().message}};
      prober->stop();
      rec["probe"] = {{"stats", Json::object()}, {"trace", prober->trace().toJson()}};
      return finish("failed", rs.error(), "restore");
    }
    rec["engine_report"]["restore"] = phaseJson(*rs, u2, u3, rsMs);
    bool replied = prober->waitForReplies(1, rsEnd, spec.firstReplyTimeoutMs);
    if (!waitMs(spec.settleMs)) return interrupted("restore");

    // 6. State after, then the measurements.
    progress("taking the state digest after the restore");
    StateSample after = sampleState(*sandbox, *sc);
    rec["digests"]["after"] = after.digest.is_null() ? Json(after.digestError) : after.digest;
    rec["scenario_checks"]["after"] = checksJson(*sc, after);
    prober->stop();
    ProbeTrace trace = prober->trace();
    auto first = trace.firstReplyAfter(rsEnd);
    rec["timings_ms"]["first_reply_after_restore"] =
        first ? Json(static_cast<double>(*first - rsEnd) / 1e6) : Json(nullptr);
    // From the restore's start: comparable across modes where the workload answers before the
    // restore returns (a lazy restore returns once every page is in, long after the first reply).
    auto firstFromStart = trace.firstReplyAfter(rsStart);
    Json fromStart = firstFromStart ? Json(static_cast<double>(*firstFromStart - rsStart) / 1e6) : Json(nullptr);
    rec["timings_ms"]["restore_start_to_first_reply"] = fromStart;
    if (auto& figs = rec["engine_report"]["restore"]["engine_figures"]; figs.is_object() && figs.contains("lazy"))
      figs["lazy"]["restore_start_to_first_reply_ms"] = fromStart;
    ReplyGap gap = trace.longestGap(ckStart, rsEnd);
    rec["downtime_ms"] = gap.valid && gap.resumed ? Json(static_cast<double>(gap.gapNs) / 1e6) : Json(nullptr);
    rec["downtime"] = {{"definition", "longest gap between consecutive probe replies overlapping "
                                      "[checkpoint-start, restore-end]"},
                       {"window_ns", {ckStart - trace.startNs, rsEnd - trace.startNs}},
                       {"gap_ms", static_cast<double>(gap.gapNs) / 1e6},
                       {"from_ns", gap.fromNs - trace.startNs},
                       {"to_ns", gap.toNs - trace.startNs},
                       {"resumed", gap.resumed},
                       {"valid", gap.valid}};
    // The checkpoint's own outage: for modes where the workload runs on after the checkpoint
    // (leave-running, pre-copy, background snapshots) this is the gap the checkpoint caused, which
    // the restore's (the rollback's) gap would otherwise hide; for stop-and-copy it equals downtime_ms.
    ReplyGap ckGap = trace.longestGap(ckStart, ckEnd);
    rec["checkpoint_downtime_ms"] =
        ckGap.valid && ckGap.resumed ? Json(static_cast<double>(ckGap.gapNs) / 1e6) : Json(nullptr);
    // The noise floor of checkpoint_downtime_ms: the longest gap between replies in a window as
    // long as the checkpoint (or as much of it as the trace has) just before the state digest
    // began, when neither an engine nor the digest was at work. A checkpoint gap near this figure
    // is the machine's, not the engine's.
    Json baseline = nullptr;
    {
      int64_t from = std::max(trace.startNs, digestStart - (ckEnd - ckStart));
      std::vector<int64_t> rs;
      for (int64_t r : trace.replyNs)
        if (r >= from && r < digestStart) rs.push_back(r);
      std::sort(rs.begin(), rs.end());
      if (rs.size() >= 2) {
        int64_t longest = 0;
        for (size_t i = 1; i < rs.size(); i++) longest = std::max(longest, rs[i] - rs[i - 1]);
        baseline = {{"gap_ms", static_cast<double>(longest) / 1e6},
                    {"window_ms", static_cast<double>(digestStart - from) / 1e6},
                    {"replies", rs.size()}};
      }
    }
    auto whole = trace.stats();
    auto pre = trace.stats(INT64_MIN, ckStart);
    rec["probe"] = {{"rate_hz", spec.probeRateHz},
                    {"stats", {{"sent", whole.sent}, {"replied", whole.replied}, {"lost", whole.lost},
                               {"loss_ratio", whole.lossRatio}}},
                    {"rtt_before_checkpoint_ms", {{"p50", pre.rttP50Ms}, {"p90", pre.rttP90Ms}, {"p99", pre.rttP99Ms},
                                                  {"max", pre.rttMaxMs}}},
                    {"longest_gap_before_checkpoint", baseline},
                    {"trace", trace.toJson()}};

    std::vector<FidelityCheck> checks;
    if (before.digest.is_null() || after.digest.is_null()) {
      checks.push_back({"state-digest", Verdict::Fail,
                        before.digest.is_null() ? "no digest before the checkpoint: " + before.digestError
                                                : "no digest after the restore: " + after.digestError});
    } else {
      checks = compareDigests(before.digest, after.digest);
    }
    for (size_t i = 0; i < sc->checks.size(); i++)
      checks.push_back(judgeScenarioCheck(sc->checks[i], before.checks[i], after.checks[i]));
    for (auto& c : rest.finish()) checks.push_back(std::move(c));
    rec["fidelity"] = {{"verdict", overallVerdict(checks)}, {"checks", toJson(checks)}};

    if (!replied)
      return finish("failed",
                    makeError(fmt::format("no probe reply within {} ms after the restore", spec.firstReplyTimeoutMs)),
                    "restore");
    return finish("ok", std::nullopt, "");
  } catch (const std::exception& e) {
    // Nothing may escape a library call: record it as a failed run.
    return finish("failed", makeError(std::string("internal error: ") + e.what()), "internal");
  }
}

}  // namespace crb
