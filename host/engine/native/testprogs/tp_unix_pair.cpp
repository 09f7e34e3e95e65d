// Unix socketpairs of every type, shared with a child: data queued in both directions (a stream
// byte run, datagram and seqpacket record boundaries, an empty datagram), a half-shut stream, a
// stream whose peer was closed with data still queued, O_NONBLOCK and buffer sizes.
#include <fcntl.h>
#include <linux/netlink.h>
#include <sys/socket.h>
#include <sys/wait.h>

#include <cstring>
#include <string>

#include "tp.hpp"

static std::string rd(int fd, size_t n) {
  std::string s(n, '\0');
  ssize_t k = recv(fd, s.data(), n, MSG_DONTWAIT);
  s.resize(k < 0 ? 0 : size_t(k));
  return s;
}

int main(int argc, char** argv) {
  tp::init(argc, argv);
  int st[2], dg[2], sp[2], half[2], gone[2];
  socketpair(AF_UNIX, SOCK_STREAM, 0, st);
  socketpair(AF_UNIX, SOCK_DGRAM, 0, dg);
  socketpair(AF_UNIX, SOCK_SEQPACKET, 0, sp);
  socketpair(AF_UNIX, SOCK_STREAM, 0, half);
  socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, gone);
  int big = 300000;
  setsockopt(st[0], SOL_SOCKET, SO_SNDBUF, &big, sizeof big);
  std::string blob(200000, 'x');
  for (size_t i = 0; i < blob.size(); i++) blob[i] = char('a' + i % 23);
  send(st[0], blob.data(), blob.size(), 0);
  send(st[0], "tail", 4, 0);
  send(st[1], "back", 4, 0);
  send(dg[0], "d1", 2, 0);
  send(dg[0], "", 0, 0);
  send(dg[0], "d333", 4, 0);
  send(sp[1], "rec1", 4, 0);
  send(sp[1], "record2", 7, 0);
  send(half[0], "last words", 10, 0);
  shutdown(half[0], SHUT_WR);
  send(gone[1], "orphan", 6, 0);
  close(gone[1]);
  int sndbuf = 0;
  socklen_t l = sizeof sndbuf;
  getsockopt(st[0], SOL_SOCKET, SO_SNDBUF, &sndbuf, &l);
  // A netlink socket talking to the kernel only (like dbus-daemon's audit socket), bound.
  int nl = socket(AF_NETLINK, SOCK_RAW, NETLINK_ROUTE);
  sockaddr_nl na{};
  na.nl_family = AF_NETLINK;
  bind(nl, reinterpret_cast<sockaddr*>(&na), sizeof na);
  socklen_t nal = sizeof na;
  getsockname(nl, reinterpret_cast<sockaddr*>(&na), &nal);
  uint32_t portid = na.nl_pid;
  pid_t child = fork();
  if (child == 0) {
    // The child holds the other ends: it answers on the stream after the go file appears.
    close(st[1]);
    tp::waitGo();
    char b[16] = {};
    recv(st[0], b, 4, 0);  // "back"
    send(st[0], std::strcmp(b, "back") == 0 ? "kid-ok" : "kid-bad", 6, 0);
    _exit(0);
  }
  tp::ready();
  tp::waitGo();
  // Exactly the queued bytes (the child may already have answered behind them).
  std::string got(blob.size() + 4, '\0');
  ssize_t k = recv(st[1], got.data(), got.size(), MSG_WAITALL | MSG_DONTWAIT);
  got.resize(k < 0 ? 0 : size_t(k));
  tp::check(got == blob + "tail", "stream byte queue (%zu bytes of %zu)", got.size(), blob.size() + 4);
  char b[64] = {};
  ssize_t n = recv(st[1], b, 6, 0);
  tp::check(n == 6 && std::memcmp(b, "kid-ok", 6) == 0, "child's stream end answers (%zd %s)", n, b);
  tp::check(rd(dg[1], 64) == "d1", "first datagram");
  n = recv(dg[1], b, sizeof b, MSG_DONTWAIT);
  tp::check(n == 0, "empty datagram kept (%zd)", n);
  tp::check(rd(dg[1], 64) == "d333", "third datagram");
  tp::check(rd(dg[1], 64).empty(), "no more datagrams");
  tp::check(rd(sp[0], 64) == "rec1" && rd(sp[0], 64) == "record2", "seqpacket records keep their boundaries");
  send(dg[1], "pong", 4, 0);
  tp::check(rd(dg[0], 64) == "pong", "datagram pair still connected");
  tp::check(rd(half[1], 64) == "last words", "data before the half-close");
  n = recv(half[1], b, sizeof b, 0);
  tp::check(n == 0, "end of stream after the half-close (%zd)", n);
  tp::check(send(half[1], "still", 5, MSG_NOSIGNAL) == 5, "the other direction still open");
  tp::check(rd(half[0], 64) == "still", "and delivered");
  tp::check(rd(gone[0], 64) == "orphan", "data from a closed peer");
  n = recv(gone[0], b, sizeof b, 0);
  tp::check(n == 0, "then end of stream (%zd)", n);
  tp::check(fcntl(gone[0], F_GETFL) & O_NONBLOCK, "O_NONBLOCK kept");
  int now = 0;
  l = sizeof now;
  getsockopt(st[0], SOL_SOCKET, SO_SNDBUF, &now, &l);
  tp::check(now == sndbuf, "SO_SNDBUF kept (%d, was %d)", now, sndbuf);
  int type = 0;
  l = sizeof type;
  getsockopt(sp[0], SOL_SOCKET, SO_TYPE, &type, &l);
  tp::check(type == SOCK_SEQPACKET, "socket type");
  nal = sizeof na;
  getsockname(nl, reinterpret_cast<sockaddr*>(&na), &nal);
  l = sizeof type;
  getsockopt(nl, SOL_SOCKET, SO_PROTOCOL, &type, &l);
  tp::check(na.nl_pid == portid && portid != 0 && type == NETLINK_ROUTE, "netlink socket port id %u (was %u)",
            na.nl_pid, portid);
  int status = 0;
  waitpid(child, &status, 0);
  tp::check(WIFEXITED(status) && WEXITSTATUS(status) == 0, "child exited cleanly");
  return tp::finish();
}
