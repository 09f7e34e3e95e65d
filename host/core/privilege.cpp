#include "core/privilege.hpp"

#include <pwd.h>
#include <unistd.h>

namespace crb {

Status requireRoot(const std::string& what) {
  uid_t euid = ::geteuid();
  if (euid == 0) return success();
  std::string user = std::to_string(euid);
  if (const passwd* pw = ::getpwuid(euid)) user = pw->pw_name;
  return makeError(
      fmt::format("{} needs root (namespaces, cgroups, mounts, /dev/kvm), but crbench runs as "
                  "user '{}' (uid {})",
                  what, user, euid),
      "run it as root, e.g. with sudo", 2);
}

}  // namespace crb
