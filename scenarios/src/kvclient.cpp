// crb-kvclient: a redis client that holds ONE connection for its whole life and reads back what it
// wrote. A checkpoint/restore that breaks the TCP connection (or loses server state) shows up as
// an error; the client never reconnects, so "connections=1, errors=0" means the same socket
// carried every request across the checkpoint.
//   crb-kvclient run [--port 6379] [--interval-ms 20] [--state DIR]
//   crb-kvclient check [--state DIR]     exit 0 when the client is healthy
//   crb-kvclient progress [--state DIR]  prints the number of verified round trips
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

#include <cinttypes>
#include <cstdint>

#include "common.hpp"

namespace {

std::string bulk(const std::string& s) {
  return "$" + std::to_string(s.size()) + "\r\n" + s + "\r\n";
}

std::string command(std::initializer_list<std::string> parts) {
  std::string out = "*" + std::to_string(parts.size()) + "\r\n";
  for (auto& p : parts) out += bulk(p);
  return out;
}

class Conn {
 public:
  bool open(int port) {
    fd_ = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int one = 1;
    setsockopt(fd_, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return connect(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0;
  }
  bool send(const std::string& s) {
    size_t off = 0;
    while (off < s.size()) {
      ssize_t n = ::write(fd_, s.data() + off, s.size() - off);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) return false;
      off += size_t(n);
    }
    return true;
  }
  // One RESP reply: simple string, error, integer or bulk string (all this client uses).
  bool reply(std::string& out) {
    std::string line;
    if (!readLine(line) || line.empty()) return false;
    if (line[0] == '+' || line[0] == ':' || line[0] == '-') {
      out = line;
      return line[0] != '-';
    }
    if (line[0] != '$') return false;
    long len = std::atol(line.c_str() + 1);
    if (len < 0) {
      out = "(nil)";
      return true;
    }
    out.clear();
    while (long(buf_.size()) < len + 2)
      if (!fill()) return false;
    out = buf_.substr(0, size_t(len));
    buf_.erase(0, size_t(len) + 2);
    return true;
  }

 private:
  bool fill() {
    char tmp[4096];
    ssize_t n;
    do n = ::read(fd_, tmp, sizeof tmp);
    while (n < 0 && errno == EINTR);
    if (n <= 0) return false;
    buf_.append(tmp, size_t(n));
    return true;
  }
  bool readLine(std::string& line) {
    size_t pos;
    while ((pos = buf_.find("\r\n")) == std::string::npos)
      if (!fill()) return false;
    line = buf_.substr(0, pos);
    buf_.erase(0, pos + 2);
    return true;
  }
  int fd_ = -1;
  std::string buf_;
};

std::string valueFor(uint64_t i) {
  return "v" + std::to_string(i * 2654435761ULL) + "-crbench";
}

int run(int argc, char** argv) {
  int port = std::atoi(crbw::opt(argc, argv, "--port", "6379").c_str());
  double interval =
      std::strtod(crbw::opt(argc, argv, "--interval-ms", "20").c_str(), nullptr) / 1000.0;
  std::string state = crbw::opt(argc, argv, "--state", "/tmp/crb-kvclient");
  ::mkdir(state.c_str(), 0755);
  Conn c;
  // redis-server is started alongside; give it a few seconds, then hold the one connection.
  bool connected = false;
  for (int i = 0; i < 100 && !connected; ++i) {
    connected = c.open(port);
    if (!connected) crbw::sleepSeconds(0.1);
  }
  uint64_t ok = 0, errors = 0;
  std::string lastError;
  auto status = [&] {
    char buf[512];
    std::snprintf(buf, sizeof buf,
                  "connections=%d\nverified=%" PRIu64 "\nerrors=%" PRIu64 "\nlast_error=%s\n",
                  connected ? 1 : 0, ok, errors, lastError.c_str());
    crbw::writeStatus(state + "/status", buf);
  };
  if (!connected) {
    lastError = "could not connect to redis on port " + std::to_string(port);
    errors = 1;
    status();
    return 1;
  }
  crbw::writePid(state + "/pid");
  for (uint64_t i = 1;; ++i) {
    std::string key = "crb:" + std::to_string(i), r;
    // Write the new key, read it back, and read back an older key to catch lost server state.
    uint64_t old = 1 + (i * 7919) % i;
    bool good = c.send(command({"SET", key, valueFor(i)})) && c.reply(r) && r == "+OK" &&
                c.send(command({"GET", key})) && c.reply(r) && r == valueFor(i) &&
                c.send(command({"GET", "crb:" + std::to_string(old)})) && c.reply(r) &&
                r == valueFor(old);
    if (good) {
      ++ok;
    } else {
      ++errors;
      lastError = "round trip " + std::to_string(i) + " failed (reply '" + r + "')";
      status();
      // The connection is broken or the data is wrong: stay alive to report it, never reconnect.
      for (;;) crbw::sleepSeconds(1);
    }
    if (i % 10 == 0) status();
    crbw::sleepSeconds(interval);
  }
}

int check(int argc, char** argv) {
  std::string st =
      crbw::readText(crbw::opt(argc, argv, "--state", "/tmp/crb-kvclient") + "/status");
  if (st.empty()) crbw::die("crb-kvclient check: no status (is the client running?)");
  std::printf("connections=%s errors=%s last_error=%s\n", crbw::field(st, "connections").c_str(),
              crbw::field(st, "errors").c_str(), crbw::field(st, "last_error").c_str());
  return crbw::field(st, "connections") == "1" && crbw::field(st, "errors") == "0" ? 0 : 1;
}

int progress(int argc, char** argv) {
  return crbw::printStatusField(argc, argv, "/tmp/crb-kvclient", "verified");
}

}  // namespace

int main(int argc, char** argv) {
  return crbw::dispatch(
      argc, argv, {{"run", run}, {"check", check}, {"progress", progress}},
      "usage: crb-kvclient run|check|progress [--port P] [--interval-ms MS] [--state DIR]\n");
}
