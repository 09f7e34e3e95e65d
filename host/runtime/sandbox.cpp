#include "runtime/sandbox.hpp"

#include <map>

namespace crb {

std::string toString(RuntimeKind k) { return k == RuntimeKind::Container ? "container" : "vm"; }

Result<RuntimeKind> parseRuntimeKind(const std::string& s) {
  if (s == "container") return RuntimeKind::Container;
  if (s == "vm") return RuntimeKind::Vm;
  return makeError(fmt::format("unknown runtime '{}'", s), "use --runtime container or --runtime vm");
}

static std::map<std::string, RuntimeFactory>& runtimes() {
  static std::map<std::string, RuntimeFactory> m;
  return m;
}

RuntimeRegistrar::RuntimeRegistrar(const std::string& flavor, RuntimeFactory f) {
  runtimes()[flavor] = std::move(f);
}

Result<std::unique_ptr<Sandbox>> startSandbox(RuntimeKind kind, const Scenario& scenario,
                                              const SandboxOptions& opts) {
  std::string flavor = opts.flavor.empty() ? toString(kind) : opts.flavor;
  auto it = runtimes().find(flavor);
  if (it == runtimes().end())
    return makeError(fmt::format("runtime '{}' is not built into this crbench", flavor));
  return it->second(scenario, opts);
}

}  // namespace crb
