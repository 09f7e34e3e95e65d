#pragma once
// What a QEMU guest boots: Debian's kernel (unpacked by scripts/setup.d/kernel.sh), an initramfs
// made of the scenario's workload image (the same rootfs the container runs) plus the virtio
// modules it must load, and the kernel command line. Shared by the qemu runtime (vm.cpp) and the
// libvirt engine's domain XML.
//
// The kernel package ships no modules.dep, so the load order is computed here from each module's
// own `depends=` field (ELF .modinfo section) and written to /etc/crbench/modules.list, one
// absolute path per line in load order; the guest agent insmods them before bringing up eth0.
#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "core/result.hpp"
#include "scenario/scenario.hpp"

namespace crb {

// Guest network as QEMU user networking (slirp) presents it; also on the kernel command line as
// crbench.net=<addr>/<prefix>,<gateway> so the agent does not hard-code it.
inline constexpr const char* kVmGuestAddress = "10.0.2.15/24";
inline constexpr const char* kVmGuestGateway = "10.0.2.2";
// Where the modules sit inside the initramfs, and the list the agent reads.
inline constexpr const char* kVmModulesDir = "/lib/modules/crbench";
inline constexpr const char* kVmModulesList = "/etc/crbench/modules.list";

struct VmBootFiles {
  std::filesystem::path kernel;
  std::string kernelRelease;          // "6.1.0-56-amd64" when known
  std::filesystem::path initramfs;    // newc cpio, gzip, cached by content hash
  std::string initramfsHash;
  uint64_t initramfsBytes = 0;
  bool initramfsFromCache = false;
  double buildSeconds = 0;            // image + initramfs preparation, measured now
  std::string cmdline;
  std::vector<std::string> modules;   // module names in load order
  std::string imageHash;              // the workload image the initramfs carries
};

// Kernel, initramfs and command line for the scenario. The kernel is $CRBENCH_KERNEL when set
// (the `--kernel PATH` option sets it), else <root>/.deps/kernel/vmlinuz.
Result<VmBootFiles> prepareVmBootFiles(const Scenario& scenario);

// --- pieces, exposed for tests and for the libvirt engine ---------------------------------------

struct GuestKernel {
  std::filesystem::path vmlinuz;
  std::filesystem::path modulesDir;  // lib/modules/<release>, empty when none were found
  std::string release;
};
// Locate and check the guest kernel (readable, looks like a bzImage). Errors name the path and
// the fix (run scripts/setup.d/kernel.sh, or --kernel PATH / $CRBENCH_KERNEL).
Result<GuestKernel> findGuestKernel();

struct KernelModule {
  std::string name;                  // from modinfo name=, else the file name with '-' -> '_'
  std::filesystem::path path;
  std::vector<std::string> depends;  // modinfo depends=
};
// Read name= and depends= from a module's .modinfo ELF section (uncompressed .ko only).
Result<KernelModule> readKernelModule(const std::filesystem::path& ko);
// The modules under `modulesDir` needed to load `wanted`, dependencies first. Modules listed as
// built in (modules.builtin) are skipped. Errors name the missing module and who needs it.
Result<std::vector<KernelModule>> moduleLoadOrder(const std::filesystem::path& modulesDir,
                                                  const std::vector<std::string>& wanted);

// One file in an initramfs overlay: contents placed at `guestPath` (absolute).
struct CpioExtraFile {
  std::string guestPath;
  std::string hostPath;  // copy from here, or
  std::string data;      // these bytes when hostPath is empty
  unsigned mode = 0644;
};
// Write a gzip-compressed newc cpio of `rootfs` (sorted, owned by root, mtime 0: the same input
// gives the same bytes) followed by `extra`, atomically to `out`.
Status writeInitramfs(const std::filesystem::path& rootfs, const std::vector<CpioExtraFile>& extra,
                      const std::filesystem::path& out);

}  // namespace crb
