#pragma once
// Results schema v1: one JSON file per run (results/runs/<run-id>.json), documented in
// docs/results.md, JSON Schema in results/schema/run-v1.schema.json. The format lives here only:
// the controller fills a record through these helpers and writes it atomically.
#include <filesystem>
#include <string>

#include "core/json.hpp"
#include "core/result.hpp"

namespace crb {

inline constexpr int kResultsSchemaVersion = 1;
inline constexpr const char* kResultsSchemaName = "crbench-run";

// "<UTC yyyymmddThhmmssZ>-<scenario>-<runtime>-<engine>-<4 random hex>"; only [A-Za-z0-9._-].
std::string newRunId(const std::string& scenario, const std::string& runtime, const std::string& engine);

// The skeleton every record starts from: schema, run id, crbench version and commit, start time.
Json newRunRecord(const std::string& runId);

// Facts about this machine measured now: kernel, CPU model, cores, memory, accelerator
// (kvm/accel.hpp chooseAccelerator()) and versions of host tools crbench drives.
// Also records `load_avg_1m_start`: it is called when a run starts.
Json environmentFacts();

// The 1-minute load average from /proc/loadavg, or null when it cannot be read. Other work on the
// machine moves every timing; a record carries the load so a reader can judge its figures.
Json loadAverage1m();

// Adds environment.load_avg_1m_end to a record whose run has just ended.
void noteRunEnd(Json& record);

// UTC ISO-8601 time with milliseconds.
std::string isoTimeNow();

// Structural check of a record against schema v1 (required keys and types); the JSON Schema
// file says the same for other tools.
Status checkRunRecord(const Json& record);

// Write to <dir>/<run-id>.json atomically; returns the path.
Result<std::filesystem::path> writeRunRecord(const Json& record, const std::filesystem::path& dir);

}  // namespace crb
