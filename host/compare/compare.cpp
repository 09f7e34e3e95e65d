#include "compare/compare.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <set>

#include "report/runs.hpp"
#include "report/stats.hpp"
#include "results/results.hpp"

namespace crb {
namespace {

bool has(const std::vector<std::string>& v, const std::string& s) { return std::find(v.begin(), v.end(), s) != v.end(); }

std::string join(const std::vector<std::string>& v) {
  std::string o;
  for (auto& s : v) o += (o.empty() ? "" : ", ") + s;
  return o;
}

Error usage(std::string msg, std::string hint) { return makeError(std::move(msg), std::move(hint), 2); }

}  // namespace

std::vector<EngineInfo> registeredEngines(const std::vector<std::string>& only, const std::vector<std::string>& runtimes) {
  std::vector<EngineInfo> out;
  for (auto& n : EngineRegistry::instance().names()) {
    if (!only.empty() && !has(only, n)) {
      // Named (so a typo is still told from a real engine) but not probed: planMatrix selects
      // only the engines asked for, so these never reach a combination.
      out.push_back({n, Capabilities{}});
      continue;
    }
    auto e = EngineRegistry::instance().create(n);
    if (!e) continue;
    if (auto fixed = e->staticRuntimes(); !fixed.empty() && !runtimes.empty()) {
      bool wanted = false;
      for (auto k : fixed) wanted |= has(runtimes, toString(k));
      if (!wanted) {
        // planMatrix needs only the runtimes to leave it out (or to say it does not work there).
        Capabilities c;
        c.runtimes = fixed;
        c.unavailable = "not probed: none of its runtimes was asked for";
        out.push_back({n, c});
        continue;
      }
    }
    out.push_back({n, e->capabilities()});
  }
  return out;
}

Result<std::vector<Combination>> planMatrix(const CompareRequest& req, const std::vector<EngineInfo>& engines,
                                            const std::vector<std::string>& scenarioRuntimes) {
  if (req.repeats <= 0)
    return usage(fmt::format("--repeats {} is not a positive number of runs", req.repeats), "use --repeats 1 or more (default 5)");
  std::vector<std::string> known;
  for (auto& e : engines) known.push_back(e.name);
  for (auto& e : req.engines)
    if (!has(known, e)) return usage(fmt::format("unknown engine '{}'", e), "engines built into this crbench: " + join(known));
  for (auto& r : req.runtimes)
    if (r != "container" && r != "vm") return usage(fmt::format("unknown runtime '{}'", r), "runtimes: container, vm");
  std::vector<const EngineInfo*> selected;
  for (auto& e : engines)
    if (req.engines.empty() || has(req.engines, e.name)) selected.push_back(&e);
  auto knowsMode = [](const EngineInfo& e, const std::string& m) {
    return has(e.caps.modes, m) || e.caps.unsupportedModes.count(m);
  };
  for (auto& m : req.modes) {
    bool anyone = false;
    std::set<std::string> all;
    for (auto* e : selected) {
      anyone |= knowsMode(*e, m);
      for (auto& x : e->caps.modes) all.insert(x);
      for (auto& [x, why] : e->caps.unsupportedModes) all.insert(x);
    }
    if (!anyone)
      return usage(fmt::format("no selected engine has mode '{}'", m),
                   "modes of the selected engines: " + join(std::vector<std::string>(all.begin(), all.end())));
    if (!req.engines.empty())
      for (auto* e : selected)
        if (e->caps.available() && !knowsMode(*e, m)) {
          std::vector<std::string> its = e->caps.modes;
          for (auto& [x, why] : e->caps.unsupportedModes) its.push_back(x + " (not here)");
          return usage(fmt::format("engine {} has no mode '{}'", e->name, m),
                       "its modes: " + (its.empty() ? std::string("none") : join(its)) + "; drop it from --engines or --modes");
        }
  }
  std::vector<std::string> runtimes = req.runtimes.empty() ? std::vector<std::string>{"container", "vm"} : req.runtimes;
  std::vector<Combination> out;
  for (auto* e : selected) {
    for (auto& rt : runtimes) {
      auto kind = parseRuntimeKind(rt);
      if (!e->caps.supportsRuntime(*kind)) {
        // Not a combination at all (criu has no VM side) unless the user asked for exactly it.
        if (!req.engines.empty() && !req.runtimes.empty())
          out.push_back({rt, e->name, "-", "unsupported", fmt::format("engine {} does not work on the {} runtime", e->name, rt)});
        continue;
      }
      if (!has(scenarioRuntimes, rt)) {
        out.push_back({rt, e->name, "-", "unsupported", fmt::format("scenario {} does not run on the {} runtime", req.scenario, rt)});
        continue;
      }
      if (!e->caps.available()) {
        out.push_back({rt, e->name, "-", "unavailable", e->caps.unavailable});
        continue;
      }
      size_t before = out.size();
      for (auto& m : e->caps.modes)
        if (req.modes.empty() || has(req.modes, m)) out.push_back({rt, e->name, m, "run", ""});
      if (req.quick && req.modes.empty() && out.size() - before > 1) {
        // --quick: one mode per engine, stop-and-copy when it has it.
        auto it = std::find_if(out.begin() + long(before), out.end(), [](auto& c) { return c.mode == modes::kStopAndCopy; });
        Combination keep = it != out.end() ? *it : out[before];
        out.resize(before);
        out.push_back(keep);
      }
      // --quick leaves out refused modes, but an engine with no mode at all here still gets its rows:
      // silently dropping it would hide that it cannot run.
      if (!req.quick || out.size() == before)
        for (auto& [m, why] : e->caps.unsupportedModes)
          if ((req.modes.empty() || has(req.modes, m)) && !has(e->caps.modes, m))
            out.push_back({rt, e->name, m, "unsupported", why});
    }
  }
  if (out.empty())
    return usage(fmt::format("no runtime × engine × mode combination matches for scenario {}", req.scenario),
                 "check --engines/--runtimes/--modes (crbench version lists the engines)");
  return out;
}

std::vector<Slot> schedule(const std::vector<Combination>& combos, int repeats, bool warmup) {
  std::vector<Slot> s;
  for (int r = warmup ? 0 : 1; r <= repeats; ++r)
    for (size_t i = 0; i < combos.size(); ++i)
      if (combos[i].status == "run") s.push_back({i, r, r == 0});
  return s;
}

CompareResult runCompare(const CompareRequest& req, const std::vector<Combination>& combos, const RunFunction& run,
                         const std::function<void(const std::string&)>& progress,
                         const std::function<void(const Json&)>& onRecord) {
  CompareResult res;
  std::string compareId = newRunId(req.scenario, "compare", "all");
  auto slots = schedule(combos, req.repeats, req.warmup);
  for (size_t i = 0; i < combos.size(); ++i)
    if (combos[i].status != "run") slots.push_back({i, 1, false, true});
  std::map<size_t, std::vector<size_t>> recordsOf;  // combination -> indices into res.records
  size_t done = 0;
  size_t notRun = 0;
  for (auto& slot : slots) {
    // Planned refusals start nothing and are still recorded: they are data.
    if (!slot.refused && req.cancelled && req.cancelled()) {
      ++notRun;
      continue;
    }
    const Combination& c = combos[slot.combo];
    ++done;
    if (progress && !slot.refused)
      progress(fmt::format("[{}/{}] {} {}", done, slots.size(), c.key(),
                           slot.warmup ? std::string("warm-up") : fmt::format("repeat {}/{}", slot.repeat, req.repeats)));
    Json rec = run(c, slot);
    rec["compare"] = {{"id", compareId}, {"repeat", slot.repeat}, {"warmup", slot.warmup}, {"planned", c.status}};
    recordsOf[slot.combo].push_back(res.records.size());
    res.records.push_back(std::move(rec));
    if (onRecord) onRecord(res.records.back());
    if (progress && !slot.refused) {
      RunView v = viewRun(res.records.back());
      progress(v.status == "ok" ? fmt::format("    ok: downtime {} ms, fidelity {}/{}",
                                              v.downtimeMs ? fmt::format("{:.1f}", *v.downtimeMs) : "n/a",
                                              v.fidelityPassed(), v.fidelityTotal())
                                : fmt::format("    {}: {}", v.status, v.error));
    }
  }
  Json rows = Json::array();
  for (size_t i = 0; i < combos.size(); ++i) {
    const Combination& c = combos[i];
    Json row = {{"key", c.key()}, {"runtime", c.runtime}, {"engine", c.engine}, {"mode", c.mode},
                {"planned", c.status}, {"reason", c.reason}};
    std::vector<RunView> views;
    Json ids = Json::array();
    for (size_t idx : recordsOf[i]) {
      views.push_back(viewRun(res.records[idx]));
      ids.push_back(views.back().runId);
    }
    row["run_ids"] = ids;
    size_t ok = 0, failed = 0, refused = 0, passed = 0, total = 0, cut = 0;
    std::string firstError;
    Json metrics = Json::object();
    for (auto& m : reportMetrics()) {
      std::vector<double> s;
      for (auto& v : views)
        if (!v.warmup && v.status == "ok")
          if (auto x = m.get(v)) s.push_back(*x);
      if (s.empty()) continue;
      Summary sum = summarize(s);
      Json mj = {{"median", sum.median}, {"min", sum.min}, {"max", sum.max}, {"n", sum.n}, {"samples", s}};
      if (sum.ci95) mj["ci95"] = {sum.ci95->low, sum.ci95->high};
      metrics[m.id] = mj;
    }
    for (size_t k = 0; k < views.size(); ++k) {
      const RunView& v = views[k];
      if (v.warmup || c.status != "run") continue;
      if (res.records[recordsOf[i][k]].value("interrupted", false)) {
        ++cut;  // stopped by a signal: neither a figure nor the engine's failure
        continue;
      }
      if (v.status == "ok") {
        ++ok;
        passed += size_t(v.fidelityPassed());
        total += size_t(v.fidelityTotal());
      } else {
        // A run the engine refused (status unsupported: an object it cannot save) is data like
        // a planned refusal; it is not counted as a failure.
        ++(v.status == "unsupported" ? refused : failed);
        if (firstError.empty()) firstError = v.error;
      }
    }
    row["metrics"] = metrics;
    row["n"] = ok;
    row["failed"] = failed;
    if (refused) row["refused"] = refused;
    if (cut) row["interrupted"] = cut;
    row["fidelity"] = {{"passed", passed}, {"total", total}};
    if (c.status != "run")
      row["status"] = c.status;
    else if (ok == 0 && !failed && !refused && (cut || notRun))
      row["status"] = "interrupted";  // never finished a run before the compare was stopped
    else if (ok == 0)
      row["status"] = failed ? "failed" : "unsupported";
    else
      row["status"] = failed || refused ? "partial" : "ok";
    if (c.status == "run" && (failed || refused)) row["reason"] = firstError;
    rows.push_back(row);
  }
  res.summary = {{"schema", "crbench-compare"},
                 {"schema_version", 1},
                 {"id", compareId},
                 {"scenario", req.scenario},
                 {"params", req.params},
                 {"repeats", req.repeats},
                 {"warmup", req.warmup},
                 {"command", req.commandLine},
                 {"finished_at", isoTimeNow()},
                 {"combinations", rows}};
  if (req.cancelled && req.cancelled())
    res.summary["interrupted"] = {{"runs_not_started", notRun},
                                  {"note", "stopped by a signal: the figures cover only the runs that finished"}};
  return res;
}

std::string formatTable(const Json& summary) {
  auto cell = [](const Json& metrics, const char* id, double scale, bool range) -> std::string {
    if (!metrics.contains(id)) return "-";
    const Json& m = metrics[id];
    auto f = [](double v) { return v >= 100 ? fmt::format("{:.0f}", v) : v >= 10 ? fmt::format("{:.1f}", v) : fmt::format("{:.2f}", v); };
    std::string s = f(m["median"].get<double>() * scale);
    if (range) s += " (" + f(m["min"].get<double>() * scale) + "–" + f(m["max"].get<double>() * scale) + ")";
    return s;
  };
  std::vector<std::vector<std::string>> t = {{"runtime", "engine", "mode", "downtime ms (min–max)", "ckpt downtime ms", "checkpoint ms",
                                              "restore ms", "1st reply ms", "image MiB", "n", "fidelity", "status"}};
  for (auto& r : summary["combinations"]) {
    const Json& m = r["metrics"];
    std::string status = r["status"];
    std::string reason = r.value("reason", "");
    if (!reason.empty()) status += ": " + reason;
    bool ran = r["planned"] == "run";
    t.push_back({r["runtime"], r["engine"], r["mode"], cell(m, "downtime_ms", 1, true),
                 cell(m, "checkpoint_downtime_ms", 1, false), cell(m, "checkpoint_ms", 1, false),
                 cell(m, "restore_ms", 1, false), cell(m, "first_reply_ms", 1, false),
                 cell(m, "image_bytes", 1.0 / (1 << 20), false), ran ? std::to_string(r["n"].get<int>()) : "-",
                 ran && r["n"].get<int>() > 0
                     ? fmt::format("{}/{}", r["fidelity"]["passed"].get<int>(), r["fidelity"]["total"].get<int>())
                     : "-",
                 status});
  }
  // Pad by display width: "–" is 3 bytes but one column.
  auto width = [](const std::string& x) {
    size_t n = x.size();
    for (size_t p = x.find("–"); p != std::string::npos; p = x.find("–", p + 1)) n -= 2;
    return n;
  };
  std::vector<size_t> w(t[0].size(), 0);
  for (auto& row : t)
    for (size_t i = 0; i < row.size(); ++i) w[i] = std::max(w[i], width(row[i]));
  std::string o;
  for (auto& row : t) {
    // The status column is last and not padded: reasons can be long.
    for (size_t i = 0; i < row.size(); ++i)
      o += row[i] + (i + 1 < row.size() ? std::string(w[i] + 2 - width(row[i]), ' ') : "");
    o += "\n";
  }
  return o;
}

}  // namespace crb
