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
Json environmentFacts();

// UTC ISO-8601 time with milliseconds.
std::string isoTimeNow();

// Structural check of a record against schema v1 (required keys and types); the JSON Schema
// file says the same for other tools.
Status checkRunRecord(const Json& record);

// Write to <dir>/<run-id>.json atomically; returns the path.
Result<std::filesystem::path> writeRunRecord(const Json& record, const std::filesystem::path& dir);

}  // namespace crb
