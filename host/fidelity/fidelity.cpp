#include "fidelity/fidelity.hpp"

#include <fmt/format.h>

#include <cstdlib>
#include <map>
#include <optional>

namespace crb {

namespace {

constexpr const char* kAgentName = "crbench-agent";
constexpr size_t kMaxListed = 5;  // differences named in a detail line

std::string trim(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ' || s.back() == '\r' || s.back() == '\t')) s.pop_back();
  size_t i = s.find_first_not_of(" \t\r\n");
  return i == std::string::npos ? std::string() : s.substr(i);
}

std::string clip(const std::string& s, size_t n = 80) { return s.size() > n ? s.substr(0, n) + "..." : s; }

std::optional<double> parseNumber(const std::string& s) {
  std::string t = trim(s);
  if (t.empty()) return std::nullopt;
  char* end = nullptr;
  double v = std::strtod(t.c_str(), &end);
  if (end == t.c_str() || *end != '\0') return std::nullopt;
  return v;
}

using ProcMap = std::map<long, Json>;
ProcMap byPid(const Json& digest) {
  ProcMap m;
  if (!digest.is_object() || !digest.contains("processes") || !digest["processes"].is_array()) return m;
  for (auto& p : digest["processes"])
    if (p.is_object() && p.contains("pid")) m[p["pid"].get<long>()] = p;
  return m;
}

std::string procLabel(const Json& p) {
  return fmt::format("{}({})", p.value("name", std::string("?")), p.value("pid", 0L));
}

// The agent marks its own entry; older agents are known by name (in the VM it runs as /init).
bool isAgent(const Json& p) { return p.value("agent", false) || p.value("name", std::string()) == kAgentName; }

// Collects differences and turns them into a verdict with a short detail.
struct Diffs {
  std::vector<std::string> items;
  size_t compared = 0;
  void add(std::string s) { items.push_back(std::move(s)); }
  FidelityCheck verdict(const std::string& name, const std::string& what) const {
    FidelityCheck c{name, Verdict::Pass, {}};
    if (compared == 0) {
      c.verdict = Verdict::NotApplicable;
      c.detail = "nothing to compare: " + what;
      return c;
    }
    if (items.empty()) {
      c.detail = fmt::format("{} identical ({} compared)", what, compared);
      return c;
    }
    c.verdict = Verdict::Fail;
    std::string d;
    for (size_t i = 0; i < items.size() && i < kMaxListed; i++) d += (i ? "; " : "") + items[i];
    if (items.size() > kMaxListed) d += fmt::format("; and {} more", items.size() - kMaxListed);
    c.detail = fmt::format("{} of {} differ: {}", items.size(), compared, d);
    return c;
  }
};

std::string fdKey(const Json& f) {
  return fmt::format("{} {} {}", f.value("fd", -1), f.value("kind", std::string()), f.value("path", std::string()));
}

}  // namespace

std::string toString(Verdict v) {
  switch (v) {
    case Verdict::Pass: return "pass";
    case Verdict::Fail: return "fail";
    case Verdict::Unsupported: return "unsupported";
    default: return "not-applicable";
  }
}

Json FidelityCheck::toJson() const {
  Json j{{"name", name}, {"result", toString(verdict)}, {"detail", detail}};
  if (!figures.is_null()) j["figures"] = figures;
  return j;
}

Json CheckRun::toJson() const {
  Json j{{"ran", ran}, {"exit", exitCode}, {"stdout", out}};
  if (!error.empty()) j["error"] = error;
  return j;
}

std::vector<FidelityCheck> compareDigests(const Json& before, const Json& after) {
  std::vector<FidelityCheck> out;
  auto b = byPid(before), a = byPid(after);
  if (b.empty() || a.empty()) {
    for (auto n : {"process-tree", "fd-table", "fd-offsets", "memory-maps", "cwd", "limits"})
      out.push_back({n, Verdict::NotApplicable,
                     b.empty() ? "no state digest from before the checkpoint" : "no state digest after the restore"});
    return out;
  }
  // Process tree: the same pids with the same parents and names.
  Diffs tree;
  for (auto& [pid, p] : b) {
    tree.compared++;
    auto it = a.find(pid);
    if (it == a.end()) {
      tree.add(procLabel(p) + " is gone");
      continue;
    }
    if (it->second.value("ppid", -1L) != p.value("ppid", -1L))
      tree.add(fmt::format("{} parent {} -> {}", procLabel(p), p.value("ppid", -1L), it->second.value("ppid", -1L)));
    if (it->second.value("name", std::string()) != p.value("name", std::string()))
      tree.add(fmt::format("pid {} name {} -> {}", pid, p.value("name", std::string()),
                           it->second.value("name", std::string())));
  }
  for (auto& [pid, p] : a)
    if (!b.count(pid)) tree.add(procLabel(p) + " is new");
  out.push_back(tree.verdict("process-tree", "processes (pid, parent, name)"));

  Diffs fds, offsets, maps, cwd, limits;
  for (auto& [pid, p] : b) {
    auto it = a.find(pid);
    if (it == a.end() || isAgent(p)) continue;
    const Json& q = it->second;
    std::map<std::string, Json> fb, fa;
    for (auto& f : p.value("fds", Json::array())) fb[fdKey(f)] = f;
    for (auto& f : q.value("fds", Json::array())) fa[fdKey(f)] = f;
    fds.compared++;
    std::vector<std::string> missing, added;
    for (auto& [k, f] : fb)
      if (!fa.count(k)) missing.push_back(k);
    for (auto& [k, f] : fa)
      if (!fb.count(k)) added.push_back(k);
    if (!missing.empty() || !added.empty())
      fds.add(fmt::format("{}: {}{}{}", procLabel(p), missing.empty() ? "" : "lost [" + clip(fmt::format("{}", fmt::join(missing, ", "))) + "]",
                          !missing.empty() && !added.empty() ? " " : "",
                          added.empty() ? "" : "new [" + clip(fmt::format("{}", fmt::join(added, ", "))) + "]"));
    // Offsets of regular files: a live workload moves them forward, a restore that lost the
    // position sends one back (e.g. to 0).
    for (auto& [k, f] : fb) {
      if (f.value("kind", std::string()) != "file" || !f.contains("pos") || !fa.count(k) || !fa[k].contains("pos"))
        continue;
      offsets.compared++;
      long pb = f["pos"].get<long>(), pa = fa[k]["pos"].get<long>();
      if (pa < pb) offsets.add(fmt::format("{} fd {} offset {} -> {}", procLabel(p), k, pb, pa));
    }
    maps.compared++;
    Json mb = p.value("maps", Json::object()), ma = q.value("maps", Json::object());
    // Prefer the layout hash (file-backed mappings, heap start, stack top): anonymous memory and
    // the brk end move in a live program between the two digests without anything being wrong.
    const char* key = mb.contains("layout_hash") && ma.contains("layout_hash") ? "layout_hash" : "hash";
    if (mb.value(key, std::string()) != ma.value(key, std::string()))
      maps.add(fmt::format("{}: {} mappings/{} KiB -> {}/{} KiB", procLabel(p), mb.value("count", 0L),
                           mb.value("bytes", 0L) / 1024, ma.value("count", 0L), ma.value("bytes", 0L) / 1024));
    cwd.compared++;
    if (p.value("cwd", std::string()) != q.value("cwd", std::string()))
      cwd.add(fmt::format("{}: {} -> {}", procLabel(p), p.value("cwd", std::string()), q.value("cwd", std::string())));
    limits.compared++;
    if (p.value("limits_hash", std::string()) != q.value("limits_hash", std::string()))
      limits.add(procLabel(p) + ": /proc/pid/limits changed");
  }
  out.push_back(fds.verdict("fd-table", "workload fd tables (number, kind, path)"));
  out.push_back(offsets.verdict("fd-offsets", "regular-file offsets (never moved backwards)"));
  out.push_back(maps.verdict("memory-maps", "workload memory maps (file-backed ranges, permissions, paths; heap start, stack top)"));
  out.push_back(cwd.verdict("cwd", "workload working directories"));
  out.push_back(limits.verdict("limits", "workload resource limits"));

  // The scenario's workload digest command: it must still work after the restore; its output
  // is recorded (a live workload's digest changes, the scenario checks judge the values).
  FidelityCheck w{"workload-digest", Verdict::NotApplicable, "the scenario has no digest command"};
  if (before.contains("workload") && !before["workload"].is_null()) {
    bool okB = !before.contains("workload_error"), okA = after.contains("workload") && !after.contains("workload_error");
    w.verdict = okA ? Verdict::Pass : Verdict::Fail;
    if (!okB) w.verdict = Verdict::NotApplicable;
    w.detail = fmt::format("before: {}; after: {}",
                           okB ? clip(trim(before["workload"].get<std::string>())) : before.value("workload_error", std::string()),
                           okA ? clip(trim(after["workload"].get<std::string>()))
                               : after.value("workload_error", std::string("no workload digest")));
  }
  out.push_back(w);
  return out;
}

FidelityCheck judgeScenarioCheck(const ScenarioCheck& check, const CheckRun& before, const CheckRun& after) {
  FidelityCheck c{"scenario:" + check.name, Verdict::Fail, {}};
  if (!before.ran) {
    c.verdict = Verdict::NotApplicable;
    c.detail = "could not run before the checkpoint: " + before.error;
    return c;
  }
  if (!after.ran) {
    c.detail = "could not run after the restore: " + after.error;
    return c;
  }
  std::string ob = trim(before.out), oa = trim(after.out);
  auto exitText = [](const Json& e) { return e.is_null() ? std::string("signal") : e.dump(); };
  bool exitOkB = before.exitCode == Json(0), exitOkA = after.exitCode == Json(0);
  if (check.expect == "exit-zero") {
    c.verdict = exitOkA ? Verdict::Pass : Verdict::Fail;
    c.detail = fmt::format("exit {} before, {} after{}", exitText(before.exitCode), exitText(after.exitCode),
                           exitOkA ? "" : "; output: " + clip(oa));
    return c;
  }
  if (!exitOkB) {
    c.verdict = Verdict::NotApplicable;
    c.detail = fmt::format("the check failed before the checkpoint (exit {}): {}", exitText(before.exitCode), clip(ob));
    return c;
  }
  if (!exitOkA) {
    c.detail = fmt::format("exit {} after the restore: {}", exitText(after.exitCode), clip(oa));
    return c;
  }
  if (check.expect == "same") {
    c.verdict = ob == oa ? Verdict::Pass : Verdict::Fail;
    c.detail = ob == oa ? "'" + clip(ob) + "' before and after" : fmt::format("'{}' -> '{}'", clip(ob), clip(oa));
  } else if (check.expect == "changed") {
    c.verdict = ob != oa ? Verdict::Pass : Verdict::Fail;
    c.detail = fmt::format("'{}' -> '{}'", clip(ob), clip(oa));
  } else if (check.expect == "increases") {
    auto nb = parseNumber(ob), na = parseNumber(oa);
    if (!nb || !na) {
      c.detail = fmt::format("expected numbers, got '{}' and '{}'", clip(ob), clip(oa));
    } else {
      c.verdict = *na > *nb ? Verdict::Pass : Verdict::Fail;
      c.detail = fmt::format("{} -> {}", ob, oa);
    }
  } else {
    c.verdict = Verdict::NotApplicable;
    c.detail = "unknown expectation '" + check.expect + "'";
  }
  return c;
}

std::string overallVerdict(const std::vector<FidelityCheck>& checks) {
  if (checks.empty()) return "none";
  for (auto& c : checks)
    if (c.verdict == Verdict::Fail) return "fail";
  return "pass";
}

Json toJson(const std::vector<FidelityCheck>& checks) {
  Json a = Json::array();
  for (auto& c : checks) a.push_back(c.toJson());
  return a;
}

}  // namespace crb
