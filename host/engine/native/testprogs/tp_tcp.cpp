// TCP: an IPv4 listener with a connection to it from a child (both ends in the tree), each end
// holding bytes the other has not read yet, and an IPv6 listener. With "external" (argv[2]) it
// also accepts one connection from outside the tree (the harness) before READY and, after
// restore, answers what the peer sent while the tree was gone.
// After restore: the queued bytes arrive, 256 KiB go both ways with the same sequence, the
// listeners still accept, and options (TCP_NODELAY, SO_KEEPALIVE) are kept.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/wait.h>

#include <cstring>
#include <string>

#include "tp.hpp"

static bool readAll(int fd, char* buf, size_t n) {
  size_t done = 0;
  while (done < n) {
    ssize_t r = read(fd, buf + done, n - done);
    if (r <= 0) return false;
    done += size_t(r);
  }
  return true;
}

static bool writeAll(int fd, const char* buf, size_t n) {
  size_t done = 0;
  while (done < n) {
    ssize_t r = write(fd, buf + done, n - done);
    if (r <= 0) return false;
    done += size_t(r);
  }
  return true;
}

static int opt(int fd, int level, int o) {
  int v = 0;
  socklen_t l = sizeof v;
  getsockopt(fd, level, o, &v, &l);
  return v;
}

// Sends `n` patterned bytes and checks the peer's echo of them, 4 KiB at a time.
static bool roundTrip(int fd, size_t n, unsigned seed) {
  char out[4096], in[4096];
  for (size_t done = 0; done < n; done += sizeof out) {
    for (size_t i = 0; i < sizeof out; i++) out[i] = char((done + i) * 31 + seed);
    if (!writeAll(fd, out, sizeof out) || !readAll(fd, in, sizeof in) || std::memcmp(in, out, sizeof in) != 0)
      return false;
  }
  return true;
}

int main(int argc, char** argv) {
  tp::init(argc, argv);
  bool external = argc > 2 && std::strcmp(argv[2], "external") == 0;
  int l4 = socket(AF_INET, SOCK_STREAM, 0);
  int one = 1;
  setsockopt(l4, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  bind(l4, reinterpret_cast<sockaddr*>(&a), sizeof a);
  listen(l4, 16);
  socklen_t al = sizeof a;
  getsockname(l4, reinterpret_cast<sockaddr*>(&a), &al);
  int l6 = socket(AF_INET6, SOCK_STREAM, 0);
  sockaddr_in6 a6{};
  a6.sin6_family = AF_INET6;
  a6.sin6_addr = in6addr_loopback;
  bind(l6, reinterpret_cast<sockaddr*>(&a6), sizeof a6);
  listen(l6, 4);
  al = sizeof a6;
  getsockname(l6, reinterpret_cast<sockaddr*>(&a6), &al);

  pid_t child = fork();
  if (child == 0) {
    int c = socket(AF_INET, SOCK_STREAM, 0);
    setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(c, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) _exit(3);
    write(c, "from-child", 10);  // left unread by the parent until after restore
    tp::waitGo();
    char buf[16] = {};
    bool ok = readAll(c, buf, 11) && std::memcmp(buf, "from-parent", 11) == 0;
    // Echo what the parent sends.
    char b[4096];
    for (;;) {
      if (!readAll(c, b, sizeof b)) break;
      if (!writeAll(c, b, sizeof b)) break;
    }
    ok = ok && opt(c, IPPROTO_TCP, TCP_NODELAY);
    int c6 = socket(AF_INET6, SOCK_STREAM, 0);
    ok = ok && connect(c6, reinterpret_cast<sockaddr*>(&a6), sizeof a6) == 0;
    _exit(ok ? 0 : 1);
  }
  int s = accept(l4, nullptr, nullptr);
  setsockopt(s, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof one);
  write(s, "from-parent", 11);  // left unread by the child until after restore
  int ext = -1;
  if (external) {
    std::printf("PORT %d\n", ntohs(a.sin_port));
    ext = accept(l4, nullptr, nullptr);
    writeAll(ext, "hello\n", 6);
  }
  usleep(100 * 1000);  // the queued bytes have reached the other side's receive queue
  tp::ready();
  tp::waitGo();
  char buf[16] = {};
  tp::check(readAll(s, buf, 10) && std::memcmp(buf, "from-child", 10) == 0, "bytes queued toward the parent (%s)", buf);
  tp::check(roundTrip(s, 256 * 1024, 7), "256 KiB echoed by the child over the restored connection");
  tp::check(opt(s, SOL_SOCKET, SO_KEEPALIVE) == 1, "SO_KEEPALIVE kept");
  shutdown(s, SHUT_WR);
  int s6 = accept(l6, nullptr, nullptr);
  tp::check(s6 >= 0, "the IPv6 listener accepts");
  int st = 0;
  waitpid(child, &st, 0);
  tp::check(WIFEXITED(st) && WEXITSTATUS(st) == 0, "the child's checks (status %d)", st);
  if (external) {
    // Echo each line the outside peer sends until it closes.
    std::string line;
    char ch;
    int lines = 0;
    while (read(ext, &ch, 1) == 1) {
      line += ch;
      if (ch == '\n') {
        std::string reply = "echo " + line;
        writeAll(ext, reply.data(), reply.size());
        line.clear();
        lines++;
      }
    }
    tp::check(lines >= 2, "the outside peer's lines were answered (%d)", lines);
  }
  return tp::finish();
}
