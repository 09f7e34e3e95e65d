#include "report/runs.hpp"

#include <fmt/format.h>

#include <algorithm>

#include "core/fsutil.hpp"
#include "results/results.hpp"

namespace crb {
namespace {

std::optional<double> num(const Json& j, std::initializer_list<const char*> path) {
  const Json* cur = &j;
  for (const char* k : path) {
    if (!cur->is_object() || !cur->contains(k)) return std::nullopt;
    cur = &(*cur)[k];
  }
  if (!cur->is_number()) return std::nullopt;
  return cur->get<double>();
}

std::string str(const Json& j, const char* k) {
  if (j.is_object() && j.contains(k) && j[k].is_string()) return j[k].get<std::string>();
  return {};
}

std::optional<double> engineCpu(const Json& rec) {
  if (!rec.contains("engine_report") || !rec["engine_report"].is_object()) return std::nullopt;
  double total = 0;
  bool any = false;
  for (const char* phase : {"checkpoint", "restore"}) {
    const Json& p = rec["engine_report"].value(phase, Json());
    for (auto v : {num(p, {"measured", "thread_cpu_s"}), num(p, {"measured", "children_cpu_s"})})
      if (v) total += *v, any = true;
  }
  return any ? std::optional<double>(total) : std::nullopt;
}

}  // namespace

int RunView::fidelityPassed() const {
  return int(std::count_if(checks.begin(), checks.end(), [](auto& c) { return c.result == "pass"; }));
}
int RunView::fidelityTotal() const {
  return int(std::count_if(checks.begin(), checks.end(),
                           [](auto& c) { return c.result == "pass" || c.result == "fail"; }));
}

RunView viewRun(const Json& rec, const std::string& file) {
  RunView v;
  v.file = file;
  v.record = &rec;
  v.runId = str(rec, "run_id");
  if (rec.contains("scenario")) v.scenario = str(rec["scenario"], "name");
  v.runtime = str(rec, "runtime");
  v.engine = str(rec, "engine");
  v.mode = str(rec, "mode");
  v.status = str(rec, "status");
  if (rec.contains("error") && rec["error"].is_object()) {
    v.error = str(rec["error"], "message");
    v.errorPhase = str(rec["error"], "phase");
    if (auto h = str(rec["error"], "hint"); !h.empty()) v.error += " (" + h + ")";
  }
  if (rec.contains("compare") && rec["compare"].is_object()) v.warmup = rec["compare"].value("warmup", false);
  v.downtimeMs = num(rec, {"downtime_ms"});
  v.checkpointMs = num(rec, {"timings_ms", "checkpoint"});
  v.checkpointDowntimeMs = num(rec, {"checkpoint_downtime_ms"});
  v.restoreMs = num(rec, {"timings_ms", "restore"});
  v.firstReplyMs = num(rec, {"timings_ms", "first_reply_after_restore"});
  v.imageBytes = num(rec, {"image", "apparent_bytes"});
  v.imageAllocatedBytes = num(rec, {"image", "allocated_bytes"});
  v.engineCpuSeconds = engineCpu(rec);
  if (rec.contains("fidelity") && rec["fidelity"].is_object()) {
    v.fidelityVerdict = str(rec["fidelity"], "verdict");
    for (auto& c : rec["fidelity"].value("checks", Json::array()))
      v.checks.push_back({str(c, "name"), str(c, "result"), str(c, "detail")});
  }
  // A run that did not get as far as measuring has no figures, even if a partial one was noted:
  // statistics must only combine complete runs.
  if (v.status != "ok") {
    v.downtimeMs.reset();
    v.firstReplyMs.reset();
    v.checkpointDowntimeMs.reset();
  }
  return v;
}

const std::vector<Metric>& reportMetrics() {
  static const std::vector<Metric> m = {
      {"downtime_ms", "Downtime (probe reply gap)", "ms", 1, [](const RunView& r) { return r.downtimeMs; }},
      {"checkpoint_downtime_ms", "Checkpoint downtime (probe gap during the checkpoint)", "ms", 1,
       [](const RunView& r) { return r.checkpointDowntimeMs; }},
      {"checkpoint_ms", "Checkpoint time", "ms", 1, [](const RunView& r) { return r.checkpointMs; }},
      {"restore_ms", "Restore time", "ms", 1, [](const RunView& r) { return r.restoreMs; }},
      {"first_reply_ms", "First probe reply after restore", "ms", 1, [](const RunView& r) { return r.firstReplyMs; }},
      {"image_bytes", "Image size (apparent)", "MiB", 1.0 / (1 << 20), [](const RunView& r) { return r.imageBytes; }},
      {"image_allocated_bytes", "Image size (allocated)", "MiB", 1.0 / (1 << 20),
       [](const RunView& r) { return r.imageAllocatedBytes; }},
      {"engine_cpu_s", "Engine CPU (checkpoint + restore)", "s", 1, [](const RunView& r) { return r.engineCpuSeconds; }},
  };
  return m;
}

std::string addRecord(RunSet& set, Json rec, const std::string& file) {
  if (!rec.is_object()) return fmt::format("{}: not a JSON object (expected a crbench run record)", file);
  std::string schema = str(rec, "schema");
  if (schema == "crbench-compare") {
    set.compareSummaries.push_back(std::move(rec));
    return {};
  }
  if (schema != kResultsSchemaName)
    return fmt::format("{}: schema '{}' is not '{}' (not a crbench run record; pass results/runs/*.json)", file,
                       schema, kResultsSchemaName);
  if (!rec.contains("schema_version") || rec["schema_version"] != kResultsSchemaVersion)
    return fmt::format("{}: results schema version {} is not {} (written by another crbench; re-run it with this one "
                       "or render it with the crbench that wrote it)",
                       file, rec.value("schema_version", Json()).dump(), kResultsSchemaVersion);
  if (auto st = checkRunRecord(rec); !st.ok()) return fmt::format("{}: {}", file, st.error().text());
  set.records.push_back(std::move(rec));
  set.runs.push_back(viewRun(set.records.back(), file));
  relink(set);
  return {};
}

void relink(RunSet& set) {
  for (size_t i = 0; i < set.runs.size(); ++i) set.runs[i].record = &set.records[i];
}

RunSet loadRuns(const std::vector<fs::path>& inputs) {
  RunSet set;
  std::vector<fs::path> files;
  for (auto& in : inputs) {
    set.inputs.push_back(in.string());
    std::error_code ec;
    if (fs::is_directory(in, ec)) {
      std::vector<fs::path> found;
      for (auto& e : fs::directory_iterator(in, ec))
        if (e.path().extension() == ".json") found.push_back(e.path());
      std::sort(found.begin(), found.end());
      if (found.empty()) set.problems.push_back(fmt::format("{}: no *.json files in this directory", in.string()));
      files.insert(files.end(), found.begin(), found.end());
    } else if (fs::exists(in, ec)) {
      files.push_back(in);
    } else {
      set.problems.push_back(fmt::format("{}: no such file or directory", in.string()));
    }
  }
  set.records.reserve(files.size());
  for (auto& f : files) {
    auto text = readFile(f);
    if (!text.ok()) {
      set.problems.push_back(fmt::format("{}: {}", f.string(), text.error().text()));
      continue;
    }
    Json rec;
    try {
      rec = Json::parse(*text);
    } catch (const Json::parse_error& e) {
      set.problems.push_back(fmt::format("{}: not valid JSON ({}; the file may be truncated: re-run or remove it)",
                                         f.string(), e.what()));
      continue;
    }
    if (auto p = addRecord(set, std::move(rec), f.string()); !p.empty()) set.problems.push_back(p);
  }
  return set;
}

}  // namespace crb
