// UDP: a socket bound to 127.0.0.1 (SO_BROADCAST, a receive buffer size), one connected to it,
// and an IPv6 socket bound to ::1. After restore: the same addresses, the connected one's
// datagrams reach the bound one from the same source, and the options are kept.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <cstring>

#include "tp.hpp"

int main(int argc, char** argv) {
  tp::init(argc, argv);
  int b = socket(AF_INET, SOCK_DGRAM, 0);
  int one = 1, rcv = 65536;
  setsockopt(b, SOL_SOCKET, SO_BROADCAST, &one, sizeof one);
  setsockopt(b, SOL_SOCKET, SO_RCVBUF, &rcv, sizeof rcv);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  bind(b, reinterpret_cast<sockaddr*>(&a), sizeof a);
  socklen_t l = sizeof a;
  getsockname(b, reinterpret_cast<sockaddr*>(&a), &l);
  int c = socket(AF_INET, SOCK_DGRAM, 0);
  connect(c, reinterpret_cast<sockaddr*>(&a), sizeof a);
  sockaddr_in ca{};
  l = sizeof ca;
  getsockname(c, reinterpret_cast<sockaddr*>(&ca), &l);
  int s6 = socket(AF_INET6, SOCK_DGRAM, 0);
  sockaddr_in6 a6{};
  a6.sin6_family = AF_INET6;
  a6.sin6_addr = in6addr_loopback;
  bind(s6, reinterpret_cast<sockaddr*>(&a6), sizeof a6);
  l = sizeof a6;
  getsockname(s6, reinterpret_cast<sockaddr*>(&a6), &l);
  tp::ready();
  tp::waitGo();
  sockaddr_in now{};
  l = sizeof now;
  getsockname(b, reinterpret_cast<sockaddr*>(&now), &l);
  tp::check(now.sin_port == a.sin_port, "bound port kept");
  tp::check(send(c, "dgram", 5, 0) == 5, "the connected socket sends without an address");
  char buf[16] = {};
  sockaddr_in from{};
  l = sizeof from;
  ssize_t n = recvfrom(b, buf, sizeof buf, 0, reinterpret_cast<sockaddr*>(&from), &l);
  tp::check(n == 5 && std::memcmp(buf, "dgram", 5) == 0, "datagram received");
  tp::check(from.sin_port == ca.sin_port, "from the connected socket's same port");
  int v = 0;
  l = sizeof v;
  getsockopt(b, SOL_SOCKET, SO_BROADCAST, &v, &l);
  tp::check(v == 1, "SO_BROADCAST kept");
  getsockopt(b, SOL_SOCKET, SO_RCVBUF, &v, &l);
  tp::check(v == 2 * rcv, "SO_RCVBUF kept (%d)", v);
  sockaddr_in6 n6{};
  l = sizeof n6;
  getsockname(s6, reinterpret_cast<sockaddr*>(&n6), &l);
  tp::check(n6.sin6_port == a6.sin6_port, "IPv6 bound port kept");
  tp::check(sendto(c, "x", 1, 0, reinterpret_cast<sockaddr*>(&a6), sizeof a6) < 0, "IPv4 socket still connected-only family");
  return tp::finish();
}
