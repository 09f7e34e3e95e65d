#pragma once
// Host checks behind `crbench doctor`: each one tries the real thing (an unshare in a child, the
// PAGEMAP_SCAN ioctl, UFFDIO_API, a connect to libvirt's socket) and reports what it found. None
// fails the command: doctor is a report of what this host can measure and why not.
#include <string>
#include <vector>

#include "core/json.hpp"

namespace crb::doctor {

Json hostInfo();         // kernel, os, cpu model, flags of interest, cores, memory
Json acceleratorInfo();  // chooseAccelerator(): accel, reason, forced, probe details
Json qemuInfo();         // qemu-system-x86_64 --version
Json namespaceInfo();    // one entry per namespace kind: available / error
Json cgroupInfo();       // v1 / v2, freezer
Json pagemapScanInfo();  // PAGEMAP_SCAN on /proc/self/pagemap
Json userfaultfdInfo();  // UFFDIO_API features: WP, WP_ASYNC
Json libvirtInfo();      // libvirtd binary, version, socket reachable
Json engineInfo();       // every registered engine's capabilities()

// Everything above under one object (the `--json` document).
Json collectAll();

// The human table printed by `crbench doctor`.
std::string renderTable(const Json& report);

}  // namespace crb::doctor
