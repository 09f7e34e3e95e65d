// TCP with an unsent send queue: connects to a peer outside the tree (argv[2]: its port on
// 127.0.0.1) that does not read and has a small receive window, and writes a numbered byte pattern
// until its send buffer is full, so most of what it wrote was never sent when it is dumped.
// After restore (go-file): it tells the peer how much to expect, waits for the peer's "got N",
// and checks the connection never had to retransmit (TCP_INFO total_retrans 0): data put back
// as already sent would have gone out only by retransmission.
#include <arpa/inet.h>
#include <fcntl.h>
#include <linux/sockios.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/ioctl.h>
#include <sys/socket.h>

#include <cerrno>
#include <cstring>
#include <string>

#include "tp.hpp"

int main(int argc, char** argv) {
  tp::init(argc, argv);
  if (argc < 3) {
    std::fprintf(stderr, "usage: %s GO-FILE PEER-PORT\n", argv[0]);
    return 2;
  }
  int s = socket(AF_INET, SOCK_STREAM, 0);
  int sndbuf = 64 * 1024;
  setsockopt(s, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof sndbuf);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(uint16_t(std::atoi(argv[2])));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(s, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
    std::printf("FAIL: connect to the peer: %s\n", std::strerror(errno));
    return 1;
  }
  fcntl(s, F_SETFL, O_NONBLOCK);
  size_t total = 0;
  char buf[1024];
  for (;;) {
    for (size_t i = 0; i < sizeof buf; i++) buf[i] = char((total + i) * 7 + 3);
    ssize_t n = write(s, buf, sizeof buf);
    if (n <= 0) break;
    total += size_t(n);
  }
  // The window closes a moment after the last write: wait until the unsent count settles.
  int unsent = -1, prev = -2;
  while (unsent != prev) {
    prev = unsent;
    timespec t{0, 100 * 1000 * 1000};
    nanosleep(&t, nullptr);
    ioctl(s, SIOCOUTQNSD, &unsent);
  }
  int outq = 0;
  ioctl(s, SIOCOUTQ, &outq);
  std::printf("WROTE %zu UNSENT %d OUTQ %d\n", total, unsent, outq);
  tp::ready();
  tp::waitGo();

  fcntl(s, F_SETFL, 0);
  std::string msg = "total " + std::to_string(total) + "\n";
  // The pattern goes first (it is queued); this line follows it on the same stream.
  tp::check(write(s, msg.data(), msg.size()) == ssize_t(msg.size()), "write the total: %s", std::strerror(errno));
  std::string got;
  char c;
  timeval tv{60, 0};
  setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  while (read(s, &c, 1) == 1 && c != '\n') got += c;
  tp::check(got == "got " + std::to_string(total), "the peer answered '%s' for %zu bytes", got.c_str(), total);
  tcp_info ti{};
  socklen_t l = sizeof ti;
  getsockopt(s, IPPROTO_TCP, TCP_INFO, &ti, &l);
  std::printf("RETRANS %u\n", ti.tcpi_total_retrans);
  tp::check(ti.tcpi_total_retrans == 0, "%u retransmission(s) after restore: the unsent data was put back as sent",
            ti.tcpi_total_retrans);
  return tp::finish();
}
