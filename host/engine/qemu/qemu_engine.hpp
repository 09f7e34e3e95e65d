#pragma once
// The `qemu` engine: VM snapshots through QEMU's own migration machinery, driven over QMP.
//
//   stop-and-copy  QMP stop, migrate to fd: (a file crbench opened and passed with getfd), the VM
//                  is then gone; restore = fresh QEMU with -incoming defer, migrate-incoming, cont
//   leave-running  the same stream with the background-snapshot capability (userfaultfd-WP):
//                  the guest keeps running while its RAM as of the start is written
//   pre-copy       live migration to a second QEMU on this host over a unix socket, explicit
//                  downtime-limit and max-bandwidth, bounded by a timeout (cancelled when it does
//                  not converge: the source keeps running); the target becomes the sandbox's VM
//   post-copy      the same with postcopy-ram: switch over after the first pass, pages on demand
//   file-ram       the guest boots with RAM in a shared file (runtime flavor vm-file-ram); the
//                  checkpoint stops it and saves only device state (x-ignore-shared), then the RAM
//                  file moves into the image; restore maps it copy-on-write (share=off), so the
//                  image stays intact and can be restored again
//
// Image directory (stop-and-copy, leave-running, file-ram): vmstate.bin (QEMU's migration stream) and
// manifest.json (format version, mode, sizes, CRC-32 of the stream, QEMU figures), the manifest
// written last and atomically: a directory without it, or whose stream does not match it, is
// refused by restore. file-ram adds guest-ram (the guest's RAM, checked by size).
#include "engine/engine.hpp"

namespace crb {

inline constexpr int kQemuImageFormat = 1;
inline constexpr const char* kQemuVmstateFile = "vmstate.bin";
inline constexpr const char* kQemuManifestFile = "manifest.json";
inline constexpr const char* kQemuRamFile = "guest-ram";  // file-ram mode only

// Check an image directory before a restore starts anything: manifest present and readable,
// format known, stream size and CRC as recorded. Returns the manifest.
Result<Json> verifyQemuImage(const std::filesystem::path& dir);

}  // namespace crb
