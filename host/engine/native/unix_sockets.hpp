#pragma once
// Unix sockets in a native image (unix_sockets.cpp): one record per socket the tree holds.
#include <cstdint>
#include <string>
#include <vector>

#include "core/json.hpp"

namespace crb::native {

struct UnixSocket {
  int id = 0;
  uint64_t ino = 0;
  int type = 0;   // SOCK_STREAM / SOCK_DGRAM / SOCK_SEQPACKET
  int state = 0;  // TCP_ESTABLISHED (connected), TCP_LISTEN, TCP_CLOSE (unconnected)
  // sun_path as bound (hex: abstract names start with a NUL byte); "" when unnamed. An accepted
  // socket carries its listener's name without owning it (`accepted`).
  std::string nameHex;
  bool accepted = false;
  uint64_t peerIno = 0;
  int peer = -1;            // id of the peer socket when it is in the tree
  bool peerGone = false;    // stream/seqpacket whose peer was closed
  bool external = false;    // connected to a socket outside the tree, marked by the user
  std::string peerNameHex;  // external: the name to reconnect to
  int backlog = 0;
  int shutdown = 0;  // RCV_SHUTDOWN 1 | SEND_SHUTDOWN 2, as the kernel keeps it
  int sndbuf = 0, rcvbuf = 0;
  bool passcred = false;
  int peekOff = -1;
  std::vector<uint32_t> peerCred;  // SO_PEERCRED pid, uid, gid as the tree saw it (informational)
  // Queued in this socket's receive queue, stored in unix-queues.img in socket order: one entry
  // per datagram / record (stream: one entry for the whole byte stream) and, for datagrams, the
  // id of the in-tree socket that sent it (-1: unnamed sender, re-sent from a fresh socket).
  std::vector<uint64_t> packets;
  std::vector<int> senders;
  int fileMode = -1;  // path names: the socket file's mode and owner
  uint32_t fileUid = 0, fileGid = 0;
};

void to_json(Json& j, const UnixSocket& v);
void from_json(const Json& j, UnixSocket& v);

}  // namespace crb::native
