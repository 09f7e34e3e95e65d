#pragma once
// A scenario: what workload to run, what the image must carry, which checks prove a good restore.
// Files live in scenarios/<name>.toml; the format is documented in docs/scenarios.md.
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "core/json.hpp"
#include "core/result.hpp"

namespace crb {

struct ScenarioProgram {
  std::string name;
  std::vector<std::string> argv;  // run inside the sandbox by the guest agent
  std::map<std::string, std::string> env;
  bool restartOnExit = false;     // the agent restarts it if it exits (else: exit is recorded)
  double startDelaySeconds = 0;   // wait before starting (ordering: Xvfb before its clients)
};

// A fidelity check: the agent runs `argv` inside the sandbox before the checkpoint and after the
// restore; `expect` says how the two outputs must relate.
struct ScenarioCheck {
  std::string name;
  std::vector<std::string> argv;
  std::string expect = "same";  // same | increases | changed | exit-zero
  std::string description;
  double timeoutSeconds = 10;  // the agent kills the check after this long (timeout_s)
};

// A declared parameter: its type is the type of its default (integer, float, string, boolean).
struct ScenarioParam {
  std::string name;
  Json defaultValue;
  std::string description;
};

// "Rest of the system" checks the scenario asks for (docs/scenarios.md, [rest_of_system]): things
// outside the checkpointed processes that a restore must keep working. Run by host/fidelity.
struct RestOfSystemSpec {
  int tcpPeerPort = 0;              // > 0: a host-side client keeps a connection to this guest port
  std::string tcpPeerProtocol;      // "redis" (ECHO with sequence numbers) | "line-echo"
  bool clock = false;               // measure the workload's CLOCK_REALTIME against the host's
  double clockToleranceMs = 100;    // a larger change of the offset is a failed check
  std::string dbusBus, dbusName;    // non-empty: this bus name must keep its owner
  bool any() const { return tcpPeerPort > 0 || clock || !dbusName.empty(); }
};

struct Scenario {
  std::string name;
  std::string description;
  std::filesystem::path file;
  // Host files to copy into the image with the shared libraries they need. "@build/x" is relative
  // to the build dir (the scenario's own programs), absolute paths are host binaries (e.g. /usr/bin/Xvfb).
  // In the image, "@build/.../x" lands at /usr/local/bin/x; absolute paths keep their path.
  std::vector<std::string> binaries;
  // Host files or directories copied as they are (fonts, config), at the same path in the image.
  std::vector<std::string> files;
  std::vector<ScenarioProgram> programs;
  std::vector<ScenarioCheck> checks;
  std::vector<std::string> digest;             // workload digest command (agent runs it)
  std::vector<std::string> runtimes{"container", "vm"};
  std::vector<std::string> requiredHostPackages;  // Debian packages the image needs on the host
  int vmMemoryMiB = 256;
  int vmCpus = 1;
  Json params = Json::object();  // parameters after overrides; `{name}` in argv is substituted
  std::vector<ScenarioParam> paramSpecs;  // declared parameters with their defaults
  RestOfSystemSpec restOfSystem;
  // [ready]: a command that exits 0 once the workload has reached its steady state (e.g. memory
  // filled); the run waits for it (up to its timeout_s) before the state digest and checkpoint.
  std::optional<ScenarioCheck> ready;
  Json toJson() const;
};

// Load by name (scenarios/<name>.toml) or path. `overrides` are "key=value" parameter overrides.
// Errors name the file, line and key, and what was expected.
Result<Scenario> loadScenario(const std::string& nameOrPath,
                              const std::vector<std::string>& overrides = {});
Result<Scenario> parseScenario(const std::string& text, const std::filesystem::path& file,
                               const std::vector<std::string>& overrides = {});
std::vector<std::string> listScenarios();

}  // namespace crb
