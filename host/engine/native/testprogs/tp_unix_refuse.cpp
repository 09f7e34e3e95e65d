// Unix socket states the native engine refuses (argv[2] picks one), or an outside connection:
//   scm       a file descriptor in flight (SCM_RIGHTS queued on a socketpair)
//   pending   a listening socket with a connection not yet accepted
//   external  a stream connection to argv[3], a listener outside the tree; after the go file it
//             sends "after <pid>" on it (the harness checks what arrives, and where)
// In the refusal modes the dump must fail naming the object and leave this process running,
// which it proves by answering PASS once the go file appears.
#include <sys/socket.h>
#include <sys/un.h>

#include <cstddef>
#include <cstring>
#include <string>

#include "tp.hpp"

int main(int argc, char** argv) {
  tp::init(argc, argv);
  std::string mode = argc > 2 ? argv[2] : "";
  int keep = -1;
  if (mode == "scm") {
    int sv[2];
    socketpair(AF_UNIX, SOCK_STREAM, 0, sv);
    int passed = dup(1);
    char c = 'x';
    iovec iov{&c, 1};
    alignas(cmsghdr) char cbuf[CMSG_SPACE(sizeof(int))] = {};
    msghdr mh{};
    mh.msg_iov = &iov;
    mh.msg_iovlen = 1;
    mh.msg_control = cbuf;
    mh.msg_controllen = sizeof cbuf;
    cmsghdr* cm = CMSG_FIRSTHDR(&mh);
    cm->cmsg_level = SOL_SOCKET;
    cm->cmsg_type = SCM_RIGHTS;
    cm->cmsg_len = CMSG_LEN(sizeof(int));
    std::memcpy(CMSG_DATA(cm), &passed, sizeof passed);
    tp::check(sendmsg(sv[0], &mh, 0) == 1, "sendmsg SCM_RIGHTS");
    close(passed);
    keep = sv[1];
  } else if (mode == "pending") {
    std::string name = std::string("\0crb-pending-", 13) + std::to_string(getpid());
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    std::memcpy(a.sun_path, name.data(), name.size());
    socklen_t l = socklen_t(offsetof(sockaddr_un, sun_path) + name.size());
    int L = socket(AF_UNIX, SOCK_STREAM, 0);
    bind(L, reinterpret_cast<sockaddr*>(&a), l);
    listen(L, 4);
    int C = socket(AF_UNIX, SOCK_STREAM, 0);
    tp::check(connect(C, reinterpret_cast<sockaddr*>(&a), l) == 0, "connect");
    keep = C;
  } else if (mode == "external" && argc > 3) {
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    std::strncpy(a.sun_path, argv[3], sizeof a.sun_path - 1);
    keep = socket(AF_UNIX, SOCK_STREAM, 0);
    tp::check(connect(keep, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0, "connect to %s", argv[3]);
  } else {
    std::fprintf(stderr, "usage: %s GO-FILE scm|pending|external PATH\n", argv[0]);
    return 2;
  }
  tp::ready();
  tp::waitGo();
  if (mode == "external") {
    std::string msg = "after " + std::to_string(getpid());
    tp::check(send(keep, msg.data(), msg.size(), MSG_NOSIGNAL) == ssize_t(msg.size()), "send after restore");
  }
  return tp::finish();
}
