// Holds objects the native engine does not restore yet (a netlink socket, a SysV shm segment;
// its epoll fd is restored since events.cpp): the dump must be refused naming them and leave this
// process running, which it proves by answering PASS when the go file appears.
#include <sys/epoll.h>
#include <sys/ipc.h>
#include <sys/shm.h>
#include <sys/socket.h>

#include "tp.hpp"

int main(int argc, char** argv) {
  tp::init(argc, argv);
  int nl = socket(AF_NETLINK, SOCK_RAW, 0);  // NETLINK_ROUTE; unix socketpairs are restored now
  (void)nl;
  int ep = epoll_create1(0);
  int id = shmget(IPC_PRIVATE, 4096, IPC_CREAT | 0600);
  void* p = shmat(id, nullptr, 0);
  shmctl(id, IPC_RMID, nullptr);
  (void)ep;
  (void)p;
  tp::ready();
  tp::waitGo();
  return tp::finish();
}
