#include "report/report.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <limits>
#include <set>
#include <sstream>

#include "core/fsutil.hpp"
#include "results/results.hpp"

namespace crb {
namespace {

std::string esc(const std::string& s) {
  std::string o;
  for (char c : s) switch (c) {
      case '<': o += "&lt;"; break;
      case '>': o += "&gt;"; break;
      case '&': o += "&amp;"; break;
      case '"': o += "&quot;"; break;
      default: o += c;
    }
  return o;
}

std::string mdCell(std::string s) {
  std::replace(s.begin(), s.end(), '\n', ' ');
  std::string o;
  for (char c : s) o += c == '|' ? std::string("\\|") : std::string(1, c);
  return o;
}

std::string fmtNum(double v) {
  double a = std::fabs(v);
  if (a >= 1000) return fmt::format("{:.0f}", v);
  if (a >= 100) return fmt::format("{:.1f}", v);
  if (a >= 1) return fmt::format("{:.2f}", v);
  return fmt::format("{:.3f}", v);
}

std::string paramValue(const Json& v) { return v.is_string() ? v.get<std::string>() : v.dump(); }

const Json* paramsOf(const RunView& r) {
  if (!r.record || !r.record->contains("scenario")) return nullptr;
  const Json& s = (*r.record)["scenario"];
  return s.is_object() && s.contains("params") && s["params"].is_object() ? &s["params"] : nullptr;
}

// One colour per engine, the same in every chart.
std::string colour(size_t i) {
  static const char* c[] = {"#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf"};
  return c[i % 8];
}

struct Scale {
  double lo, hi;
  bool log;
  double map(double v, double x0, double x1) const {
    double t = log ? (std::log10(std::max(v, lo)) - std::log10(lo)) / (std::log10(hi) - std::log10(lo))
                   : (v - lo) / (hi - lo);
    return x0 + t * (x1 - x0);
  }
};

Scale scaleFor(double lo, double hi) {
  if (!(hi > lo)) hi = lo + (lo == 0 ? 1 : std::fabs(lo) * 0.1);
  // Engines differ by orders of magnitude (a VM snapshot vs a frozen cgroup): use a log axis then.
  if (lo > 0 && hi / lo > 50) return {lo / 1.2, hi * 1.2, true};
  return {std::min(0.0, lo), hi * 1.05, false};
}

std::vector<double> ticks(const Scale& s) {
  std::vector<double> t;
  if (s.log) {
    for (double p = std::pow(10, std::floor(std::log10(s.lo))); p <= s.hi; p *= 10)
      if (p >= s.lo) t.push_back(p);
  } else {
    for (int i = 0; i <= 4; ++i) t.push_back(s.lo + (s.hi - s.lo) * i / 4);
  }
  return t;
}

// Raw samples per group as dots on one axis, the median as a bar: every sample visible.
std::string stripChart(const Metric& m, const std::vector<Group>& groups, const std::map<std::string, size_t>& engineIdx) {
  double lo = std::numeric_limits<double>::infinity(), hi = -lo;
  std::vector<const Group*> shown;
  for (auto& g : groups) {
    auto s = g.samples(m);
    if (s.empty()) continue;
    shown.push_back(&g);
    for (double v : s) lo = std::min(lo, v * m.scale), hi = std::max(hi, v * m.scale);
  }
  if (shown.empty()) return {};
  Scale sc = scaleFor(lo, hi);
  const int left = 260, right = 860, rowH = 26, top = 10;
  int h = top + rowH * int(shown.size()) + 40;
  std::string o = fmt::format(R"(<svg class="chart" xmlns="http://www.w3.org/2000/svg" width="880" height="{}" role="img" aria-label="{} raw samples">)", h, esc(m.title));
  for (double t : ticks(sc)) {
    double x = sc.map(t, left, right);
    o += fmt::format(R"(<line x1="{:.1f}" y1="{}" x2="{:.1f}" y2="{}" stroke="#ddd"/><text x="{:.1f}" y="{}" font-size="11" text-anchor="middle">{}</text>)",
                     x, top, x, h - 30, x, h - 16, fmtNum(t));
  }
  o += fmt::format(R"(<text x="{}" y="{}" font-size="11" text-anchor="middle">{} ({}{})</text>)", (left + right) / 2, h - 2,
                   esc(m.title), m.unit, sc.log ? ", log scale" : "");
  for (size_t i = 0; i < shown.size(); ++i) {
    const Group& g = *shown[i];
    int y = top + rowH * int(i) + rowH / 2;
    std::string col = colour(engineIdx.at(g.engine));
    o += fmt::format(R"(<text x="{}" y="{}" font-size="12" text-anchor="end">{}</text>)", left - 8, y + 4, esc(g.key));
    auto s = g.samples(m);
    for (size_t k = 0; k < s.size(); ++k) {
      // Spread equal values vertically a little so every sample stays visible.
      double jitter = (double(k % 5) - 2) * 2.0;
      o += fmt::format(R"(<circle cx="{:.1f}" cy="{:.1f}" r="3.5" fill="{}" fill-opacity="0.7"><title>{} {}</title></circle>)",
                       sc.map(s[k] * m.scale, left, right), y + jitter, col, fmtNum(s[k] * m.scale), m.unit);
    }
    double med = sc.map(median(s) * m.scale, left, right);
    o += fmt::format(R"(<line x1="{:.1f}" y1="{}" x2="{:.1f}" y2="{}" stroke="#000" stroke-width="2"/>)", med, y - 9, med, y + 9);
  }
  return o + "</svg>";
}

// RTT of every probe around the checkpoint window; lost probes on the top edge in red; the
// checkpoint/restore marks as vertical lines. The reply gap (the downtime) is the empty stretch.
std::string traceChart(const RunView& r) {
  const Json& rec = *r.record;
  if (!rec.contains("probe") || !rec["probe"].is_object() || !rec["probe"].contains("trace")) return {};
  const Json& tr = rec["probe"]["trace"];
  if (!tr.contains("samples") || !tr.contains("marks")) return {};
  const Json& send = tr["samples"]["send"];
  const Json& recv = tr["samples"]["recv"];
  double ck = -1, rs = -1;
  std::vector<std::pair<std::string, double>> marks;
  for (auto& m : tr["marks"]) {
    double ms = m.value("ns", 0.0) / 1e6;
    std::string n = m.value("name", "");
    marks.push_back({n, ms});
    if (n == "checkpoint-start" && ck < 0) ck = ms;
    if (n == "restore-end") rs = ms;
  }
  if (ck < 0 || send.empty()) return {};
  if (rs < 0) rs = ck + 1;
  double span = std::max(rs - ck, 1.0);
  double x0 = ck - std::max(50.0, span * 0.25), x1 = rs + std::max(100.0, span * 0.5);
  struct P { double t, rtt; bool lost; };
  std::vector<P> pts;
  double maxRtt = 0.1;
  for (size_t i = 0; i < send.size() && i < recv.size(); ++i) {
    double t = send[i].get<double>() / 1e6;
    if (t < x0 || t > x1) continue;
    if (recv[i].is_null()) {
      pts.push_back({t, 0, true});
    } else {
      double rtt = recv[i].get<double>() / 1e6 - t;
      pts.push_back({t, rtt, false});
    }
  }
  // The RTT axis is set by the probes that came back promptly; a probe answered only after the
  // restore has an RTT equal to the downtime and is drawn clipped at the top (still visible).
  std::vector<double> rtts;
  for (auto& p : pts)
    if (!p.lost) rtts.push_back(p.rtt);
  if (!rtts.empty()) maxRtt = std::max(0.1, quantile(rtts, 0.99) * 1.5);
  size_t stride = std::max<size_t>(1, pts.size() / 3000);
  const int L = 60, R = 860, T = 10, B = 190;
  std::string o = fmt::format(R"(<svg class="chart trace" xmlns="http://www.w3.org/2000/svg" width="880" height="230" role="img" aria-label="probe trace {}">)", esc(r.runId));
  o += fmt::format(R"(<rect x="{}" y="{}" width="{}" height="{}" fill="none" stroke="#999"/>)", L, T, R - L, B - T);
  auto X = [&](double t) { return L + (t - x0) / (x1 - x0) * (R - L); };
  auto Y = [&](double v) { return B - std::min(v, maxRtt) / maxRtt * (B - T); };
  for (size_t i = 0; i < pts.size(); i += stride) {
    auto& p = pts[i];
    if (p.lost)
      o += fmt::format(R"(<rect x="{:.1f}" y="{}" width="1.5" height="4" fill="#d62728"/>)", X(p.t), T);
    else
      o += fmt::format(R"(<circle cx="{:.1f}" cy="{:.1f}" r="1.2" fill="#1f77b4"/>)", X(p.t), Y(p.rtt));
  }
  for (auto& [n, t] : marks) {
    if (t < x0 || t > x1) continue;
    o += fmt::format(R"X(<line x1="{0:.1f}" y1="{1}" x2="{0:.1f}" y2="{2}" stroke="#555" stroke-dasharray="3,3"/><text x="{0:.1f}" y="{3}" font-size="10" transform="rotate(-90 {0:.1f} {3})">{4}</text>)X",
                     X(t), T, B, B - 4, esc(n));
  }
  o += fmt::format(R"(<text x="{}" y="{}" font-size="11">0</text><text x="{}" y="{}" font-size="11">{} ms</text>)", L - 20, B, L - 55, T + 10, fmtNum(maxRtt));
  o += fmt::format(R"(<text x="{}" y="{}" font-size="11" text-anchor="middle">time since probing started (ms), {:.0f} … {:.0f}; dots = probe round-trip time, red = no reply</text>)",
                   (L + R) / 2, B + 20, x0, x1);
  return o + "</svg>";
}

// Median of a metric against a varying numeric parameter, one line per runtime/engine/mode.
std::string scalingChart(const Metric& m, const std::string& param, const std::vector<RunView>& runs,
                         const std::map<std::string, size_t>& engineIdx) {
  std::map<std::string, std::map<double, std::vector<double>>> series;
  std::map<std::string, std::string> engineOf;
  for (auto& r : runs) {
    if (r.warmup || r.status != "ok") continue;
    const Json* p = paramsOf(r);
    auto v = m.get(r);
    if (!p || !p->contains(param) || !(*p)[param].is_number() || !v) continue;
    std::string k = r.runtime + "/" + r.engine + "/" + r.mode;
    series[k][(*p)[param].get<double>()].push_back(*v * m.scale);
    engineOf[k] = r.engine;
  }
  if (series.empty()) return {};
  double xlo = 1e300, xhi = -1e300, ylo = 1e300, yhi = -1e300;
  for (auto& [k, pts] : series)
    for (auto& [x, ys] : pts) {
      double y = median(ys);
      xlo = std::min(xlo, x), xhi = std::max(xhi, x), ylo = std::min(ylo, y), yhi = std::max(yhi, y);
    }
  Scale sx = scaleFor(xlo, xhi), sy = scaleFor(ylo, yhi);
  const int L = 70, R = 640, T = 10, B = 250;
  std::string o = fmt::format(R"(<svg class="chart scaling" xmlns="http://www.w3.org/2000/svg" width="880" height="290" role="img" aria-label="{} against {}">)", esc(m.title), esc(param));
  o += fmt::format(R"(<rect x="{}" y="{}" width="{}" height="{}" fill="none" stroke="#999"/>)", L, T, R - L, B - T);
  for (double t : ticks(sx))
    o += fmt::format(R"(<text x="{:.1f}" y="{}" font-size="11" text-anchor="middle">{}</text>)", sx.map(t, L, R), B + 14, fmtNum(t));
  for (double t : ticks(sy))
    o += fmt::format(R"(<text x="{}" y="{:.1f}" font-size="11" text-anchor="end">{}</text>)", L - 4, sy.map(t, B, T) + 4, fmtNum(t));
  o += fmt::format(R"(<text x="{}" y="{}" font-size="11" text-anchor="middle">{}</text>)", (L + R) / 2, B + 32, esc(param));
  int legend = 0;
  for (auto& [k, pts] : series) {
    std::string col = colour(engineIdx.at(engineOf[k])), path;
    for (auto& [x, ys] : pts) {
      double px = sx.map(x, L, R), py = sy.map(median(ys), B, T);
      path += fmt::format("{}{:.1f},{:.1f}", path.empty() ? "M" : " L", px, py);
      o += fmt::format(R"(<circle cx="{:.1f}" cy="{:.1f}" r="3" fill="{}"/>)", px, py, col);
    }
    o += fmt::format(R"(<path d="{}" fill="none" stroke="{}" stroke-width="2"/>)", path, col);
    o += fmt::format(R"(<text x="{}" y="{}" font-size="12" fill="{}">{}</text>)", R + 10, T + 14 + 16 * legend++, col, esc(k));
  }
  return o + fmt::format(R"(<text x="{}" y="{}" font-size="11">{} ({}), median</text></svg>)", R + 10, B, esc(m.title), m.unit);
}

struct Model {
  RunSet set;
  std::vector<Group> groups;
  std::vector<std::string> varying;
  std::map<std::string, size_t> engineIdx;
  std::string scenario, command;
  Json env = Json::object();
  std::string commit;
};

std::string deriveCommand(const Model& m) {
  // Several compares may feed one page (e.g. the container side with more repeats than the VM side):
  // every one of them is part of how to reproduce it.
  std::vector<std::string> cmds;
  for (auto& s : m.set.compareSummaries)
    if (s.contains("command") && s["command"].is_string() &&
        std::find(cmds.begin(), cmds.end(), s["command"].get<std::string>()) == cmds.end())
      cmds.push_back(s["command"].get<std::string>());
  if (!cmds.empty()) {
    std::string o;
    for (auto& c : cmds) o += (o.empty() ? "" : "\n") + c;
    return o;
  }
  std::set<std::string> engines, runtimes, modes;
  for (auto& r : m.set.runs) {
    engines.insert(r.engine), runtimes.insert(r.runtime);
    if (!r.mode.empty()) modes.insert(r.mode);
  }
  auto join = [](const std::set<std::string>& s) {
    std::string o;
    for (auto& x : s) o += (o.empty() ? "" : ",") + x;
    return o;
  };
  std::string cmd = fmt::format("crbench compare {} --engines {} --runtimes {} --modes {}", m.scenario, join(engines),
                                join(runtimes), join(modes));
  if (!m.set.runs.empty())
    if (const Json* p = paramsOf(m.set.runs.front()))
      for (auto& [k, v] : p->items())
        if (std::find(m.varying.begin(), m.varying.end(), k) == m.varying.end())
          cmd += fmt::format(" --param {}={}", k, paramValue(v));
  return cmd + " (derived from the runs; repeats as in n below)";
}

Model buildModel(const RunSet& in, const ReportOptions& opts, std::vector<std::string>& problems) {
  Model m;
  m.set = selectOneScenario(in, problems);
  m.varying = varyingParams(m.set.runs);
  m.groups = groupRuns(m.set.runs);
  for (auto& r : m.set.runs)
    if (!m.engineIdx.count(r.engine)) m.engineIdx.emplace(r.engine, m.engineIdx.size());
  m.scenario = m.set.runs.empty() ? "" : m.set.runs.front().scenario;
  m.command = opts.command.empty() ? deriveCommand(m) : opts.command;
  std::set<std::string> commits, kernels;
  for (auto& r : m.set.runs) {
    const Json& rec = *r.record;
    if (rec.contains("environment") && rec["environment"].is_object() && m.env.empty()) m.env = rec["environment"];
    if (rec.contains("crbench")) commits.insert(rec["crbench"].value("commit", "?"));
    if (rec.contains("environment")) kernels.insert(rec["environment"].value("kernel", "?"));
  }
  for (auto& c : commits) m.commit += (m.commit.empty() ? "" : ", ") + c;
  if (commits.size() > 1) problems.push_back("runs come from different crbench commits: " + m.commit);
  if (kernels.size() > 1) problems.push_back("runs come from different kernels (machines?): compare with care");
  return m;
}

std::vector<std::pair<std::string, std::string>> envRows(const Model& m) {
  const Json& e = m.env;
  auto g = [&](const char* k) { return e.contains(k) ? paramValue(e[k]) : std::string("unknown"); };
  std::vector<std::pair<std::string, std::string>> rows = {
      {"scenario", m.scenario},
      {"CPU", g("cpu_model") + " (" + g("cores") + " cores)"},
      {"memory", e.contains("memory_kib") && e["memory_kib"].is_number()
                     ? fmt::format("{:.1f} GiB", e["memory_kib"].get<double>() / (1 << 20))
                     : "unknown"},
      {"kernel", g("kernel")},
      {"host", g("hostname")},
      {"accelerator (VM runs)",
       e.contains("accelerator") && e["accelerator"].is_object()
           ? e["accelerator"].value("accel", "?") + ": " + e["accelerator"].value("reason", "")
           : "unknown"},
      {"crbench commit", m.commit},
  };
  if (e.contains("tool_versions") && e["tool_versions"].is_object())
    for (auto& [k, v] : e["tool_versions"].items())
      if (k != "engine") rows.push_back({k + " version", v.is_string() ? v.get<std::string>() : v.dump()});
  // tool_versions.engine is what the run's engine reported about itself: one row per engine, from
  // that engine's own runs (the first record may be another engine's).
  std::map<std::string, std::string> engineVersions;
  for (auto& r : m.set.runs) {
    if (engineVersions.count(r.engine)) continue;
    const Json& rec = *r.record;
    if (!rec.contains("environment") || !rec["environment"].is_object()) continue;
    const Json& tv = rec["environment"].value("tool_versions", Json());
    if (!tv.is_object() || !tv.contains("engine") || !tv["engine"].is_object() || tv["engine"].empty()) continue;
    std::string text;
    for (auto& [k, v] : tv["engine"].items()) text += (text.empty() ? "" : ", ") + k + " " + paramValue(v);
    engineVersions[r.engine] = text;
  }
  for (auto& [engine, text] : engineVersions) rows.push_back({"engine " + engine, text});
  std::string ps;
  if (!m.set.runs.empty())
    if (const Json* p = paramsOf(m.set.runs.front()))
      for (auto& [k, v] : p->items())
        ps += (ps.empty() ? "" : ", ") + k + "=" +
              (std::find(m.varying.begin(), m.varying.end(), k) != m.varying.end() ? std::string("(varies)") : paramValue(v));
  rows.push_back({"scenario parameters", ps.empty() ? "none" : ps});
  std::string first, last;
  std::vector<const RunView*> all;
  for (auto& r : m.set.runs) {
    all.push_back(&r);
    const Json& rec = *r.record;
    std::string a = rec.value("started_at", std::string()), b = rec.value("finished_at", std::string());
    if (!a.empty() && (first.empty() || a < first)) first = a;
    if (!b.empty() && b > last) last = b;
  }
  rows.push_back({"runs", fmt::format("{} records ({} warm-up), {} … {} (UTC)", m.set.runs.size(),
                                      std::count_if(all.begin(), all.end(), [](auto* r) { return r->warmup; }),
                                      first.empty() ? "?" : first, last.empty() ? "?" : last)});
  rows.push_back({"1-min load average at run start", loadSummary(all, "load_avg_1m_start")});
  rows.push_back({"1-min load average at run end", loadSummary(all, "load_avg_1m_end")});
  return rows;
}

// Load per group, so a reader can see whether one engine ran on a busier machine than another.
std::vector<std::array<std::string, 3>> loadRows(const Model& m) {
  std::vector<std::array<std::string, 3>> rows;
  for (auto& g : m.groups) {
    if (g.ok + g.failed == 0) continue;  // refused combinations did not run
    rows.push_back({g.key, loadSummary(g.runs, "load_avg_1m_start"), loadSummary(g.runs, "load_avg_1m_end")});
  }
  return rows;
}

// How to rerun: the commit, the set-up, the crbench command (and the wrapper that made this page).
std::string reproduceText(const Model& m, const ReportOptions& opts) {
  std::string o;
  if (!m.commit.empty() && m.commit.find(',') == std::string::npos) {
    std::string c = m.commit;
    bool dirty = c.size() > 6 && c.compare(c.size() - 6, 6, "-dirty") == 0;
    if (dirty) c.resize(c.size() - 6);
    o += "git checkout " + c + (dirty ? "   # the build had uncommitted changes on top of this commit (-dirty)" : "") + "\n";
  }
  o += "scripts/setup.sh   # as root: packages, set-up steps, build into build/\n";
  if (!opts.wrapperCommand.empty()) o += opts.wrapperCommand + "   # everything on this page, raw records included\n# which runs:\n";
  std::string cmds = m.command, out;
  // Each line of the command is a crbench invocation from the source root.
  for (size_t start = 0; start <= cmds.size();) {
    size_t nl = cmds.find('\n', start);
    std::string line = cmds.substr(start, nl == std::string::npos ? std::string::npos : nl - start);
    out += (out.empty() ? "" : "\n") + (line.rfind("crbench ", 0) == 0 ? "build/" + line : line);
    if (nl == std::string::npos) break;
    start = nl + 1;
  }
  return o + out;
}

struct Row {
  const Group* g;
  Summary s;
  double ratio;
};

std::vector<Row> metricRows(const Model& m, const Metric& met) {
  std::vector<Row> rows;
  double best = std::numeric_limits<double>::infinity();
  for (auto& g : m.groups) {
    auto s = g.samples(met);
    if (s.empty()) continue;
    for (auto& v : s) v *= met.scale;
    rows.push_back({&g, summarize(s), 0});
    best = std::min(best, rows.back().s.median);
  }
  for (auto& r : rows) r.ratio = best > 0 ? r.s.median / best : (r.s.median == 0 ? 1 : NAN);
  std::sort(rows.begin(), rows.end(), [](auto& a, auto& b) { return a.s.median < b.s.median; });
  return rows;
}

std::string ciText(const Summary& s) {
  if (!s.ci95) return s.n < 2 ? "n/a (n=1)" : fmt::format("n/a (n={} < 6)", s.n);
  return fmt::format("{} – {}", fmtNum(s.ci95->low), fmtNum(s.ci95->high));
}

std::string ratioText(double r) {
  if (std::isnan(r)) return "–";
  return r >= 100 ? fmt::format("{:.0f}×", r) : fmt::format("{:.2f}×", r);
}

// Fidelity matrix: check × group, "pass 5/5", "fail 1/5", "n/a"; groups without checks show why.
struct Cell {
  int pass = 0, fail = 0, na = 0;
  std::string detail;
};

std::map<std::string, std::map<std::string, Cell>> fidelityMatrix(const Model& m, std::vector<std::string>& checkNames) {
  std::map<std::string, std::map<std::string, Cell>> cells;
  for (auto& g : m.groups)
    for (auto* r : g.runs)
      for (auto& c : r->checks) {
        if (std::find(checkNames.begin(), checkNames.end(), c.name) == checkNames.end()) checkNames.push_back(c.name);
        Cell& cell = cells[c.name][g.key];
        (c.result == "pass" ? cell.pass : c.result == "fail" ? cell.fail : cell.na)++;
        if (c.result == "fail" && cell.detail.empty()) cell.detail = c.detail;
        if (c.result != "pass" && c.result != "fail" && cell.detail.empty()) cell.detail = c.detail;
      }
  return cells;
}

std::string cellText(const Cell* c, const Group& g) {
  if (!c) return g.ok == 0 ? (g.unsupported ? "unsupported" : "not run (failed)") : "–";
  int n = c->pass + c->fail;
  if (n == 0) return "n/a";
  return fmt::format("{} {}/{}", c->fail ? "FAIL" : "pass", c->pass, n);
}

// Columns of the fidelity matrix: combinations that ran at all. Refused ones (unsupported here)
// have no checks; they are listed with their reasons in their own section instead of as a column
// of "unsupported" cells that buries the ones that ran.
std::vector<const Group*> ranGroups(const Model& m) {
  std::vector<const Group*> out;
  for (auto& g : m.groups)
    if (g.ok + g.failed > 0) out.push_back(&g);
  return out;
}

// One line per refused combination (its runs all say the same), in plan order.
std::vector<std::pair<std::string, std::string>> unsupportedRows(const Model& m) {
  std::vector<std::pair<std::string, std::string>> out;
  for (auto& g : m.groups)
    if (g.ok + g.failed == 0 && g.unsupported > 0) out.push_back({g.key, g.reason});
  return out;
}

const char* kCss = R"(body{font-family:sans-serif;margin:2em;max-width:1100px;color:#222}
table{border-collapse:collapse;margin:0.5em 0 1.5em}td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px;text-align:left}
th{background:#f2f2f2}td.num{text-align:right;font-variant-numeric:tabular-nums}.pass{background:#e6f4ea}.fail{background:#fce8e6}
.na{color:#777}.problems{background:#fff4e5;border:1px solid #f0c36d;padding:0.5em 1em}code,pre{background:#f6f8fa;padding:2px 4px}
svg.chart{display:block;margin:0.5em 0 1.5em;background:#fff})";

}  // namespace

std::string loadSummary(const std::vector<const RunView*>& runs, const char* field) {
  std::vector<double> v;
  for (auto* r : runs) {
    if (!r->record || !r->record->contains("environment")) continue;
    const Json& e = (*r->record)["environment"];
    if (e.is_object() && e.contains(field) && e[field].is_number()) v.push_back(e[field].get<double>());
  }
  if (v.empty()) return "not recorded";
  return fmt::format("{:.2f} … {:.2f} (median {:.2f}) over {} run{}", *std::min_element(v.begin(), v.end()),
                     *std::max_element(v.begin(), v.end()), median(v), v.size(), v.size() == 1 ? "" : "s");
}

std::vector<double> Group::samples(const Metric& m) const {
  std::vector<double> v;
  for (auto* r : runs)
    if (r->status == "ok")
      if (auto x = m.get(*r)) v.push_back(*x);
  return v;
}

std::vector<std::string> varyingParams(const std::vector<RunView>& runs) {
  std::map<std::string, std::set<std::string>> values;
  for (auto& r : runs)
    if (const Json* p = paramsOf(r))
      for (auto& [k, v] : p->items()) values[k].insert(v.dump());
  std::vector<std::string> out;
  for (auto& [k, vs] : values)
    if (vs.size() > 1) out.push_back(k);
  return out;
}

std::vector<Group> groupRuns(const std::vector<RunView>& runs) {
  auto vary = varyingParams(runs);
  std::vector<Group> groups;
  std::map<std::string, size_t> idx;
  for (auto& r : runs) {
    if (r.warmup) continue;
    std::string label;
    if (const Json* p = paramsOf(r))
      for (auto& k : vary)
        if (p->contains(k)) label += (label.empty() ? "" : " ") + k + "=" + paramValue((*p)[k]);
    std::string key = r.key() + (label.empty() ? "" : " " + label);
    auto [it, fresh] = idx.emplace(key, groups.size());
    if (fresh) groups.push_back(Group{key, r.runtime, r.engine, r.mode.empty() ? "-" : r.mode, label, {}, 0, 0, 0, {}});
    Group& g = groups[it->second];
    g.runs.push_back(&r);
    if (r.status == "ok") {
      g.ok++;
    } else {
      (r.status == "unsupported" ? g.unsupported : g.failed)++;
      if (g.reason.empty()) g.reason = r.error.empty() ? r.status : r.error;
    }
  }
  std::sort(groups.begin(), groups.end(), [](auto& a, auto& b) { return a.key < b.key; });
  return groups;
}

RunSet selectOneScenario(const RunSet& set, std::vector<std::string>& problems) {
  std::map<std::string, size_t> count;
  for (auto& r : set.runs) count[r.scenario]++;
  RunSet out;
  out.compareSummaries = set.compareSummaries;
  out.inputs = set.inputs;
  out.problems = set.problems;
  // The command of another scenario's compare is not how to reproduce this page.
  auto keepSummariesOf = [&](const std::string& scenario) {
    out.compareSummaries.clear();
    for (auto& sum : set.compareSummaries)
      if (sum.value("scenario", std::string()) == scenario) out.compareSummaries.push_back(sum);
  };
  if (count.size() <= 1) {
    out.records = set.records;
    out.runs = set.runs;
    if (!count.empty()) keepSummariesOf(count.begin()->first);
    relink(out);
    return out;
  }
  std::string keep;
  size_t most = 0;
  std::string list;
  for (auto& [s, n] : count) {
    list += fmt::format("{}{} ({} runs)", list.empty() ? "" : ", ", s, n);
    if (n > most) most = n, keep = s;
  }
  problems.push_back(fmt::format("results of different scenarios are mixed: {}; this report covers '{}' only "
                                 "(render each scenario's results separately)",
                                 list, keep));
  keepSummariesOf(keep);
  for (size_t i = 0; i < set.runs.size(); ++i)
    if (set.runs[i].scenario == keep) {
      out.records.push_back(set.records[i]);
      out.runs.push_back(set.runs[i]);
    }
  relink(out);
  return out;
}

std::string renderHtml(const RunSet& in, const ReportOptions& opts, std::vector<std::string>& problems) {
  Model m = buildModel(in, opts, problems);
  std::string title = opts.title.empty() ? "crbench: " + m.scenario : opts.title;
  std::string o = "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>" + esc(title) +
                  "</title><style>" + kCss + "</style></head><body>\n<h1>" + esc(title) + "</h1>\n";
  std::vector<std::string> allProblems = m.set.problems;
  allProblems.insert(allProblems.end(), problems.begin(), problems.end());
  if (!allProblems.empty()) {
    o += "<div class=\"problems\" id=\"problems\"><h2>Input problems</h2><ul>";
    for (auto& p : allProblems) o += "<li>" + esc(p) + "</li>";
    o += "</ul></div>\n";
  }
  o += "<h2 id=\"environment\">Environment</h2><table>";
  for (auto& [k, v] : envRows(m)) o += "<tr><th>" + esc(k) + "</th><td>" + esc(v) + "</td></tr>";
  o += "</table>\n";
  auto loads = loadRows(m);
  if (!loads.empty()) {
    o += "<h3 id=\"load\">Machine load per group (1-minute load average; the machine has " +
         esc(m.env.contains("cores") ? paramValue(m.env["cores"]) : std::string("?")) +
         " cores)</h3><table class=\"load\"><tr><th>runtime/engine/mode</th><th>at run start</th><th>at run end</th></tr>";
    for (auto& r : loads) o += "<tr><td>" + esc(r[0]) + "</td><td>" + esc(r[1]) + "</td><td>" + esc(r[2]) + "</td></tr>";
    o += "</table>\n";
  }
  o += "<h2 id=\"reproduce\">Reproduce</h2><pre><code>" + esc(reproduceText(m, opts)) + "</code></pre>\n";
  o += "<p>Every figure below was measured in the runs listed; downtime is the longest gap between "
       "replies of the host-side UDP prober (engine-neutral). Lower is better for every metric. The 95% "
       "confidence interval of the median is the distribution-free order-statistic interval; it needs at "
       "least 6 samples.</p>\n";
  for (auto& met : reportMetrics()) {
    auto rows = metricRows(m, met);
    o += fmt::format("<h2 id=\"{}\">{} ({}) — lower is better</h2>\n", met.id, esc(met.title), met.unit);
    if (rows.empty()) {
      o += "<p class=\"na\">No successful run measured this.</p>\n";
      continue;
    }
    o += fmt::format("<table class=\"metric\" data-metric=\"{}\"><tr><th>runtime</th><th>engine</th><th>mode</th>{}<th>median</th>"
                     "<th>95% CI of median</th><th>min</th><th>max</th><th>n</th><th>ratio to best</th></tr>",
                     met.id, m.varying.empty() ? "" : "<th>parameters</th>");
    for (auto& r : rows)
      o += fmt::format("<tr><td>{}</td><td>{}</td><td>{}</td>{}<td class=num>{}</td><td class=num>{}</td><td class=num>{}</td>"
                       "<td class=num>{}</td><td class=num>{}</td><td class=num>{}</td></tr>",
                       esc(r.g->runtime), esc(r.g->engine), esc(r.g->mode),
                       m.varying.empty() ? "" : "<td>" + esc(r.g->paramsLabel) + "</td>", fmtNum(r.s.median), ciText(r.s),
                       fmtNum(r.s.min), fmtNum(r.s.max), r.s.n, ratioText(r.ratio));
    o += "</table>\n" + stripChart(met, m.groups, m.engineIdx) + "\n";
  }
  for (auto& p : m.varying)
    for (auto& met : reportMetrics())
      if (met.id == "downtime_ms" || met.id == "image_bytes" || met.id == "checkpoint_ms") {
        auto c = scalingChart(met, p, m.set.runs, m.engineIdx);
        if (!c.empty()) o += fmt::format("<h3>{} against {}</h3>\n{}\n", esc(met.title), esc(p), c);
      }
  o += "<h2 id=\"trace\">Probe trace around a checkpoint</h2>\n<p>One run per group (the one with the median "
       "downtime): probe round-trip times before, during and after the checkpoint; the empty stretch between "
       "the marks is the downtime.</p>\n";
  for (auto& g : m.groups) {
    std::vector<const RunView*> ok;
    for (auto* r : g.runs)
      if (r->status == "ok" && r->downtimeMs) ok.push_back(r);
    if (ok.empty()) continue;
    std::sort(ok.begin(), ok.end(), [](auto* a, auto* b) { return *a->downtimeMs < *b->downtimeMs; });
    const RunView* r = ok[ok.size() / 2];
    auto c = traceChart(*r);
    if (!c.empty()) o += fmt::format("<h3>{} — run {} (downtime {} ms)</h3>\n{}\n", esc(g.key), esc(r->runId), fmtNum(*r->downtimeMs), c);
  }
  std::vector<std::string> names;
  auto cells = fidelityMatrix(m, names);
  o += "<h2 id=\"fidelity\">Fidelity (check × engine)</h2>\n<table class=\"fidelity\"><tr><th>check</th>";
  auto cols = ranGroups(m);
  for (auto* g : cols) o += "<th>" + esc(g->key) + "</th>";
  o += "</tr>";
  for (auto& n : names) {
    o += "<tr><th>" + esc(n) + "</th>";
    for (auto* gp : cols) {
      const Group& g = *gp;
      const Cell* c = cells.count(n) && cells[n].count(g.key) ? &cells[n][g.key] : nullptr;
      std::string cls = !c || c->pass + c->fail == 0 ? "na" : c->fail ? "fail" : "pass";
      o += fmt::format("<td class=\"{}\" title=\"{}\">{}</td>", cls, esc(c ? c->detail : g.reason), esc(cellText(c, g)));
    }
    o += "</tr>";
  }
  o += "</table>\n";
  auto refused = unsupportedRows(m);
  o += "<h2 id=\"unsupported\">Not supported here</h2>\n";
  if (refused.empty()) {
    o += "<p>None.</p>\n";
  } else {
    o += "<table class=\"unsupported\"><tr><th>runtime/engine/mode</th><th>reason</th></tr>";
    for (auto& [k, why] : refused) o += "<tr><td>" + esc(k) + "</td><td>" + esc(why) + "</td></tr>";
    o += "</table>\n";
  }
  o += "<h2 id=\"failed\">Failed runs</h2>\n";
  std::string failed;
  for (auto& r : m.set.runs)
    if (r.status == "failed")
      failed += fmt::format("<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>", esc(r.runId), esc(r.key()),
                            esc(r.status), esc(r.errorPhase), esc(r.error));
  o += failed.empty() ? "<p>None.</p>\n"
                      : "<table class=\"failed\"><tr><th>run</th><th>runtime/engine/mode</th><th>status</th><th>phase</th><th>reason</th></tr>" +
                            failed + "</table>\n";
  o += fmt::format("<p class=\"na\">{} runs from {} input(s); generated by crbench report.</p></body></html>\n", m.set.runs.size(),
                   m.set.inputs.size());
  return o;
}

std::string renderMarkdown(const RunSet& in, const ReportOptions& opts, std::vector<std::string>& problems) {
  Model m = buildModel(in, opts, problems);
  std::string o = "# " + (opts.title.empty() ? "crbench: " + m.scenario : opts.title) + "\n\n";
  std::vector<std::string> allProblems = m.set.problems;
  allProblems.insert(allProblems.end(), problems.begin(), problems.end());
  if (!allProblems.empty()) {
    o += "## Input problems\n\n";
    for (auto& p : allProblems) o += "- " + p + "\n";
    o += "\n";
  }
  o += "## Environment\n\n| | |\n|---|---|\n";
  for (auto& [k, v] : envRows(m)) o += "| " + mdCell(k) + " | " + mdCell(v) + " |\n";
  auto loads = loadRows(m);
  if (!loads.empty()) {
    o += "\n### Machine load per group (1-minute load average)\n\n| runtime/engine/mode | at run start | at run end |\n|---|---|---|\n";
    for (auto& r : loads) o += "| " + mdCell(r[0]) + " | " + mdCell(r[1]) + " | " + mdCell(r[2]) + " |\n";
  }
  o += "\n## Reproduce\n\n```\n" + reproduceText(m, opts) + "\n```\n\nLower is better for every metric. Downtime is the longest "
       "gap between replies of the host-side UDP prober. The 95% CI of the median is the order-statistic "
       "interval (needs n ≥ 6). Charts are in report.html.\n\n";
  for (auto& met : reportMetrics()) {
    auto rows = metricRows(m, met);
    o += fmt::format("## {} ({}) — lower is better\n\n", met.title, met.unit);
    if (rows.empty()) {
      o += "No successful run measured this.\n\n";
      continue;
    }
    o += std::string("| runtime | engine | mode | ") + (m.varying.empty() ? "" : "parameters | ") +
         "median | 95% CI | min | max | n | ratio to best |\n|---|---|---|" + (m.varying.empty() ? "" : "---|") +
         "---:|---:|---:|---:|---:|---:|\n";
    for (auto& r : rows)
      o += fmt::format("| {} | {} | {} | {}{} | {} | {} | {} | {} | {} |\n", r.g->runtime, r.g->engine, r.g->mode,
                       m.varying.empty() ? "" : mdCell(r.g->paramsLabel) + " | ", fmtNum(r.s.median), ciText(r.s),
                       fmtNum(r.s.min), fmtNum(r.s.max), r.s.n, ratioText(r.ratio));
    o += "\n";
  }
  std::vector<std::string> names;
  auto cells = fidelityMatrix(m, names);
  o += "## Fidelity (check × engine)\n\n| check |";
  auto cols = ranGroups(m);
  for (auto* g : cols) o += " " + mdCell(g->key) + " |";
  o += "\n|---|";
  for (size_t i = 0; i < cols.size(); ++i) o += "---|";
  o += "\n";
  for (auto& n : names) {
    o += "| " + n + " |";
    for (auto* g : cols) {
      const Cell* c = cells.count(n) && cells[n].count(g->key) ? &cells[n][g->key] : nullptr;
      o += " " + cellText(c, *g) + " |";
    }
    o += "\n";
  }
  auto refused = unsupportedRows(m);
  o += "\n## Not supported here\n\n";
  if (refused.empty()) {
    o += "None.\n";
  } else {
    o += "| runtime/engine/mode | reason |\n|---|---|\n";
    for (auto& [k, why] : refused) o += "| " + mdCell(k) + " | " + mdCell(why) + " |\n";
  }
  o += "\n## Failed runs\n\n";
  std::string failed;
  for (auto& r : m.set.runs)
    if (r.status == "failed")
      failed += fmt::format("| {} | {} | {} | {} | {} |\n", r.runId, r.key(), r.status, r.errorPhase, mdCell(r.error));
  o += failed.empty() ? "None.\n" : "| run | runtime/engine/mode | status | phase | reason |\n|---|---|---|---|---|\n" + failed;
  return o;
}

Result<ReportOutput> writeReport(const RunSet& set, const ReportOptions& opts, const fs::path& dir) {
  if (set.runs.empty()) {
    std::string why;
    for (auto& p : set.problems) why += "\n  " + p;
    return makeError("no readable run records among the inputs" + why,
                     "pass result files or directories written by crbench run/compare (results/runs/*.json)");
  }
  CRB_CHECK(makeDirs(dir));
  ReportOutput out;
  std::vector<std::string> problems;
  std::string html = renderHtml(set, opts, problems);
  std::vector<std::string> mdProblems;
  std::string md = renderMarkdown(set, opts, mdProblems);
  out.html = dir / "report.html";
  out.markdown = dir / "report.md";
  CRB_CHECK(writeFileAtomic(out.html, html));
  CRB_CHECK(writeFileAtomic(out.markdown, md));
  out.problems = set.problems;
  out.problems.insert(out.problems.end(), problems.begin(), problems.end());
  out.runs = set.runs.size();
  return out;
}

}  // namespace crb
