// Named unix sockets: a listening stream socket on a path with an accepted connection (data
// queued both ways), an abstract-name seqpacket listener with its connection, and a datagram
// server on a path with datagrams queued from an unnamed connected client and from a named one.
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>

#include <cstddef>
#include <cstring>
#include <string>

#include "tp.hpp"

static socklen_t addr(const std::string& name, sockaddr_un& a) {
  a = {};
  a.sun_family = AF_UNIX;
  std::memcpy(a.sun_path, name.data(), name.size());
  return socklen_t(offsetof(sockaddr_un, sun_path) + name.size() + (name[0] ? 1 : 0));
}
static int bound(int type, const std::string& name) {
  int s = socket(AF_UNIX, type, 0);
  sockaddr_un a;
  socklen_t l = addr(name, a);
  if (bind(s, reinterpret_cast<sockaddr*>(&a), l) != 0) perror("bind");
  return s;
}
static int connected(int type, const std::string& name) {
  int s = socket(AF_UNIX, type, 0);
  sockaddr_un a;
  socklen_t l = addr(name, a);
  if (connect(s, reinterpret_cast<sockaddr*>(&a), l) != 0) perror("connect");
  return s;
}
static std::string nameOf(int s, bool peer) {
  sockaddr_un a{};
  socklen_t l = sizeof a;
  (peer ? getpeername : getsockname)(s, reinterpret_cast<sockaddr*>(&a), &l);
  if (l <= offsetof(sockaddr_un, sun_path)) return "";
  std::string n(a.sun_path, l - offsetof(sockaddr_un, sun_path));
  if (!n.empty() && n[0]) n = n.c_str();
  return n;
}
static std::string rd(int fd) {
  char b[256];
  ssize_t k = recv(fd, b, sizeof b, MSG_DONTWAIT);
  return std::string(b, k < 0 ? 0 : size_t(k));
}

int main(int argc, char** argv) {
  tp::init(argc, argv);
  std::string dir = std::string(argv[1]) + ".d";
  mkdir(dir.c_str(), 0700);
  std::string srv = dir + "/srv.sock", dgs = dir + "/dgram.sock", dns = dir + "/named.sock";
  std::string abs = std::string("\0crb-tp-", 8) + std::to_string(getpid());
  int L = bound(SOCK_STREAM, srv);
  chmod(srv.c_str(), 0640);
  listen(L, 5);
  int C = connected(SOCK_STREAM, srv);
  int A = accept(L, nullptr, nullptr);
  send(C, "c2a", 3, 0);
  send(A, "a2c", 3, 0);
  int AL = bound(SOCK_SEQPACKET, abs);
  listen(AL, 2);
  int AC = connected(SOCK_SEQPACKET, abs);
  int AA = accept(AL, nullptr, nullptr);
  send(AC, "abs-rec", 7, 0);
  int DS = bound(SOCK_DGRAM, dgs);
  int DC = connected(SOCK_DGRAM, dgs);
  send(DC, "from-unnamed", 12, 0);
  int DN = bound(SOCK_DGRAM, dns);
  sockaddr_un da;
  socklen_t dl = addr(dgs, da);
  sendto(DN, "from-named", 10, 0, reinterpret_cast<sockaddr*>(&da), dl);
  tp::ready();
  tp::waitGo();
  tp::check(nameOf(L, false) == srv, "listener name (%s)", nameOf(L, false).c_str());
  tp::check(nameOf(A, false) == srv, "accepted socket carries the listener's name (%s)", nameOf(A, false).c_str());
  tp::check(nameOf(C, true) == srv, "client's peer name (%s)", nameOf(C, true).c_str());
  tp::check(nameOf(C, false).empty(), "client unnamed");
  tp::check(rd(A) == "c2a", "queued client -> server");
  tp::check(rd(C) == "a2c", "queued server -> client");
  send(C, "more", 4, 0);
  tp::check(rd(A) == "more", "connection still works");
  struct stat st {};
  tp::check(stat(srv.c_str(), &st) == 0 && S_ISSOCK(st.st_mode) && (st.st_mode & 0777) == 0640,
            "socket file mode (%o)", st.st_mode & 0777);
  int C2 = connected(SOCK_STREAM, srv);
  int A2 = accept(L, nullptr, nullptr);
  send(C2, "new", 3, 0);
  tp::check(A2 >= 0 && rd(A2) == "new", "listener accepts a new connection");
  tp::check(nameOf(AA, false) == abs, "abstract name of the accepted socket");
  tp::check(rd(AA) == "abs-rec", "seqpacket record queued");
  int AC2 = connected(SOCK_SEQPACKET, abs);
  tp::check(AC2 >= 0 && accept(AL, nullptr, nullptr) >= 0, "abstract listener accepts");
  sockaddr_un from{};
  socklen_t fl = sizeof from;
  char b[64] = {};
  ssize_t n = recvfrom(DS, b, sizeof b, MSG_DONTWAIT, reinterpret_cast<sockaddr*>(&from), &fl);
  tp::check(n == 12 && std::memcmp(b, "from-unnamed", 12) == 0 && fl <= sizeof(sa_family_t),
            "datagram from the unnamed client (%zd, addrlen %u)", n, fl);
  fl = sizeof from;
  n = recvfrom(DS, b, sizeof b, MSG_DONTWAIT, reinterpret_cast<sockaddr*>(&from), &fl);
  tp::check(n == 10 && std::memcmp(b, "from-named", 10) == 0 && std::string(from.sun_path) == dns,
            "datagram from the named client (%zd, from %s)", n, from.sun_path);
  send(DC, "again", 5, 0);
  tp::check(rd(DS) == "again", "connected datagram client still reaches the server");
  tp::check(nameOf(DC, true) == dgs, "its peer name");
  for (auto& p : {srv, dgs, dns}) unlink(p.c_str());
  rmdir(dir.c_str());
  return tp::finish();
}
