#pragma once
// Commands that create namespaces, cgroups, mounts or open /dev/kvm need root. They check up front
// so the user sees one clear line instead of an EPERM from deep inside a runtime.
#include <string>

#include "core/result.hpp"

namespace crb {

// Ok when the effective uid is 0; otherwise an error naming `what` and telling how to rerun
// (exit code 77 is not used: "not root" is a usage error, exit 2).
Status requireRoot(const std::string& what);

}  // namespace crb
