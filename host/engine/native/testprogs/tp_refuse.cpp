// Holds objects the native engine does not restore yet (a netlink socket, a SysV shm segment
// unmapped in part; its epoll fd is restored since events.cpp): the dump must be refused naming
// them and leave this process running, which it proves by answering PASS when the go file appears.
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <sys/epoll.h>
#include <sys/ipc.h>
#include <sys/mman.h>
#include <sys/shm.h>
#include <sys/socket.h>

#include "tp.hpp"

int main(int argc, char** argv) {
  tp::init(argc, argv);
  // NETLINK_ROUTE subscribed to link events (a netlink socket without groups is restored).
  int nl = socket(AF_NETLINK, SOCK_RAW, 0);
  sockaddr_nl a{};
  a.nl_family = AF_NETLINK;
  a.nl_groups = RTMGRP_LINK;
  bind(nl, reinterpret_cast<sockaddr*>(&a), sizeof a);
  int ep = epoll_create1(0);
  // A SysV segment unmapped in part (its first page): attaches are restored whole only.
  int id = shmget(IPC_PRIVATE, 8192, IPC_CREAT | 0600);
  void* p = shmat(id, nullptr, 0);
  munmap(p, 4096);
  shmctl(id, IPC_RMID, nullptr);
  (void)ep;
  (void)p;
  tp::ready();
  tp::waitGo();
  return tp::finish();
}
