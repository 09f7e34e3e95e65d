// One object per mode (argv[2]) that the native engine does not restore faithfully yet: the dump
// must refuse it by name and leave this process running, which it proves by answering PASS when
// the go file appears.
//   udp-queued     a datagram waiting in a UDP socket's receive queue
//   tcp-backlog    a connection waiting in a listener's accept queue
//   tcp-closewait  a TCP connection the peer has closed (CLOSE_WAIT)
//   pty-queued     bytes written to a pty slave that the master has not read
//   pty-external   a pty slave at fd 5 whose master is held outside the tree
//   inotify-gone   an inotify watch on a file deleted since
//   epoll-moved    an epoll watch whose fd number now names another file
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/inotify.h>
#include <sys/socket.h>
#include <sys/wait.h>

#include <cstring>
#include <ctime>
#include <string>

#include "tp.hpp"

static int loopbackListener(sockaddr_in& a) {
  int l = socket(AF_INET, SOCK_STREAM, 0);
  a = {};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  bind(l, reinterpret_cast<sockaddr*>(&a), sizeof a);
  listen(l, 4);
  socklen_t al = sizeof a;
  getsockname(l, reinterpret_cast<sockaddr*>(&a), &al);
  return l;
}

int main(int argc, char** argv) {
  tp::init(argc, argv);
  std::string mode = argc > 2 ? argv[2] : "";
  if (mode == "udp-queued") {
    int s = socket(AF_INET, SOCK_DGRAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    bind(s, reinterpret_cast<sockaddr*>(&a), sizeof a);
    socklen_t l = sizeof a;
    getsockname(s, reinterpret_cast<sockaddr*>(&a), &l);
    sendto(s, "queued", 6, 0, reinterpret_cast<sockaddr*>(&a), sizeof a);
  } else if (mode == "tcp-backlog") {
    sockaddr_in a;
    loopbackListener(a);
    int c = socket(AF_INET, SOCK_STREAM, 0);
    connect(c, reinterpret_cast<sockaddr*>(&a), sizeof a);
    usleep(50 * 1000);
  } else if (mode == "tcp-closewait") {
    sockaddr_in a;
    int l = loopbackListener(a);
    int c = socket(AF_INET, SOCK_STREAM, 0);
    connect(c, reinterpret_cast<sockaddr*>(&a), sizeof a);
    int s = accept(l, nullptr, nullptr);
    close(c);
    close(l);
    (void)s;
    usleep(50 * 1000);
  } else if (mode == "pty-queued") {
    int m = posix_openpt(O_RDWR | O_NOCTTY);
    grantpt(m);
    unlockpt(m);
    int s = open(ptsname(m), O_RDWR | O_NOCTTY);
    write(s, "unread", 6);
    usleep(50 * 1000);
  } else if (mode == "pty-external") {
    // The harness passes a pty slave as fd 5 (its master stays with the harness).
  } else if (mode == "inotify-gone") {
    std::string f = std::string(argv[1]) + ".watched";
    close(open(f.c_str(), O_CREAT | O_WRONLY, 0600));
    int in = inotify_init1(0);
    inotify_add_watch(in, f.c_str(), IN_ATTRIB);
    int keep = open(f.c_str(), O_RDONLY);  // the inode lives on, its name does not
    unlink(f.c_str());
    (void)keep;
  } else if (mode == "epoll-moved") {
    int p[2];
    pipe(p);
    int ep = epoll_create1(0);
    epoll_event e{};
    e.events = EPOLLIN;
    epoll_ctl(ep, EPOLL_CTL_ADD, p[0], &e);
    int spare = dup(p[0]);
    int other = open("/dev/null", O_RDONLY);
    dup2(other, p[0]);  // the watched pipe is still open (spare), but not at the watched number
    (void)spare;
  } else {
    std::printf("unknown mode %s\n", mode.c_str());
    return 2;
  }
  tp::ready();
  tp::waitGo();
  return tp::finish();
}
