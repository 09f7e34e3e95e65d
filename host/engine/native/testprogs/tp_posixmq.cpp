// POSIX message queues: a named queue with messages of several priorities open twice (read-write
// and write-only non-blocking), and a queue unlinked while open with a message in it. After
// restore: attributes, flags, message order and priorities, the name present or gone as before.
#include <fcntl.h>
#include <mqueue.h>

#include <cerrno>
#include <cstring>
#include <string>

#include "tp.hpp"

int main(int argc, char** argv) {
  tp::init(argc, argv);
  std::string n1 = "/crb-tp-" + std::to_string(getpid()), n2 = "/crb-tp-del-" + std::to_string(getpid());
  mq_attr a{};
  a.mq_maxmsg = 5;
  a.mq_msgsize = 64;
  mqd_t q = mq_open(n1.c_str(), O_RDWR | O_CREAT | O_EXCL, 0640, &a);
  mqd_t w = mq_open(n1.c_str(), O_WRONLY | O_NONBLOCK);
  mq_send(q, "low", 3, 1);
  mq_send(w, "high", 4, 9);
  mq_send(q, "low2", 4, 1);
  mq_send(q, "mid", 3, 5);
  mqd_t d = mq_open(n2.c_str(), O_RDWR | O_CREAT | O_EXCL, 0600, &a);
  mq_send(d, "gone", 4, 3);
  mq_unlink(n2.c_str());
  tp::check(q >= 0 && w >= 0 && d >= 0, "mq_open");
  tp::ready();
  tp::waitGo();
  mq_attr now{};
  mq_getattr(q, &now);
  tp::check(now.mq_maxmsg == 5 && now.mq_msgsize == 64 && now.mq_curmsgs == 4, "attributes (%ld %ld %ld)",
            now.mq_maxmsg, now.mq_msgsize, now.mq_curmsgs);
  mq_getattr(w, &now);
  tp::check(now.mq_flags & O_NONBLOCK, "O_NONBLOCK of the second descriptor");
  const char* want[] = {"high", "mid", "low", "low2"};
  unsigned prios[] = {9, 5, 1, 1};
  for (int i = 0; i < 4; i++) {
    char buf[64] = {};
    unsigned p = 0;
    ssize_t n = mq_receive(q, buf, sizeof buf, &p);
    tp::check(n > 0 && std::strcmp(buf, want[i]) == 0 && p == prios[i], "message %d: %s prio %u", i, buf, p);
  }
  tp::check(mq_send(w, "x", 1, 0) == 0, "write-only descriptor sends");
  char buf[64] = {};
  unsigned p = 0;
  tp::check(mq_receive(d, buf, sizeof buf, &p) == 4 && std::strcmp(buf, "gone") == 0 && p == 3,
            "message of the unlinked queue (%s)", buf);
  mqd_t again = mq_open(n2.c_str(), O_RDONLY);
  tp::check(again < 0 && errno == ENOENT, "unlinked queue still unlinked");
  tp::check(mq_unlink(n1.c_str()) == 0, "named queue still named");
  return tp::finish();
}
