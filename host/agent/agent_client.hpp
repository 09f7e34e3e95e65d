#pragma once
// Host-side client of the guest agent's control protocol (TCP port kAgentControlPort,
// one JSON object per line each way). Protocol: docs/agent-protocol.md.
//   {"op":"ping"}                         -> {"ok":true,"pid":1,"uptime_ms":..}
//   {"op":"status"}                       -> {"ok":true,"programs":[{"name","pid","running","exit"}]}
//   {"op":"digest"}                       -> {"ok":true,"processes":[...],"workload":"..","wall_ns":..,"mono_ns":..}
//   {"op":"exec","argv":[..],"timeout_ms":N} -> {"ok":true,"exit":0,"stdout":"..","stderr":".."}
//   {"op":"shutdown"}                     -> {"ok":true}, then the agent ends the workload and exits
// Errors: {"ok":false,"error":"..."}.
// Connections must be closed before a checkpoint (engines dump the agent too).
#include <chrono>

#include "core/json.hpp"
#include "core/result.hpp"
#include "runtime/sandbox.hpp"

namespace crb {

// One request on a fresh connection; the connection is closed before returning.
Result<Json> agentCall(Sandbox& sandbox, const Json& request,
                       std::chrono::milliseconds timeout = std::chrono::seconds(10));

// Poll ping until the agent answers or the timeout passes.
Status waitForAgent(Sandbox& sandbox, std::chrono::milliseconds timeout);

}  // namespace crb
