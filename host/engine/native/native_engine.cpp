// The native engine behind the Engine interface. On the container runtime it dumps the whole
// container tree (the agent is its PID 1) with the container's namespaces as the reference.
// Restoring a container needs two things not written yet: recreating the tree in a fresh pid
// namespace (clone3 with CLONE_NEWPID and set_tid 1 + prepareContainerChild) and the agent's
// inet sockets (bound UDP, listening TCP). Until then the modes are reported unsupported with
// that reason, and a checkpoint attempt reports exactly what the dump refuses.
#include "engine/engine.hpp"
#include "engine/native/native.hpp"
#include "runtime/container.hpp"

namespace crb {
namespace {

class NativeEngine : public Engine {
 public:
  std::string name() const override { return "native"; }
  Capabilities capabilities() override {
    Capabilities c;
    c.runtimes = {RuntimeKind::Container};
    const char* why =
        "native engine: container restore (fresh pid namespace, the agent's inet sockets) is not "
        "implemented yet; plain process trees work with `crbench cr dump/restore`";
    c.unsupportedModes[modes::kStopAndCopy] = why;
    c.unsupportedModes[modes::kLeaveRunning] = why;
    c.unsupportedModes[modes::kPreCopy] = "native engine: iterative pre-copy is issue #9";
    c.unsupportedModes[modes::kIncremental] = "native engine: incremental images are issue #9";
    c.unsupportedModes[modes::kLazy] = "native engine: lazy restore is issue #9";
    c.versions["native-image-format"] = 1;
    return c;
  }
  Result<PhaseReport> checkpoint(Sandbox& sandbox, const CheckpointContext& ctx) override {
    auto* c = dynamic_cast<ContainerSandbox*>(&sandbox);
    if (!c) return makeError("the native engine works on containers only");
    native::DumpOptions o;
    // Always leave the container running: there is no restore for it yet.
    o.leaveRunning = true;
    o.nsReference = c->initPid();
    o.rootPrefix = c->rootDir().string();
    o.mark = ctx.mark;
    auto r = native::dumpTree(c->initPid(), ctx.imageDir, o);
    if (!r.ok()) return r.error();
    return makeError("native engine: dumped the container (left running) but cannot restore containers yet",
                     "use `crbench cr` on plain process trees");
  }
  Result<PhaseReport> restore(Sandbox&, const CheckpointContext&) override {
    return makeError("native engine: container restore is not implemented yet",
                     "use `crbench cr restore` for plain process trees");
  }
};

}  // namespace
CRB_REGISTER_ENGINE(NativeEngine, "native");
}  // namespace crb
