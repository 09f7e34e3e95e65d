// The kernel objects a dump changes in its tree, for the kill-the-dumper tests
// (harness/test_native_faults.py): a TCP connection to a peer outside the tree (argv[2]: the
// peer's port on 127.0.0.1), a POSIX message queue holding messages of mixed priorities, and unix
// stream and datagram socketpairs with data queued and SO_PEEK_OFF never enabled.
// After the dumper was killed (at any point) and the go-file appears: the connection is out of
// repair mode and answers the peer, the queue holds every message in the order it had, the unix
// sockets have SO_PEEK_OFF -1 again and give their data from the start, peeked and read.
#include <arpa/inet.h>
#include <fcntl.h>
#include <mqueue.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

#include <cstring>
#include <string>

#include "tp.hpp"

namespace {
const unsigned kPrios[] = {1, 3, 2, 3, 1, 5, 2, 0};
constexpr int kMsgs = sizeof kPrios / sizeof kPrios[0];
const char* kStream[] = {"alpha", "beta", "gamma"};
const char* kDgrams[] = {"one", "two", "three"};

int opt(int fd, int level, int o) {
  int v = 0;
  socklen_t l = sizeof v;
  if (getsockopt(fd, level, o, &v, &l) != 0) return -1000;
  return v;
}

std::string readLine(int fd) {
  std::string s;
  char c;
  while (read(fd, &c, 1) == 1 && c != '\n') s += c;
  return s;
}
}  // namespace

int main(int argc, char** argv) {
  tp::init(argc, argv);
  if (argc < 3) {
    std::fprintf(stderr, "usage: %s GO-FILE PEER-PORT\n", argv[0]);
    return 2;
  }
  int tcp = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(uint16_t(std::atoi(argv[2])));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(tcp, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
    std::printf("FAIL: connect to the peer: %s\n", std::strerror(errno));
    return 1;
  }
  timeval tv{30, 0};
  setsockopt(tcp, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);

  std::string qname = "/crbench-tp-fault-" + std::to_string(getpid());
  mq_attr attr{};
  attr.mq_maxmsg = 10;
  attr.mq_msgsize = 64;
  mqd_t q = mq_open(qname.c_str(), O_RDWR | O_CREAT | O_EXCL | O_NONBLOCK, 0600, &attr);
  if (q < 0) {
    std::printf("FAIL: mq_open %s: %s\n", qname.c_str(), std::strerror(errno));
    return 1;
  }
  mq_unlink(qname.c_str());  // nothing of it outlives the test
  for (int i = 0; i < kMsgs; i++) {
    std::string m = "msg" + std::to_string(i);
    mq_send(q, m.data(), m.size(), kPrios[i]);
  }

  int st[2], dg[2];
  socketpair(AF_UNIX, SOCK_STREAM, 0, st);
  socketpair(AF_UNIX, SOCK_DGRAM, 0, dg);
  for (auto* s : kStream) (void)!write(st[1], s, std::strlen(s));
  for (auto* s : kDgrams) (void)!write(dg[1], s, std::strlen(s));
  tp::ready();
  tp::waitGo();

  tp::check(opt(tcp, IPPROTO_TCP, TCP_REPAIR) == 0, "TCP connection still in repair mode");
  std::string got = readLine(tcp);
  tp::check(got == "hello", "TCP: peer sent '%s', expected 'hello'", got.c_str());
  std::string echo = "echo " + got + "\n";
  tp::check(write(tcp, echo.data(), echo.size()) == ssize_t(echo.size()), "TCP: write the echo: %s",
            std::strerror(errno));

  mq_attr now{};
  mq_getattr(q, &now);
  tp::check(now.mq_curmsgs == kMsgs, "message queue holds %ld messages, expected %d", now.mq_curmsgs, kMsgs);
  // The order the queue had: priority, highest first, then the order sent.
  bool used[kMsgs] = {};
  for (int k = 0; k < kMsgs; k++) {
    int want = -1;
    for (int i = 0; i < kMsgs; i++)
      if (!used[i] && (want < 0 || kPrios[i] > kPrios[want])) want = i;
    used[want] = true;
    char buf[64];
    unsigned prio = 0;
    ssize_t n = mq_receive(q, buf, sizeof buf, &prio);
    std::string m = n >= 0 ? std::string(buf, size_t(n)) : "(none)";
    std::string w = "msg" + std::to_string(want);
    tp::check(m == w && prio == kPrios[want], "message %d is '%s' prio %u, expected '%s' prio %u", k, m.c_str(),
              prio, w.c_str(), kPrios[want]);
  }

  for (int fd : {st[0], dg[0]})
    tp::check(opt(fd, SOL_SOCKET, SO_PEEK_OFF) == -1, "unix %s socket: SO_PEEK_OFF is %d, was -1",
              fd == st[0] ? "stream" : "dgram", opt(fd, SOL_SOCKET, SO_PEEK_OFF));
  char buf[64] = {};
  ssize_t n = recv(st[0], buf, sizeof buf - 1, MSG_PEEK | MSG_DONTWAIT);
  tp::check(n >= 5 && std::strncmp(buf, "alpha", 5) == 0, "unix stream: peek gives '%.*s', expected alphabetagamma",
            int(n > 0 ? n : 0), buf);
  std::string all;
  while ((n = recv(st[0], buf, sizeof buf, MSG_DONTWAIT)) > 0) all.append(buf, size_t(n));
  tp::check(all == "alphabetagamma", "unix stream: read '%s', expected alphabetagamma", all.c_str());
  n = recv(dg[0], buf, sizeof buf - 1, MSG_PEEK | MSG_DONTWAIT);
  tp::check(n == 3 && std::strncmp(buf, "one", 3) == 0, "unix dgram: peek gives '%.*s', expected one",
            int(n > 0 ? n : 0), buf);
  for (auto* want : kDgrams) {
    n = recv(dg[0], buf, sizeof buf, MSG_DONTWAIT);
    std::string m = n >= 0 ? std::string(buf, size_t(n)) : "(none)";
    tp::check(m == want, "unix dgram: read '%s', expected '%s'", m.c_str(), want);
  }
  return tp::finish();
}
