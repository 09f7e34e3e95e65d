#include "results/results.hpp"

#include <sys/utsname.h>
#include <time.h>
#include <unistd.h>

#include <fstream>
#include <random>

#include "core/fsutil.hpp"
#include "core/proc.hpp"
#include "crbench_config.h"
#include "crbench_git.h"
#include "kvm/accel.hpp"

namespace crb {

namespace {
std::string safeName(const std::string& s) {
  std::string o;
  for (char c : s) o += (std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_' || c == '-') ? c : '_';
  return o.empty() ? "x" : o;
}

std::string firstLine(const std::string& s) { return s.substr(0, s.find('\n')); }

// `prog --version` first line, or null when the tool is absent.
Json toolVersion(const std::vector<std::string>& argv) {
  RunOptions o;
  o.timeout = std::chrono::seconds(5);
  auto r = runCommand(argv, o);
  if (!r.ok() || !r->succeeded()) return nullptr;
  std::string line = firstLine(r->out.empty() ? r->err : r->out);
  return line.empty() ? Json(nullptr) : Json(line);
}
}  // namespace

std::string isoTimeNow() {
  timespec ts{};
  clock_gettime(CLOCK_REALTIME, &ts);
  struct tm tm {};
  gmtime_r(&ts.tv_sec, &tm);
  char buf[64];
  strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%S", &tm);
  return fmt::format("{}.{:03d}Z", buf, ts.tv_nsec / 1000000);
}

std::string newRunId(const std::string& scenario, const std::string& runtime, const std::string& engine) {
  time_t now = time(nullptr);
  struct tm tm {};
  gmtime_r(&now, &tm);
  char buf[32];
  strftime(buf, sizeof buf, "%Y%m%dT%H%M%SZ", &tm);
  std::random_device rd;
  return fmt::format("{}-{}-{}-{}-{:04x}", buf, safeName(scenario), safeName(runtime), safeName(engine), rd() & 0xffff);
}

Json newRunRecord(const std::string& runId) {
  Json r;
  r["schema"] = kResultsSchemaName;
  r["schema_version"] = kResultsSchemaVersion;
  r["run_id"] = runId;
  r["crbench"] = {{"version", CRBENCH_VERSION}, {"commit", CRBENCH_GIT_COMMIT}};
  r["started_at"] = isoTimeNow();
  r["status"] = "failed";
  r["error"] = nullptr;
  return r;
}

Json loadAverage1m() {
  std::ifstream f("/proc/loadavg");
  double one = 0;
  if (!(f >> one)) return nullptr;
  return one;
}

void noteRunEnd(Json& record) {
  if (!record.contains("environment") || !record["environment"].is_object()) record["environment"] = Json::object();
  record["environment"]["load_avg_1m_end"] = loadAverage1m();
}

Json environmentFacts() {
  Json e;
  e["load_avg_1m_start"] = loadAverage1m();
  struct utsname u {};
  if (::uname(&u) == 0) {
    e["kernel"] = fmt::format("{} {}", u.sysname, u.release);
    e["kernel_version"] = u.version;
    e["machine"] = u.machine;
    e["hostname"] = u.nodename;
  }
  std::ifstream cpu("/proc/cpuinfo");
  std::string line;
  while (std::getline(cpu, line)) {
    if (line.rfind("model name", 0) == 0) {
      e["cpu_model"] = line.substr(line.find(':') + 2);
      break;
    }
  }
  e["cores"] = static_cast<int>(::sysconf(_SC_NPROCESSORS_ONLN));
  e["memory_kib"] = static_cast<long>(::sysconf(_SC_PHYS_PAGES) / 1024 * ::sysconf(_SC_PAGESIZE));
  AccelChoice a = chooseAccelerator();
  e["accelerator"] = {{"accel", a.accel}, {"reason", a.reason}, {"forced", a.forced}};
  Json tools = Json::object();
  tools["qemu"] = toolVersion({"qemu-system-x86_64", "--version"});
  tools["iproute2"] = toolVersion({"ip", "-V"});
  e["tool_versions"] = tools;
  return e;
}

Status checkRunRecord(const Json& r) {
  auto need = [&](const char* key, bool (Json::*is)() const noexcept, const char* type) -> Status {
    if (!r.contains(key) || !(r[key].*is)())
      return makeError(fmt::format("run record: '{}' must be {}", key, type));
    return success();
  };
  CRB_CHECK(need("schema", &Json::is_string, "a string"));
  CRB_CHECK(need("schema_version", &Json::is_number_integer, "an integer"));
  CRB_CHECK(need("run_id", &Json::is_string, "a string"));
  CRB_CHECK(need("crbench", &Json::is_object, "an object"));
  CRB_CHECK(need("environment", &Json::is_object, "an object"));
  CRB_CHECK(need("status", &Json::is_string, "a string"));
  CRB_CHECK(need("runtime", &Json::is_string, "a string"));
  CRB_CHECK(need("engine", &Json::is_string, "a string"));
  CRB_CHECK(need("timings_ms", &Json::is_object, "an object"));
  CRB_CHECK(need("fidelity", &Json::is_object, "an object"));
  if (r["schema_version"] != kResultsSchemaVersion)
    return makeError(fmt::format("run record: schema_version {} is not {}", r["schema_version"].dump(), kResultsSchemaVersion));
  std::string st = r["status"];
  if (st != "ok" && st != "failed" && st != "unsupported")
    return makeError(fmt::format("run record: status '{}' is not ok|failed|unsupported", st));
  if (st != "ok" && !(r.contains("error") && r["error"].is_object()))
    return makeError("run record: a failed or unsupported run must carry an error object");
  return success();
}

Result<std::filesystem::path> writeRunRecord(const Json& record, const std::filesystem::path& dir) {
  CRB_CHECK(checkRunRecord(record));
  CRB_CHECK(checkWritableDir(dir));
  auto path = dir / (record["run_id"].get<std::string>() + ".json");
  CRB_CHECK(writeFileAtomic(path, record.dump(1) + "\n", 0644));
  return path;
}

}  // namespace crb
