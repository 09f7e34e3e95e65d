#include "scenario/scenario.hpp"

#include <fmt/ranges.h>
#include <toml++/toml.h>

#include <algorithm>
#include <cmath>
#include <set>
#include <sstream>

#include "core/fsutil.hpp"
#include "core/paths.hpp"

namespace crb {

namespace {

constexpr const char* kFormatHint = "see docs/scenarios.md for the scenario file format";

// Builds errors that name the file, the line and the key, so a user can jump straight to it.
class Ctx {
 public:
  explicit Ctx(std::filesystem::path file) : file_(std::move(file)) {}

  Error at(const toml::source_region& where, const std::string& key, const std::string& what,
           std::string hint = kFormatHint) const {
    std::string loc = file_.string();
    if (where.begin.line > 0) loc += fmt::format(":{}", where.begin.line);
    return makeError(fmt::format("scenario file {}: key '{}': {}", loc, key, what), std::move(hint));
  }
  Error file(const std::string& what, std::string hint = kFormatHint) const {
    return makeError(fmt::format("scenario file {}: {}", file_.string(), what), std::move(hint));
  }

 private:
  std::filesystem::path file_;
};

std::string typeName(const toml::node& n) {
  switch (n.type()) {
    case toml::node_type::string: return "a string";
    case toml::node_type::integer: return "an integer";
    case toml::node_type::floating_point: return "a float";
    case toml::node_type::boolean: return "a boolean";
    case toml::node_type::array: return "an array";
    case toml::node_type::table: return "a table";
    case toml::node_type::date: return "a date";
    case toml::node_type::time: return "a time";
    case toml::node_type::date_time: return "a date-time";
    default: return "nothing";
  }
}

// Rejects keys the format does not know: a typo ("argv" as "args") would otherwise be silently
// ignored and the scenario would run something else than the user wrote.
Status checkKeys(const Ctx& ctx, const toml::table& t, const std::string& prefix,
                 const std::set<std::string>& allowed) {
  for (auto&& [k, v] : t) {
    if (allowed.count(std::string(k.str()))) continue;
    std::string list;
    for (auto& a : allowed) list += (list.empty() ? "" : ", ") + a;
    return ctx.at(k.source(), prefix + std::string(k.str()), "unknown key; expected one of: " + list);
  }
  return success();
}

Result<std::string> getString(const Ctx& ctx, const toml::node& n, const std::string& key) {
  if (auto s = n.as_string()) return std::string(s->get());
  return ctx.at(n.source(), key, "expected a string, got " + typeName(n));
}

Result<std::vector<std::string>> getStringArray(const Ctx& ctx, const toml::node& n,
                                                const std::string& key) {
  auto arr = n.as_array();
  if (!arr) return ctx.at(n.source(), key, "expected an array of strings, got " + typeName(n));
  std::vector<std::string> out;
  for (size_t i = 0; i < arr->size(); ++i) {
    const toml::node& e = *arr->get(i);
    auto s = e.as_string();
    if (!s)
      return ctx.at(e.source(), fmt::format("{}[{}]", key, i),
                    "expected a string, got " + typeName(e) + " (quote numbers: \"10\")");
    out.emplace_back(s->get());
  }
  return out;
}

Result<double> getNumber(const Ctx& ctx, const toml::node& n, const std::string& key) {
  if (auto i = n.as_integer()) return static_cast<double>(i->get());
  if (auto f = n.as_floating_point()) return f->get();
  return ctx.at(n.source(), key, "expected a number, got " + typeName(n));
}

Result<int64_t> getInt(const Ctx& ctx, const toml::node& n, const std::string& key, int64_t lo,
                       int64_t hi) {
  auto i = n.as_integer();
  if (!i) return ctx.at(n.source(), key, "expected an integer, got " + typeName(n));
  if (i->get() < lo || i->get() > hi)
    return ctx.at(n.source(), key, fmt::format("{} is out of range; expected {}..{}", i->get(), lo, hi));
  return i->get();
}

Result<bool> getBool(const Ctx& ctx, const toml::node& n, const std::string& key) {
  if (auto b = n.as_boolean()) return b->get();
  return ctx.at(n.source(), key, "expected true or false, got " + typeName(n));
}

Result<Json> paramValueFromToml(const Ctx& ctx, const toml::node& n, const std::string& key) {
  if (auto i = n.as_integer()) return Json(i->get());
  if (auto f = n.as_floating_point()) return Json(f->get());
  if (auto s = n.as_string()) return Json(std::string(s->get()));
  if (auto b = n.as_boolean()) return Json(b->get());
  return ctx.at(n.source(), key,
                "expected an integer, float, string or boolean default, got " + typeName(n));
}

std::string jsonTypeName(const Json& j) {
  if (j.is_number_integer()) return "integer";
  if (j.is_number_float()) return "float";
  if (j.is_boolean()) return "boolean (true/false)";
  return "string";
}

std::string paramText(const Json& v) {
  if (v.is_string()) return v.get<std::string>();
  if (v.is_number_float()) {
    double d = v.get<double>();
    if (std::isfinite(d) && d == std::floor(d) && std::fabs(d) < 1e15) return fmt::format("{:.1f}", d);
    return fmt::format("{}", d);
  }
  return v.dump();
}

// Parses an override value to the declared parameter's type, so "--param hz=fast" fails here with
// the parameter named instead of inside the sandbox as a confusing workload crash.
Result<Json> parseOverrideValue(const std::string& text, const Json& def) {
  try {
    size_t used = 0;
    if (def.is_number_integer()) {
      long long v = std::stoll(text, &used, 0);
      if (used == text.size()) return Json(v);
    } else if (def.is_number_float()) {
      double v = std::stod(text, &used);
      if (used == text.size()) return Json(v);
    } else if (def.is_boolean()) {
      if (text == "true" || text == "1" || text == "yes") return Json(true);
      if (text == "false" || text == "0" || text == "no") return Json(false);
    } else {
      return Json(text);
    }
  } catch (const std::exception&) {
  }
  return makeError(fmt::format("'{}' is not a valid {}", text, jsonTypeName(def)));
}

// Replaces {name} with the parameter's value; "{{" and "}}" are literal braces.
Result<std::string> substitute(const std::string& in, const Json& params) {
  std::string out;
  for (size_t i = 0; i < in.size(); ++i) {
    char c = in[i];
    if (c == '{' && i + 1 < in.size() && in[i + 1] == '{') {
      out += '{';
      ++i;
    } else if (c == '}' && i + 1 < in.size() && in[i + 1] == '}') {
      out += '}';
      ++i;
    } else if (c == '{') {
      size_t end = in.find('}', i);
      if (end == std::string::npos)
        return makeError(fmt::format("unclosed '{{' in \"{}\"", in), "write {{ for a literal brace");
      std::string name = in.substr(i + 1, end - i - 1);
      if (!params.contains(name)) {
        std::string known;
        for (auto& [k, v] : params.items()) known += (known.empty() ? "" : ", ") + k;
        return makeError(fmt::format("\"{}\" uses undeclared parameter {{{}}}", in, name),
                         known.empty() ? "declare it under [params]"
                                       : "declare it under [params]; declared: " + known);
      }
      out += paramText(params[name]);
      i = end;
    } else {
      out += c;
    }
  }
  return out;
}

Status substituteAll(const Ctx& ctx, const toml::node& where, const std::string& key,
                     std::vector<std::string>& argv, const Json& params) {
  for (auto& a : argv) {
    auto r = substitute(a, params);
    if (!r.ok()) return ctx.at(where.source(), key, r.error().message, r.error().hint);
    a = std::move(r).value();
  }
  return success();
}

Status parseParams(const Ctx& ctx, const toml::table& root, Scenario& s) {
  auto node = root.get("params");
  if (!node) return success();
  auto t = node->as_table();
  if (!t) return ctx.at(node->source(), "params", "expected a table ([params]), got " + typeName(*node));
  for (auto&& [k, v] : *t) {
    std::string key = "params." + std::string(k.str());
    ScenarioParam p;
    p.name = std::string(k.str());
    if (auto pt = v.as_table()) {
      // Long form: [params.x] default = .., description = ".."
      CRB_CHECK(checkKeys(ctx, *pt, key + ".", {"default", "description"}));
      auto d = pt->get("default");
      if (!d) return ctx.at(v.source(), key, "missing 'default' (its type is the parameter's type)");
      CRB_ASSIGN(p.defaultValue, paramValueFromToml(ctx, *d, key + ".default"));
      if (auto desc = pt->get("description")) {
        CRB_ASSIGN(p.description, getString(ctx, *desc, key + ".description"));
      }
    } else {
      CRB_ASSIGN(p.defaultValue, paramValueFromToml(ctx, v, key));
    }
    s.params[p.name] = p.defaultValue;
    s.paramSpecs.push_back(std::move(p));
  }
  return success();
}

Status applyOverrides(const Ctx& ctx, const std::vector<std::string>& overrides, Scenario& s) {
  for (auto& o : overrides) {
    auto eq = o.find('=');
    if (eq == std::string::npos || eq == 0)
      return makeError(fmt::format("parameter override '{}' is not key=value", o),
                       "write --param name=value");
    std::string key = o.substr(0, eq);
    std::string val = o.substr(eq + 1);
    if (!s.params.contains(key)) {
      std::string known;
      for (auto& p : s.paramSpecs) known += (known.empty() ? "" : ", ") + p.name;
      return ctx.file(fmt::format("parameter override '{}': scenario '{}' declares no parameter '{}'",
                                  o, s.name, key),
                      known.empty() ? "this scenario takes no parameters" : "declared parameters: " + known);
    }
    auto v = parseOverrideValue(val, s.params[key]);
    if (!v.ok())
      return ctx.file(fmt::format("parameter override '{}': {}", o, v.error().message),
                      fmt::format("parameter '{}' has type {} (default {})", key,
                                  jsonTypeName(s.params[key]), paramText(s.params[key])));
    s.params[key] = std::move(v).value();
  }
  return success();
}

Result<ScenarioProgram> parseProgram(const Ctx& ctx, const toml::node& n, const std::string& key,
                                     const Json& params) {
  auto t = n.as_table();
  if (!t) return ctx.at(n.source(), key, "expected a table ([[programs]]), got " + typeName(n));
  CRB_CHECK(checkKeys(ctx, *t, key + ".", {"name", "argv", "env", "restart", "start_delay"}));
  ScenarioProgram p;
  auto name = t->get("name");
  if (!name) return ctx.at(n.source(), key + ".name", "missing; every program needs a name");
  CRB_ASSIGN(p.name, getString(ctx, *name, key + ".name"));
  auto argv = t->get("argv");
  if (!argv) return ctx.at(n.source(), key + ".argv", "missing; expected the command to run as an array of strings");
  CRB_ASSIGN(p.argv, getStringArray(ctx, *argv, key + ".argv"));
  if (p.argv.empty() || p.argv[0].empty())
    return ctx.at(argv->source(), key + ".argv", "is empty; expected at least the program path");
  CRB_CHECK(substituteAll(ctx, *argv, key + ".argv", p.argv, params));
  if (auto env = t->get("env")) {
    auto et = env->as_table();
    if (!et) return ctx.at(env->source(), key + ".env", "expected a table of strings, got " + typeName(*env));
    for (auto&& [ek, ev] : *et) {
      std::string ekey = key + ".env." + std::string(ek.str());
      CRB_ASSIGN(std::string val, getString(ctx, ev, ekey));
      auto sub = substitute(val, params);
      if (!sub.ok()) return ctx.at(ev.source(), ekey, sub.error().message, sub.error().hint);
      p.env[std::string(ek.str())] = *sub;
    }
  }
  if (auto r = t->get("restart")) {
    CRB_ASSIGN(p.restartOnExit, getBool(ctx, *r, key + ".restart"));
  }
  if (auto d = t->get("start_delay")) {
    CRB_ASSIGN(p.startDelaySeconds, getNumber(ctx, *d, key + ".start_delay"));
    if (p.startDelaySeconds < 0 || p.startDelaySeconds > 600)
      return ctx.at(d->source(), key + ".start_delay", "expected seconds between 0 and 600");
  }
  return p;
}

Result<ScenarioCheck> parseCheck(const Ctx& ctx, const toml::node& n, const std::string& key,
                                 const Json& params) {
  auto t = n.as_table();
  if (!t) return ctx.at(n.source(), key, "expected a table ([[checks]]), got " + typeName(n));
  bool ready = key == "ready";
  CRB_CHECK(checkKeys(ctx, *t, key + ".", ready ? std::set<std::string>{"argv", "timeout_s", "description"}
                                                 : std::set<std::string>{"name", "argv", "expect", "description", "timeout_s"}));
  ScenarioCheck c;
  auto name = t->get("name");
  if (ready) {
    c.name = "ready";
    c.expect = "exit-zero";
    c.timeoutSeconds = 120;
  } else if (!name) {
    return ctx.at(n.source(), key + ".name", "missing; every check needs a name");
  } else {
    CRB_ASSIGN(c.name, getString(ctx, *name, key + ".name"));
  }
  if (auto to = t->get("timeout_s")) {
    CRB_ASSIGN(c.timeoutSeconds, getNumber(ctx, *to, key + ".timeout_s"));
    if (c.timeoutSeconds < 1 || c.timeoutSeconds > 3600)
      return ctx.at(to->source(), key + ".timeout_s", "expected seconds between 1 and 3600");
  }
  auto argv = t->get("argv");
  if (!argv) return ctx.at(n.source(), key + ".argv", "missing; expected the command to run as an array of strings");
  CRB_ASSIGN(c.argv, getStringArray(ctx, *argv, key + ".argv"));
  if (c.argv.empty()) return ctx.at(argv->source(), key + ".argv", "is empty; expected at least the program path");
  CRB_CHECK(substituteAll(ctx, *argv, key + ".argv", c.argv, params));
  if (auto e = t->get("expect")) {
    CRB_ASSIGN(c.expect, getString(ctx, *e, key + ".expect"));
    static const std::set<std::string> kinds{"same", "increases", "changed", "exit-zero"};
    if (!kinds.count(c.expect))
      return ctx.at(e->source(), key + ".expect",
                    fmt::format("'{}' is not a check kind; expected same, increases, changed or exit-zero", c.expect));
  }
  if (auto d = t->get("description")) {
    CRB_ASSIGN(c.description, getString(ctx, *d, key + ".description"));
  }
  return c;
}

template <class T, class F>
Status parseTableArray(const Ctx& ctx, const toml::table& root, const std::string& key,
                       std::vector<T>& out, F&& parseOne) {
  auto node = root.get(key);
  if (!node) return success();
  auto arr = node->as_array();
  if (!arr) return ctx.at(node->source(), key, fmt::format("expected an array of tables ([[{}]]), got {}", key, typeName(*node)));
  std::set<std::string> names;
  for (size_t i = 0; i < arr->size(); ++i) {
    std::string k = fmt::format("{}[{}]", key, i);
    CRB_ASSIGN(T item, parseOne(*arr->get(i), k));
    if (!names.insert(item.name).second)
      return ctx.at(arr->get(i)->source(), k + ".name", fmt::format("duplicate name '{}'; names must be unique", item.name));
    out.push_back(std::move(item));
  }
  return success();
}

// [rest_of_system]: values may use {param}, so a port follows the scenario's own parameter.
Status parseRestOfSystem(const Ctx& ctx, const toml::table& root, Scenario& s) {
  auto node = root.get("rest_of_system");
  if (!node) return success();
  auto t = node->as_table();
  if (!t) return ctx.at(node->source(), "rest_of_system", "expected a table ([rest_of_system]), got " + typeName(*node));
  CRB_CHECK(checkKeys(ctx, *t, "rest_of_system.",
                      {"tcp_peer_port", "tcp_peer_protocol", "clock", "clock_tolerance_ms", "dbus_bus", "dbus_name"}));
  RestOfSystemSpec& r = s.restOfSystem;
  auto text = [&](const char* key) -> Result<std::string> {
    const toml::node& n = *t->get(key);
    std::string k = std::string("rest_of_system.") + key;
    std::string raw;
    if (n.is_integer()) {
      raw = std::to_string(n.value<int64_t>().value_or(0));
    } else {
      CRB_ASSIGN(raw, getString(ctx, n, k));
    }
    auto sub = substitute(raw, s.params);
    if (!sub.ok()) return ctx.at(n.source(), k, sub.error().message, sub.error().hint);
    return std::move(sub).value();
  };
  if (t->get("tcp_peer_port")) {
    CRB_ASSIGN(std::string v, text("tcp_peer_port"));
    char* end = nullptr;
    long port = std::strtol(v.c_str(), &end, 10);
    if (v.empty() || *end != '\0' || port < 1 || port > 65535)
      return ctx.at(t->get("tcp_peer_port")->source(), "rest_of_system.tcp_peer_port",
                    fmt::format("'{}' is not a TCP port (1..65535)", v));
    r.tcpPeerPort = static_cast<int>(port);
    r.tcpPeerProtocol = "line-echo";
  }
  if (auto p = t->get("tcp_peer_protocol")) {
    CRB_ASSIGN(r.tcpPeerProtocol, getString(ctx, *p, "rest_of_system.tcp_peer_protocol"));
    if (r.tcpPeerProtocol != "redis" && r.tcpPeerProtocol != "line-echo")
      return ctx.at(p->source(), "rest_of_system.tcp_peer_protocol",
                    fmt::format("'{}' is not a peer protocol; expected \"redis\" or \"line-echo\"", r.tcpPeerProtocol));
    if (r.tcpPeerPort == 0)
      return ctx.at(p->source(), "rest_of_system.tcp_peer_protocol", "given without tcp_peer_port");
  }
  if (auto c = t->get("clock")) {
    CRB_ASSIGN(r.clock, getBool(ctx, *c, "rest_of_system.clock"));
  }
  if (auto c = t->get("clock_tolerance_ms")) {
    CRB_ASSIGN(r.clockToleranceMs, getNumber(ctx, *c, "rest_of_system.clock_tolerance_ms"));
    if (r.clockToleranceMs < 0)
      return ctx.at(c->source(), "rest_of_system.clock_tolerance_ms", "must be >= 0");
  }
  if (t->get("dbus_bus")) {
    CRB_ASSIGN(r.dbusBus, text("dbus_bus"));
  }
  if (t->get("dbus_name")) {
    CRB_ASSIGN(r.dbusName, text("dbus_name"));
  }
  if (r.dbusName.empty() != r.dbusBus.empty())
    return ctx.at(node->source(), "rest_of_system", "dbus_bus and dbus_name go together; give both or neither");
  return success();
}

Status parseBody(const Ctx& ctx, const toml::table& root, Scenario& s,
                 const std::vector<std::string>& overrides) {
  CRB_CHECK(checkKeys(ctx, root, "",
                      {"name", "description", "binaries", "files", "runtimes", "host_packages",
                       "digest", "params", "programs", "checks", "vm", "rest_of_system", "ready"}));
  if (auto n = root.get("name")) {
    CRB_ASSIGN(s.name, getString(ctx, *n, "name"));
    if (s.name.empty() || s.name.find_first_of("/ \t") != std::string::npos)
      return ctx.at(n->source(), "name", "expected a non-empty name without '/' or spaces");
  }
  if (auto d = root.get("description")) {
    CRB_ASSIGN(s.description, getString(ctx, *d, "description"));
  }
  CRB_CHECK(parseParams(ctx, root, s));
  CRB_CHECK(applyOverrides(ctx, overrides, s));

  if (auto b = root.get("binaries")) {
    CRB_ASSIGN(s.binaries, getStringArray(ctx, *b, "binaries"));
    for (size_t i = 0; i < s.binaries.size(); ++i) {
      auto& x = s.binaries[i];
      if (!(x.rfind("@build/", 0) == 0 && x.size() > 7) && (x.empty() || x[0] != '/'))
        return ctx.at(b->source(), fmt::format("binaries[{}]", i),
                      fmt::format("'{}' is neither \"@build/<path in the build dir>\" nor an absolute host path", x));
    }
  }
  if (auto f = root.get("files")) {
    CRB_ASSIGN(s.files, getStringArray(ctx, *f, "files"));
    for (size_t i = 0; i < s.files.size(); ++i)
      if (s.files[i].empty() || s.files[i][0] != '/')
        return ctx.at(f->source(), fmt::format("files[{}]", i),
                      fmt::format("'{}' is not an absolute host path", s.files[i]));
  }
  if (auto r = root.get("runtimes")) {
    CRB_ASSIGN(s.runtimes, getStringArray(ctx, *r, "runtimes"));
    if (s.runtimes.empty()) return ctx.at(r->source(), "runtimes", "is empty; expected \"container\" and/or \"vm\"");
    for (auto& x : s.runtimes)
      if (x != "container" && x != "vm")
        return ctx.at(r->source(), "runtimes", fmt::format("'{}' is not a runtime; expected \"container\" or \"vm\"", x));
  }
  if (auto p = root.get("host_packages")) {
    CRB_ASSIGN(s.requiredHostPackages, getStringArray(ctx, *p, "host_packages"));
  }
  if (auto d = root.get("digest")) {
    CRB_ASSIGN(s.digest, getStringArray(ctx, *d, "digest"));
    CRB_CHECK(substituteAll(ctx, *d, "digest", s.digest, s.params));
  }
  if (auto vm = root.get("vm")) {
    auto t = vm->as_table();
    if (!t) return ctx.at(vm->source(), "vm", "expected a table ([vm]), got " + typeName(*vm));
    CRB_CHECK(checkKeys(ctx, *t, "vm.", {"memory_mib", "cpus"}));
    if (auto m = t->get("memory_mib")) {
      CRB_ASSIGN(int64_t v, getInt(ctx, *m, "vm.memory_mib", 64, 65536));
      s.vmMemoryMiB = static_cast<int>(v);
    }
    if (auto c = t->get("cpus")) {
      CRB_ASSIGN(int64_t v, getInt(ctx, *c, "vm.cpus", 1, 64));
      s.vmCpus = static_cast<int>(v);
    }
  }
  CRB_CHECK(parseRestOfSystem(ctx, root, s));
  CRB_CHECK(parseTableArray<ScenarioProgram>(ctx, root, "programs", s.programs,
      [&](const toml::node& n, const std::string& k) { return parseProgram(ctx, n, k, s.params); }));
  if (s.programs.empty())
    return ctx.file("no [[programs]]; expected at least one program for the agent to start");
  CRB_CHECK(parseTableArray<ScenarioCheck>(ctx, root, "checks", s.checks,
      [&](const toml::node& n, const std::string& k) { return parseCheck(ctx, n, k, s.params); }));
  if (auto r = root.get("ready")) {
    CRB_ASSIGN(auto c, parseCheck(ctx, *r, "ready", s.params));
    s.ready = std::move(c);
  }
  return success();
}

}  // namespace

Json Scenario::toJson() const {
  Json j;
  j["name"] = name;
  j["description"] = description;
  j["file"] = file.string();
  j["binaries"] = binaries;
  j["files"] = files;
  j["programs"] = Json::array();
  for (auto& p : programs)
    j["programs"].push_back({{"name", p.name},
                             {"argv", p.argv},
                             {"env", p.env},
                             {"restart_on_exit", p.restartOnExit},
                             {"start_delay_s", p.startDelaySeconds}});
  j["checks"] = Json::array();
  for (auto& c : checks)
    j["checks"].push_back({{"name", c.name}, {"argv", c.argv}, {"expect", c.expect}, {"description", c.description},
                           {"timeout_s", c.timeoutSeconds}});
  if (ready) j["ready"] = {{"argv", ready->argv}, {"timeout_s", ready->timeoutSeconds}, {"description", ready->description}};
  j["digest"] = digest;
  j["runtimes"] = runtimes;
  j["host_packages"] = requiredHostPackages;
  j["vm"] = {{"memory_mib", vmMemoryMiB}, {"cpus", vmCpus}};
  if (restOfSystem.any())
    j["rest_of_system"] = {{"tcp_peer_port", restOfSystem.tcpPeerPort},
                           {"tcp_peer_protocol", restOfSystem.tcpPeerProtocol},
                           {"clock", restOfSystem.clock},
                           {"clock_tolerance_ms", restOfSystem.clockToleranceMs},
                           {"dbus_bus", restOfSystem.dbusBus},
                           {"dbus_name", restOfSystem.dbusName}};
  j["params"] = params;
  return j;
}

Result<Scenario> parseScenario(const std::string& text, const std::filesystem::path& file,
                               const std::vector<std::string>& overrides) {
  Ctx ctx(file);
  toml::table root;
  try {
    root = toml::parse(text, file.string());
  } catch (const toml::parse_error& e) {
    return makeError(fmt::format("scenario file {}:{}:{}: not valid TOML: {}", file.string(),
                                 e.source().begin.line, e.source().begin.column, e.description()),
                     kFormatHint);
  }
  Scenario s;
  s.file = file;
  s.name = file.stem().string();
  CRB_CHECK(parseBody(ctx, root, s, overrides));
  return s;
}

std::vector<std::string> listScenarios() {
  std::vector<std::string> out;
  std::error_code ec;
  for (auto& e : fs::directory_iterator(projectRoot() / "scenarios", ec))
    if (e.path().extension() == ".toml") out.push_back(e.path().stem().string());
  std::sort(out.begin(), out.end());
  return out;
}

Result<Scenario> loadScenario(const std::string& nameOrPath, const std::vector<std::string>& overrides) {
  if (nameOrPath.empty()) return makeError("no scenario given", "name one of: " + fmt::format("{}", fmt::join(listScenarios(), ", ")));
  bool isPath = nameOrPath.find('/') != std::string::npos ||
                (nameOrPath.size() > 5 && nameOrPath.ends_with(".toml"));
  fs::path file = isPath ? fs::path(nameOrPath) : projectRoot() / "scenarios" / (nameOrPath + ".toml");
  std::error_code ec;
  if (!fs::exists(file, ec)) {
    auto names = listScenarios();
    if (isPath) return makeError(fmt::format("scenario file {} does not exist", file.string()),
                                 "give an existing .toml file or a scenario name");
    return makeError(fmt::format("unknown scenario '{}' (no {})", nameOrPath, file.string()),
                     names.empty() ? "no scenarios found under " + (projectRoot() / "scenarios").string()
                                   : "known scenarios: " + fmt::format("{}", fmt::join(names, ", ")));
  }
  auto text = readFile(file);
  if (!text.ok()) return text.error().context("scenario file");
  return parseScenario(*text, file, overrides);
}

}  // namespace crb
