// epoll: a pipe (level-triggered, readable now), an eventfd (edge-triggered), and a socket-free
// timerfd watched with their own data words. After restore: the same events with the same data,
// and EPOLL_CTL_MOD/DEL by the original fd numbers work (epoll keys watches by fd number).
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/timerfd.h>

#include <fcntl.h>

#include <cerrno>
#include <cstdint>

#include "tp.hpp"

int main(int argc, char** argv) {
  tp::init(argc, argv);
  int p[2];
  pipe(p);
  write(p[1], "x", 1);
  int ev = eventfd(5, EFD_NONBLOCK);
  int sem = eventfd(2, EFD_SEMAPHORE | EFD_NONBLOCK);
  int tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK);
  int ep = epoll_create1(EPOLL_CLOEXEC);
  epoll_event e{};
  e.events = EPOLLIN;
  e.data.u64 = 0x1111222233334444ull;
  epoll_ctl(ep, EPOLL_CTL_ADD, p[0], &e);
  e.events = EPOLLIN | EPOLLET;
  e.data.u64 = 0xe7;
  epoll_ctl(ep, EPOLL_CTL_ADD, ev, &e);
  e.events = EPOLLIN;
  e.data.u64 = 0x7f;
  epoll_ctl(ep, EPOLL_CTL_ADD, tfd, &e);
  tp::ready();
  tp::waitGo();
  epoll_event out[8];
  int n = epoll_wait(ep, out, 8, 1000);
  bool pipeSeen = false, evSeen = false, tfdSeen = false;
  for (int i = 0; i < n; i++) {
    if (out[i].data.u64 == 0x1111222233334444ull) pipeSeen = true;
    if (out[i].data.u64 == 0xe7) evSeen = true;
    if (out[i].data.u64 == 0x7f) tfdSeen = true;
  }
  tp::check(pipeSeen, "pipe readable through epoll with its data word (%d events)", n);
  tp::check(evSeen, "eventfd readable through epoll with its data word");
  tp::check(!tfdSeen, "the unarmed timerfd is not ready");
  uint64_t v = 0;
  tp::check(read(ev, &v, 8) == 8 && v == 5, "eventfd counter (%llu)", (unsigned long long)v);
  tp::check(read(sem, &v, 8) == 8 && v == 1, "semaphore eventfd reads 1");
  tp::check(read(sem, &v, 8) == 8 && v == 1 && read(sem, &v, 8) < 0, "semaphore eventfd counter was 2");
  e.events = EPOLLOUT;
  e.data.u64 = 9;
  tp::check(epoll_ctl(ep, EPOLL_CTL_MOD, ev, &e) == 0, "EPOLL_CTL_MOD by the original fd number");
  tp::check(epoll_ctl(ep, EPOLL_CTL_DEL, p[0], nullptr) == 0, "EPOLL_CTL_DEL by the original fd number");
  tp::check(epoll_ctl(ep, EPOLL_CTL_ADD, tfd, &e) < 0 && errno == EEXIST, "the timerfd is still watched");
  tp::check(fcntl(ep, F_GETFD) == FD_CLOEXEC, "epoll close-on-exec");
  return tp::finish();
}
