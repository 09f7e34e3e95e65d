// A TCP connection kept busy through a dump that lets the tree run on (pre-copy, cow,
// leave-running): connects to a peer outside the tree (argv[2]: its port on 127.0.0.1), holds
// argv[3] MiB of touched memory (so writing the image takes a while after the tree runs again),
// and sends numbered lines ("<n>\n", one per millisecond) until the go-file appears, then "end".
// The peer checks it got every number in order. The program checks nothing came back into its
// own receive queue (what a write into a connection still in repair mode does).
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/ioctl.h>
#include <sys/socket.h>

#include <cerrno>
#include <cstring>
#include <string>
#include <vector>

#include "tp.hpp"

int main(int argc, char** argv) {
  tp::init(argc, argv);
  if (argc < 4) {
    std::fprintf(stderr, "usage: %s GO-FILE PEER-PORT MIB\n", argv[0]);
    return 2;
  }
  std::vector<char> mem(size_t(std::atoi(argv[3])) << 20);
  for (size_t i = 0; i < mem.size(); i += 4096) mem[i] = char(i >> 12);
  int s = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(uint16_t(std::atoi(argv[2])));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(s, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
    std::printf("FAIL: connect to the peer: %s\n", std::strerror(errno));
    return 1;
  }
  tp::ready();
  long n = 0;
  while (!tp::goExists()) {
    std::string line = std::to_string(n++) + "\n";
    if (write(s, line.data(), line.size()) != ssize_t(line.size())) {
      std::printf("FAIL: write line %ld: %s\n", n - 1, std::strerror(errno));
      return 1;
    }
    timespec t{0, 1000 * 1000};
    nanosleep(&t, nullptr);
  }
  int queued = 0;
  ioctl(s, FIONREAD, &queued);
  tp::check(queued == 0, "%d bytes arrived in the receive queue; the peer sent nothing (own writes in repair mode?)",
            queued);
  for (size_t i = 0; i < mem.size(); i += 4096)
    if (mem[i] != char(i >> 12)) {
      tp::check(false, "memory differs at page %zu", i >> 12);
      break;
    }
  std::printf("SENT %ld\n", n);
  (void)!write(s, "end\n", 4);
  return tp::finish();
}
