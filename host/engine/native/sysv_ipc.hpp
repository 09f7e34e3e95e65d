#pragma once
// SysV IPC in a native image (sysv_ipc.cpp): shared memory segments, semaphore sets and message
// queues, in ipc.img (JSON) with segment contents and message texts in ipc-data.img.
#include <cstdint>
#include <string>
#include <vector>

#include "core/json.hpp"

namespace crb::native {

struct IpcPerm {
  int id = 0;
  int key = 0;
  int mode = 0600;
  uint32_t uid = 0, gid = 0;
};

struct SysvShm {
  IpcPerm perm;
  uint64_t size = 0;
  bool destroyed = false;  // IPC_RMID'd while attached: removed again once the tree has attached it
};

struct SysvSem {
  IpcPerm perm;
  std::vector<uint16_t> values;
};

struct SysvMsg {
  IpcPerm perm;
  uint64_t qbytes = 0;
  std::vector<int64_t> types;   // per message, in queue order
  std::vector<uint64_t> sizes;  // texts in ipc-data.img after the segments
};

struct IpcImage {
  // The tree has an IPC namespace of its own (a container's, or one it unshared): every object in
  // it is carried. Otherwise (crbench's namespace) only the segments the tree has attached are;
  // semaphores and queues there are namespace state the tree does not own, like files.
  bool wholeNamespace = false;
  bool unshared = false;  // plain tree that unshared it: the restorer unshares a fresh one
  std::vector<SysvShm> shm;
  std::vector<SysvSem> sem;
  std::vector<SysvMsg> msg;
};

void to_json(Json& j, const IpcImage& v);
void from_json(const Json& j, IpcImage& v);

}  // namespace crb::native
