#pragma once
// Where crbench finds its own files and keeps state.
#include <filesystem>
#include <string>

namespace crb {
namespace fs = std::filesystem;

// The source tree (scenarios/, results/, .deps/). $CRBENCH_ROOT overrides the built-in path.
fs::path projectRoot();
// Project-local prefix for tools the set-up unpacks (criu from sid, guest kernel): <root>/.deps
fs::path depsDir();
// Cache for built images (rootfs, initramfs), keyed by content hash: <root>/.cache
fs::path cacheDir();
// Per-run runtime state (sockets, pid files): /run/crbench/<id>, mode 0700
fs::path runtimeDir();
// Where results/<run-id>.json go by default: <root>/results/runs
fs::path defaultResultsDir();
// The directory holding the crbench binary and the built guest-agent.
fs::path buildDir();
// Absolute path of the built guest-agent binary.
fs::path guestAgentBinary();
}  // namespace crb
