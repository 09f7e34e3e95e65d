// Inet sockets (IPv4 and IPv6): UDP (bound or connected, common options), TCP listening, and
// TCP established connections through TCP_REPAIR (sequence numbers, both queues, MSS, window
// scale, SACK, timestamps, window).
//
// Each socket is read through a pidfd_getfd duplicate; its state comes from sock_diag
// (inet_diag, asked in the socket's network namespace). An established connection must be silent
// on the wire from the moment its state is read until its copy runs: the dump inserts netfilter
// DROP rules for its 4-tuple in the socket's namespace (else the kernel would ACK data we never
// saved, or answer the peer with a RST once the original is gone), and puts the socket in repair
// mode so its close is silent. A failed or leave-running dump takes both back; a stop-and-copy
// leaves the rules for the restore, which removes them once the copy is out of repair mode.
// Queued UDP datagrams, pending accepts and TCP states other than LISTEN/ESTABLISHED are refused.
#include <arpa/inet.h>
#include <fcntl.h>
#include <linux/inet_diag.h>
#include <linux/netlink.h>
#include <linux/sock_diag.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sched.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <linux/sockios.h>

#include <algorithm>
#include <cctype>
#include <cstring>

#include "core/proc.hpp"

#include "engine/native/internal.hpp"
#include "engine/native/procfs.hpp"

namespace crb::native {

namespace {
struct DiagInfo {
  int state = 0;
  uint32_t rqueue = 0, wqueue = 0;
};

// Runs `fn` with this thread in the network namespace `nsFd` (-1: where it is).
template <typename F>
auto inNetns(int nsFd, F fn) -> decltype(fn()) {
  if (nsFd < 0) return fn();
  Fd mine(::open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC));
  if (!mine.valid() || ::setns(nsFd, CLONE_NEWNET) != 0) return sysError("enter the sockets' network namespace", errno);
  auto r = fn();
  if (::setns(mine.get(), CLONE_NEWNET) != 0) return sysError("return to crbench's network namespace", errno);
  return r;
}

// sock_diag: the socket with inode `ino` among this family/protocol's sockets of the namespace.
Result<DiagInfo> inetDiag(int nsFd, int family, int protocol, uint64_t ino) {
  CRB_ASSIGN(int nl, inNetns(nsFd, [&]() -> Result<int> {
               int s = ::socket(AF_NETLINK, SOCK_DGRAM | SOCK_CLOEXEC, NETLINK_SOCK_DIAG);
               if (s < 0) return sysError("socket(NETLINK_SOCK_DIAG)", errno);
               return s;
             }));
  Fd sock(nl);
  struct {
    nlmsghdr nh;
    inet_diag_req_v2 r;
  } req{};
  req.nh.nlmsg_len = sizeof req;
  req.nh.nlmsg_type = SOCK_DIAG_BY_FAMILY;
  req.nh.nlmsg_flags = NLM_F_REQUEST | NLM_F_DUMP;
  req.r.sdiag_family = uint8_t(family);
  req.r.sdiag_protocol = uint8_t(protocol);
  req.r.idiag_states = ~0u;
  if (::send(sock.get(), &req, sizeof req, 0) < 0) return sysError("send inet_diag request", errno);
  std::vector<char> buf(1 << 16);
  for (;;) {
    ssize_t n = ::recv(sock.get(), buf.data(), buf.size(), 0);
    if (n < 0) return sysError("read inet_diag answer", errno);
    if (n == 0) break;
    for (auto* h = reinterpret_cast<nlmsghdr*>(buf.data()); NLMSG_OK(h, unsigned(n)); h = NLMSG_NEXT(h, n)) {
      if (h->nlmsg_type == NLMSG_DONE) return makeError(fmt::format("socket inode {} not found by inet_diag", ino));
      if (h->nlmsg_type == NLMSG_ERROR) return makeError("inet_diag answered with an error");
      auto* m = static_cast<inet_diag_msg*>(NLMSG_DATA(h));
      if (m->idiag_inode == ino) return DiagInfo{m->idiag_state, m->idiag_rqueue, m->idiag_wqueue};
    }
  }
  return makeError(fmt::format("socket inode {} not found by inet_diag", ino));
}

Json addrJson(const sockaddr_storage& ss) {
  char buf[INET6_ADDRSTRLEN] = {};
  if (ss.ss_family == AF_INET) {
    auto* a = reinterpret_cast<const sockaddr_in*>(&ss);
    ::inet_ntop(AF_INET, &a->sin_addr, buf, sizeof buf);
    return {{"addr", buf}, {"port", ntohs(a->sin_port)}};
  }
  auto* a = reinterpret_cast<const sockaddr_in6*>(&ss);
  ::inet_ntop(AF_INET6, &a->sin6_addr, buf, sizeof buf);
  return {{"addr", buf}, {"port", ntohs(a->sin6_port)}, {"flowinfo", a->sin6_flowinfo}, {"scope", a->sin6_scope_id}};
}

socklen_t addrFrom(const Json& j, int family, sockaddr_storage& ss) {
  std::memset(&ss, 0, sizeof ss);
  std::string a = j.value("addr", family == AF_INET ? "0.0.0.0" : "::");
  if (family == AF_INET) {
    auto* s = reinterpret_cast<sockaddr_in*>(&ss);
    s->sin_family = AF_INET;
    s->sin_port = htons(uint16_t(j.value("port", 0)));
    ::inet_pton(AF_INET, a.c_str(), &s->sin_addr);
    return sizeof *s;
  }
  auto* s = reinterpret_cast<sockaddr_in6*>(&ss);
  s->sin6_family = AF_INET6;
  s->sin6_port = htons(uint16_t(j.value("port", 0)));
  s->sin6_flowinfo = j.value("flowinfo", 0u);
  s->sin6_scope_id = j.value("scope", 0u);
  ::inet_pton(AF_INET6, a.c_str(), &s->sin6_addr);
  return sizeof *s;
}

struct IntOpt {
  const char* name;
  int level, opt;
};
// Options carried as plain ints (set back in this order).
const IntOpt kIntOpts[] = {
    {"reuseaddr", SOL_SOCKET, SO_REUSEADDR}, {"reuseport", SOL_SOCKET, SO_REUSEPORT},
    {"broadcast", SOL_SOCKET, SO_BROADCAST}, {"keepalive", SOL_SOCKET, SO_KEEPALIVE},
    {"priority", SOL_SOCKET, SO_PRIORITY},   {"rcvlowat", SOL_SOCKET, SO_RCVLOWAT},
    {"mark", SOL_SOCKET, SO_MARK},           {"oobinline", SOL_SOCKET, SO_OOBINLINE},
};
const IntOpt kTcpOpts[] = {
    {"nodelay", IPPROTO_TCP, TCP_NODELAY},     {"cork", IPPROTO_TCP, TCP_CORK},
    {"keepidle", IPPROTO_TCP, TCP_KEEPIDLE},   {"keepintvl", IPPROTO_TCP, TCP_KEEPINTVL},
    {"keepcnt", IPPROTO_TCP, TCP_KEEPCNT},     {"user_timeout", IPPROTO_TCP, TCP_USER_TIMEOUT},
};

std::string sockaddrText(const Json& j) {
  std::string a = j.value("addr", "?");
  return (a.find(':') != std::string::npos ? "[" + a + "]" : a) + ":" + std::to_string(j.value("port", 0));
}

// The netfilter rules that keep one connection silent: drop both directions of its 4-tuple.
std::vector<std::vector<std::string>> lockRules(int family, const Json& local, const Json& peer) {
  std::string tool = family == AF_INET ? "iptables" : "ip6tables";
  std::string l = local.value("addr", ""), r = peer.value("addr", "");
  std::string lp = std::to_string(local.value("port", 0)), rp = std::to_string(peer.value("port", 0));
  return {{tool, "-w", "INPUT", "-p", "tcp", "-s", r, "--sport", rp, "-d", l, "--dport", lp, "-j", "DROP"},
          {tool, "-w", "OUTPUT", "-p", "tcp", "-s", l, "--sport", lp, "-d", r, "--dport", rp, "-j", "DROP"}};
}

// iptables -I/-D <rule> run in the network namespace at nsPath.
std::vector<std::string> netfilterArgv(const std::string& nsPath, const std::vector<std::string>& rule, bool insert) {
  std::vector<std::string> argv{"nsenter", "--net=" + nsPath, rule[0], rule[1], insert ? "-I" : "-D"};
  argv.insert(argv.end(), rule.begin() + 2, rule.end());
  return argv;
}

Status netfilter(const std::string& nsPath, const std::vector<std::string>& rule, bool insert) {
  auto argv = netfilterArgv(nsPath, rule, insert);
  CRB_ASSIGN(auto r, runCommand(argv));
  if (!r.succeeded())
    return makeError(fmt::format("{}: {}", joinArgs(argv), r.describe()),
                     "the native engine keeps TCP connections quiet with iptables (package iptables)");
  return success();
}

int intOpt(int fd, int level, int opt) {
  int v = 0;
  socklen_t l = sizeof v;
  return ::getsockopt(fd, level, opt, &v, &l) == 0 ? v : 0;
}

// Everything a queue holds, read in repair mode (MSG_PEEK leaves it in place).
Result<std::string> peekQueue(int fd, int queue, uint32_t len, uint32_t& seq) {
  if (::setsockopt(fd, IPPROTO_TCP, TCP_REPAIR_QUEUE, &queue, sizeof queue) != 0)
    return sysError("select TCP repair queue", errno);
  socklen_t l = sizeof seq;
  if (::getsockopt(fd, IPPROTO_TCP, TCP_QUEUE_SEQ, &seq, &l) != 0) return sysError("read TCP queue sequence", errno);
  std::string data(len, '\0');
  if (len == 0) return data;
  ssize_t n = ::recv(fd, data.data(), len, MSG_PEEK | MSG_DONTWAIT);
  if (n != ssize_t(len)) return makeError(fmt::format("read {} queued TCP bytes: got {}", len, n));
  return data;
}

Status dumpTcpEstablished(DumpCtx& c, pid_t pid, int fd, Fd& dup, Json& d, const std::string& what) {
  int family = d["family"];
  std::string nsPath = fmt::format("/proc/{}/ns/net", pid);
  auto rules = lockRules(family, d["local"], d["peer"]);
  // Each change is recorded with the guardian before it is made (guardian.hpp).
  auto guard = c.seizure->guardian();
  std::vector<int> ruleSlots;
  auto unlock = [guard, rules, nsPath](const std::vector<int>& slots) {
    for (size_t j = 0; j < slots.size(); j++) {
      (void)netfilter(nsPath, rules[j], false);
      guard->fixed(slots[j]);
    }
  };
  for (size_t i = 0; i < rules.size(); i++) {
    auto slot = guard->noteCommand(pid, netfilterArgv(nsPath, rules[i], false));
    Status st = slot.ok() ? success() : Status(slot.error());
    if (slot.ok()) {
      ruleSlots.push_back(*slot);
      auto insert = netfilterArgv(nsPath, rules[i], true);
      auto ran = guard->runCommand(insert);
      if (!ran.ok())
        st = ran.error();
      else if (!WIFEXITED(*ran) || WEXITSTATUS(*ran) != 0)
        st = makeError(fmt::format("{}: failed (status {:#x}; its message is above)", joinArgs(insert), *ran),
                       "the native engine keeps TCP connections quiet with iptables (package iptables)");
    }
    if (!st.ok()) {
      // The failed rule is not there: its -D would fail harmlessly; the slot goes with the others.
      unlock(ruleSlots);
      return st.error().context("keep " + what + " quiet during the dump");
    }
  }
  faultPoint("tcp-lock");
  auto repairSlot = guard->noteTcpRepair(pid, fd);
  if (!repairSlot.ok()) {
    unlock(ruleSlots);
    return repairSlot.error();
  }
  int on = TCP_REPAIR_ON;
  if (::setsockopt(dup.get(), IPPROTO_TCP, TCP_REPAIR, &on, sizeof on) != 0) {
    int e = errno;
    guard->fixed(*repairSlot);
    unlock(ruleSlots);
    return sysError("TCP_REPAIR on " + what, e);
  }
  // Put back unless the dump ends with the tree killed (then the rules stay for the restore and
  // the socket, closed in repair mode, goes away without a word; the guardian forgets both).
  auto shared = std::make_shared<Fd>(std::move(dup));
  c.undo.push_back([shared, unlock, ruleSlots, guard, slot = *repairSlot] {
    int off = TCP_REPAIR_OFF;
    ::setsockopt(shared->get(), IPPROTO_TCP, TCP_REPAIR, &off, sizeof off);
    guard->fixed(slot);
    unlock(ruleSlots);
  });
  int s = shared->get();
  int outq = 0, inq = 0, unsent = 0;
  ::ioctl(s, SIOCOUTQ, &outq);
  ::ioctl(s, SIOCINQ, &inq);
  // The tail of the send queue never sent: the restore must not put it back as "sent" (repair
  // mode), or it would wait for a retransmission timeout instead of going out at once.
  ::ioctl(s, SIOCOUTQNSD, &unsent);
  uint32_t sndSeq = 0, rcvSeq = 0;
  CRB_ASSIGN(auto sendData, peekQueue(s, TCP_SEND_QUEUE, uint32_t(outq), sndSeq));
  CRB_ASSIGN(auto recvData, peekQueue(s, TCP_RECV_QUEUE, uint32_t(inq), rcvSeq));
  tcp_info ti{};
  socklen_t l = sizeof ti;
  if (::getsockopt(s, IPPROTO_TCP, TCP_INFO, &ti, &l) != 0) return sysError("TCP_INFO of " + what, errno);
  tcp_repair_window w{};
  l = sizeof w;
  if (::getsockopt(s, IPPROTO_TCP, TCP_REPAIR_WINDOW, &w, &l) != 0) return sysError("TCP_REPAIR_WINDOW of " + what, errno);
  uint32_t ts = 0;
  l = sizeof ts;
  ::getsockopt(s, IPPROTO_TCP, TCP_TIMESTAMP, &ts, &l);
  d["tcp"] = {{"snd_seq", sndSeq},  // write_seq: after the last queued byte
              {"rcv_seq", rcvSeq},  // rcv_nxt: after the last queued byte
              {"send_queue", toHex(sendData.data(), sendData.size())},
              {"unsent", std::clamp(unsent, 0, outq)},
              {"recv_queue", toHex(recvData.data(), recvData.size())},
              {"mss", intOpt(s, IPPROTO_TCP, TCP_MAXSEG)},
              {"options", ti.tcpi_options},
              {"snd_wscale", int(ti.tcpi_snd_wscale)},
              {"rcv_wscale", int(ti.tcpi_rcv_wscale)},
              {"timestamp", ts},
              {"window", {w.snd_wl1, w.snd_wnd, w.max_window, w.rcv_wnd, w.rcv_wup}},
              {"lock_rules", rules}};
  faultPoint("tcp-repair");
  return success();
}
}  // namespace

bool dumpInetSocket(DumpCtx& c, pid_t pid, int fd, const struct stat& st, FileDesc& f, const std::string& what) {
  if (!S_ISSOCK(st.st_mode)) return false;
  auto dupR = grabRemoteFd(pid, fd);
  if (!dupR.ok()) return false;
  Fd dup = std::move(*dupR);
  int family = intOpt(dup.get(), SOL_SOCKET, SO_DOMAIN);
  if (family != AF_INET && family != AF_INET6) return false;
  int type = intOpt(dup.get(), SOL_SOCKET, SO_TYPE), proto = intOpt(dup.get(), SOL_SOCKET, SO_PROTOCOL);
  f.kind = "inet";
  Json d{{"family", family}, {"type", type}, {"proto", proto}};
  std::string name = fmt::format("{} ({} {})", what, family == AF_INET ? "IPv4" : "IPv6",
                                 proto == IPPROTO_TCP ? "TCP" : proto == IPPROTO_UDP ? "UDP" : std::to_string(proto));
  if (!((type == SOCK_STREAM && proto == IPPROTO_TCP) || (type == SOCK_DGRAM && proto == IPPROTO_UDP))) {
    c.refuse(name + ": only TCP and UDP inet sockets are restored");
    return true;
  }
  sockaddr_storage ss{};
  socklen_t l = sizeof ss;
  if (::getsockname(dup.get(), reinterpret_cast<sockaddr*>(&ss), &l) == 0) d["local"] = addrJson(ss);
  l = sizeof ss;
  bool connected = ::getpeername(dup.get(), reinterpret_cast<sockaddr*>(&ss), &l) == 0;
  if (connected) d["peer"] = addrJson(ss);
  Json opts = Json::object();
  for (auto& o : kIntOpts) opts[o.name] = intOpt(dup.get(), o.level, o.opt);
  // The kernel doubles what was asked; set back half of it, only if the program had set it.
  opts["sndbuf"] = intOpt(dup.get(), SOL_SOCKET, SO_SNDBUF) / 2;
  opts["rcvbuf"] = intOpt(dup.get(), SOL_SOCKET, SO_RCVBUF) / 2;
  if (family == AF_INET6) opts["v6only"] = intOpt(dup.get(), IPPROTO_IPV6, IPV6_V6ONLY);
  if (family == AF_INET) opts["tos"] = intOpt(dup.get(), IPPROTO_IP, IP_TOS);
  if (proto == IPPROTO_TCP)
    for (auto& o : kTcpOpts) opts[o.name] = intOpt(dup.get(), o.level, o.opt);
  d["opts"] = opts;
  d["userlocks"] = 0;
  Fd ns(::open(fmt::format("/proc/{}/ns/net", pid).c_str(), O_RDONLY | O_CLOEXEC));
  auto diag = inetDiag(ns.get(), family, proto, st.st_ino);
  if (!diag.ok()) {
    // Sockets in no hash table (never bound, or closed after a failed connect) are not listed;
    // TCP_INFO still gives a TCP socket's state, and an unbound UDP socket has port 0.
    tcp_info ti{};
    socklen_t tl = sizeof ti;
    bool unhashed = proto == IPPROTO_TCP
                        ? ::getsockopt(dup.get(), IPPROTO_TCP, TCP_INFO, &ti, &tl) == 0 && ti.tcpi_state == 7 /* CLOSE */
                        : !connected && (!d.contains("local") || d["local"].value("port", 0) == 0);
    if (!unhashed) {
      c.refuse(name + ": " + diag.error().message);
      return true;
    }
    diag = DiagInfo{7, 0, 0};
  }
  if (proto == IPPROTO_UDP) {
    int queued = 0;
    ::ioctl(dup.get(), SIOCINQ, &queued);
    if ((diag->rqueue > 0 || queued > 0) && c.opts.dropUdpQueues)
      f.detail["dropped_bytes"] = std::max<uint32_t>(diag->rqueue, uint32_t(queued));
    else if (diag->rqueue > 0 || queued > 0)
      c.refuse(fmt::format("{}: {} bytes of datagrams queued", name, std::max<uint32_t>(diag->rqueue, uint32_t(queued))));
    d["state"] = connected ? "connected" : d.contains("local") && d["local"].value("port", 0) ? "bound" : "unbound";
  } else if (diag->state == 10 /* TCP_LISTEN */) {
    if (diag->rqueue > 0) c.refuse(fmt::format("{}: {} connections waiting to be accepted", name, diag->rqueue));
    d["state"] = "listen";
    d["backlog"] = diag->wqueue;
  } else if (diag->state == 7 /* TCP_CLOSE */) {
    // A socket whose connect failed keeps no port; its pending SO_ERROR is not carried.
    d["state"] = d.contains("local") && d["local"].value("port", 0) ? "bound" : "unbound";
  } else if (diag->state == 1 /* TCP_ESTABLISHED */) {
    d["state"] = "established";
    f.detail = d;
    auto st2 = dumpTcpEstablished(c, pid, fd, dup, f.detail, name);
    if (!st2.ok()) c.refuse(name + ": " + st2.error().message);
    return true;
  } else {
    static const char* names[] = {"?", "ESTABLISHED", "SYN_SENT", "SYN_RECV", "FIN_WAIT1", "FIN_WAIT2", "TIME_WAIT",
                                  "CLOSE", "CLOSE_WAIT", "LAST_ACK", "LISTEN", "CLOSING"};
    c.refuse(fmt::format("{} {} -> {}: TCP state {} (only LISTEN and ESTABLISHED are restored)", name,
                         d.contains("local") ? sockaddrText(d["local"]) : "?",
                         d.contains("peer") ? sockaddrText(d["peer"]) : "?", diag->state < 12 ? names[diag->state] : "?"));
    return true;
  }
  f.detail = d;
  return true;
}

bool isInetKind(const std::string& kind) { return kind == "inet"; }

static Status setIntOpts(int s, const Json& opts, const std::string& what) {
  auto set = [&](const char* name, int level, int opt) -> Status {
    if (!opts.contains(name)) return success();
    int v = opts[name].get<int>();
    if (::setsockopt(s, level, opt, &v, sizeof v) != 0)
      return sysError(fmt::format("set socket option {}={} on {}", name, v, what), errno);
    return success();
  };
  for (auto& o : kIntOpts)
    if (opts.value(o.name, 0) != 0) CRB_CHECK(set(o.name, o.level, o.opt));
  CRB_CHECK(set("sndbuf", SOL_SOCKET, SO_SNDBUF));
  CRB_CHECK(set("rcvbuf", SOL_SOCKET, SO_RCVBUF));
  CRB_CHECK(set("v6only", IPPROTO_IPV6, IPV6_V6ONLY));
  if (opts.value("tos", 0)) CRB_CHECK(set("tos", IPPROTO_IP, IP_TOS));
  return success();
}

static Status setTcpOpts(int s, const Json& opts, const std::string& what) {
  for (auto& o : kTcpOpts) {
    if (!opts.contains(o.name)) continue;
    int v = opts[o.name].get<int>();
    if (v && ::setsockopt(s, o.level, o.opt, &v, sizeof v) != 0)
      return sysError(fmt::format("set TCP option {}={} on {}", o.name, v, what), errno);
  }
  return success();
}

static Status restoreQueue(int s, int queue, const std::string& data, const std::string& what) {
  if (::setsockopt(s, IPPROTO_TCP, TCP_REPAIR_QUEUE, &queue, sizeof queue) != 0)
    return sysError("select TCP repair queue of " + what, errno);
  size_t done = 0;
  while (done < data.size()) {
    ssize_t n = ::send(s, data.data() + done, data.size() - done, 0);
    if (n <= 0) return sysError(fmt::format("refill the TCP {} queue of {}", queue == TCP_SEND_QUEUE ? "send" : "receive", what), errno);
    done += size_t(n);
  }
  return success();
}

static Status restoreEstablished(int s, const Json& d, const std::string& what) {
  const Json& t = d.at("tcp");
  int family = d["family"];
  int on = TCP_REPAIR_ON;
  if (::setsockopt(s, IPPROTO_TCP, TCP_REPAIR, &on, sizeof on) != 0) return sysError("TCP_REPAIR on " + what, errno);
  CRB_ASSIGN(auto sendData, fromHex(t.value("send_queue", "")));
  CRB_ASSIGN(auto recvData, fromHex(t.value("recv_queue", "")));
  // The sequence numbers where the queues start; refilling them moves the numbers to the dump's.
  uint32_t sndStart = t.value("snd_seq", 0u) - uint32_t(sendData.size());
  uint32_t rcvStart = t.value("rcv_seq", 0u) - uint32_t(recvData.size());
  for (auto [q, seq] : {std::pair<int, uint32_t>{TCP_SEND_QUEUE, sndStart}, {TCP_RECV_QUEUE, rcvStart}}) {
    if (::setsockopt(s, IPPROTO_TCP, TCP_REPAIR_QUEUE, &q, sizeof q) != 0 ||
        ::setsockopt(s, IPPROTO_TCP, TCP_QUEUE_SEQ, &seq, sizeof seq) != 0)
      return sysError("set the TCP sequence numbers of " + what, errno);
  }
  uint32_t ts = t.value("timestamp", 0u);
  if ((t.value("options", 0) & TCPI_OPT_TIMESTAMPS) && ::setsockopt(s, IPPROTO_TCP, TCP_TIMESTAMP, &ts, sizeof ts) != 0)
    return sysError("set the TCP timestamp of " + what, errno);
  sockaddr_storage ss{};
  socklen_t l = addrFrom(d.at("local"), family, ss);
  if (::bind(s, reinterpret_cast<sockaddr*>(&ss), l) != 0) return sysError("bind " + what + " to " + sockaddrText(d["local"]), errno);
  l = addrFrom(d.at("peer"), family, ss);
  if (::connect(s, reinterpret_cast<sockaddr*>(&ss), l) != 0)
    return sysError("connect (repair) " + what + " to " + sockaddrText(d["peer"]), errno);
  std::vector<tcp_repair_opt> opts;
  int o = t.value("options", 0);
  opts.push_back({TCPOPT_MAXSEG, uint32_t(t.value("mss", 1460))});
  if (o & TCPI_OPT_WSCALE)
    opts.push_back({TCPOPT_WINDOW, uint32_t(t.value("snd_wscale", 0)) | (uint32_t(t.value("rcv_wscale", 0)) << 16)});
  if (o & TCPI_OPT_SACK) opts.push_back({TCPOPT_SACK_PERMITTED, 0});
  if (o & TCPI_OPT_TIMESTAMPS) opts.push_back({TCPOPT_TIMESTAMP, 0});
  if (::setsockopt(s, IPPROTO_TCP, TCP_REPAIR_OPTIONS, opts.data(), socklen_t(opts.size() * sizeof opts[0])) != 0)
    return sysError("TCP_REPAIR_OPTIONS on " + what, errno);
  // What was sent (unacknowledged) goes back in repair mode, where the kernel counts it as sent;
  // the unsent tail is written after repair mode (finishInetSockets), as a program's write.
  size_t unsent = std::min(sendData.size(), size_t(t.value("unsent", 0)));
  CRB_CHECK(restoreQueue(s, TCP_SEND_QUEUE, sendData.substr(0, sendData.size() - unsent), what));
  CRB_CHECK(restoreQueue(s, TCP_RECV_QUEUE, recvData, what));
  // After the queues: the kernel checks the window against rcv_nxt, which they move.
  auto w = t.value("window", std::vector<uint32_t>{});
  if (w.size() == 5) {
    tcp_repair_window rw{w[0], w[1], w[2], w[3], w[4]};
    if (::setsockopt(s, IPPROTO_TCP, TCP_REPAIR_WINDOW, &rw, sizeof rw) != 0)
      return sysError("TCP_REPAIR_WINDOW on " + what, errno);
  }
  // Repair mode stays on until the whole tree is restored (finishInetSockets).
  return success();
}

Result<int> openInetSocket(RestoreCtx& c, const FileDesc& f) {
  const Json& d = f.detail;
  int family = d.value("family", AF_INET), type = d.value("type", SOCK_STREAM), proto = d.value("proto", 0);
  std::string state = d.value("state", "");
  std::string what = fmt::format("{} socket {}", proto == IPPROTO_TCP ? "TCP" : "UDP",
                                 d.contains("local") ? sockaddrText(d["local"]) : "");
  CRB_ASSIGN(int s0, inNetns(c.opts.netnsFd, [&]() -> Result<int> {
               int s = ::socket(family, type | SOCK_CLOEXEC, proto);
               if (s < 0) return sysError("create " + what, errno);
               return s;
             }));
  Fd s(s0);
  if (::fcntl(s.get(), F_SETFL, f.flags & ~O_ACCMODE) != 0) return sysError("flags of " + what, errno);
  CRB_CHECK(setIntOpts(s.get(), d.value("opts", Json::object()), what));
  if (proto == IPPROTO_TCP) CRB_CHECK(setTcpOpts(s.get(), d.value("opts", Json::object()), what));
  if (state == "established") {
    CRB_CHECK(restoreEstablished(s.get(), d, what));
    return s.release();
  }
  if (state == "unbound") return s.release();
  sockaddr_storage ss{};
  socklen_t l = addrFrom(d.at("local"), family, ss);
  if (::bind(s.get(), reinterpret_cast<sockaddr*>(&ss), l) != 0)
    return sysError("bind " + what, errno).context("is the address still free in the tree's network namespace?");
  if (state == "listen" && ::listen(s.get(), d.value("backlog", 128)) != 0) return sysError("listen on " + what, errno);
  if (state == "connected") {
    l = addrFrom(d.at("peer"), family, ss);
    if (::connect(s.get(), reinterpret_cast<sockaddr*>(&ss), l) != 0)
      return sysError("connect " + what + " to " + sockaddrText(d["peer"]), errno);
  }
  return s.release();
}

// Before the restored tree runs: TCP connections leave repair mode (their packets are still
// dropped until unlockTcp; the kernel retransmits what the peer missed).
Status finishInetSockets(RestoreCtx& c) {
  auto established = [&](const FileDesc& f) {
    return f.kind == "inet" && f.detail.value("state", "") == "established" && c.fileFds.count(f.id);
  };
  // Every connection leaves repair mode before any sends: the other end of one in the tree must
  // not get data while it is still being repaired.
  for (auto& f : c.tree.files) {
    if (!established(f)) continue;
    int off = TCP_REPAIR_OFF;
    if (::setsockopt(c.fileFds[f.id], IPPROTO_TCP, TCP_REPAIR, &off, sizeof off) != 0)
      return sysError("leave TCP repair mode on TCP socket " + sockaddrText(f.detail["local"]), errno);
  }
  for (auto& f : c.tree.files) {
    if (!established(f)) continue;
    int s = c.fileFds[f.id];
    std::string what = "TCP socket " + sockaddrText(f.detail["local"]);
    // The unsent tail of the send queue, queued ahead of anything the program writes next. A
    // connection to an outside peer is still behind its DROP rules: the transmission fails and the
    // data waits in the queue until unlockTcp pushes it.
    const Json& t = f.detail["tcp"];
    CRB_ASSIGN(auto sendData, fromHex(t.value("send_queue", "")));
    size_t unsent = std::min(sendData.size(), size_t(t.value("unsent", 0)));
    if (!unsent) continue;
    // It fitted the original's buffer, but the copy's skbs may carry more overhead: room is made
    // for it, then the buffer size set back (what is queued stays; new writes wait for room).
    int sndbuf = intOpt(s, SOL_SOCKET, SO_SNDBUF);
    int room = int(std::min<size_t>(size_t(sndbuf) / 2 + unsent * 2, 1 << 30));
    ::setsockopt(s, SOL_SOCKET, SO_SNDBUFFORCE, &room, sizeof room);
    for (size_t done = sendData.size() - unsent; done < sendData.size();) {
      ssize_t n = ::send(s, sendData.data() + done, sendData.size() - done, MSG_DONTWAIT | MSG_NOSIGNAL);
      if (n <= 0)
        return sysError(fmt::format("queue the {} unsent bytes of the send queue of {} ({} queued)", unsent, what,
                                    done - (sendData.size() - unsent)),
                        n < 0 ? errno : EIO);
      done += size_t(n);
    }
    int half = sndbuf / 2;  // the kernel doubles what it is given
    if (::setsockopt(s, SOL_SOCKET, SO_SNDBUFFORCE, &half, sizeof half) != 0)
      return sysError("set the send buffer size of " + what + " back", errno);
  }
  return success();
}

// A connection with both ends in the tree (loopback, or the netns talking to itself): the image
// holds its mirror, local and peer swapped.
static bool bothEndsInTree(const Json& f, const Json& files) {
  const Json& d = f["detail"];
  for (auto& g : files)
    if (g.value("kind", "") == "inet" && g.contains("detail") && g["detail"].contains("tcp") &&
        g["detail"].value("local", Json()) == d.value("peer", Json()) &&
        g["detail"].value("peer", Json()) == d.value("local", Json()))
      return true;
  return false;
}

// The process that holds image pid `pid` after the restore: the same pid, or, restored into the
// pid namespace of `nsHolder`, the process whose innermost NSpid it is.
static pid_t restoredHostPid(pid_t pid, pid_t nsHolder) {
  if (nsHolder <= 0) return pid;
  struct stat want {};
  if (::stat(fmt::format("/proc/{}/ns/pid", nsHolder).c_str(), &want) != 0) return -1;
  std::error_code ec;
  for (auto& e : std::filesystem::directory_iterator("/proc", ec)) {
    std::string name = e.path().filename();
    if (name.empty() || !std::isdigit(uint8_t(name[0]))) continue;
    struct stat st {};
    if (::stat((e.path() / "ns/pid").c_str(), &st) != 0 || st.st_ino != want.st_ino || st.st_dev != want.st_dev) continue;
    auto status = readFile(e.path() / "status");
    if (!status.ok()) continue;
    auto at = status->find("NSpid:");
    if (at == std::string::npos) continue;
    std::string line = status->substr(at + 6, status->find('\n', at) - at - 6);
    auto last = line.find_last_not_of(" \t");
    auto first = line.find_last_of(" \t", last);
    if (last != std::string::npos && std::atoi(line.c_str() + (first == std::string::npos ? 0 : first + 1)) == pid)
      return pid_t(std::atoi(name.c_str()));
  }
  return -1;
}

// Pushes out what a restored connection has queued, now that its rules are gone: the unsent tail
// finishInetSockets queued, and whatever the running copy wrote meanwhile, failed to go out behind
// the rules and would otherwise wait for a timer (retransmission or zero-window probe, 1 s
// without an RTT sample). Un-corking an uncorked socket does nothing else than push
// (tcp_push_pending_frames); a socket the program corked is left alone. Best effort: a miss
// costs that timer, not data.
static void pushRestoredTcp(const std::filesystem::path& dir, const Json& f, pid_t nsHolder) {
  const Json& d = f["detail"];
  if (d.value("opts", Json::object()).value("cork", 0)) return;
  auto inv = readJsonImage(dir, "inventory.img");
  if (!inv.ok()) return;
  int id = f.value("id", -1);
  for (auto& p : inv->value("pids", Json::array())) {
    auto core = readJsonImage(dir, fmt::format("core-{}.img", p.get<int>()));
    if (!core.ok()) continue;
    for (auto& e : core->value("fds", Json::array())) {
      if (e.value("file", -1) != id) continue;
      pid_t host = restoredHostPid(p.get<pid_t>(), nsHolder);
      auto s = host > 0 ? grabRemoteFd(host, e.value("fd", -1)) : Result<Fd>(makeError("not found"));
      if (!s.ok()) continue;
      sockaddr_storage ss{};
      socklen_t l = sizeof ss;
      if (::getsockname(s->get(), reinterpret_cast<sockaddr*>(&ss), &l) != 0 || addrJson(ss) != d.value("local", Json()))
        continue;  // not the socket we restored (the program replaced the fd)
      int zero = 0;
      ::setsockopt(s->get(), IPPROTO_TCP, TCP_CORK, &zero, sizeof zero);
      return;
    }
  }
}

Status unlockTcp(const std::filesystem::path& dir, const std::string& nsPath, UnlockWhich which) {
  CRB_ASSIGN(Json image, readJsonImage(dir, "files.img"));
  Json files = image.value("files", Json::array());
  // The restored tree's pid namespace is that of the process whose netns we were given, if any.
  pid_t nsHolder = 0;
  if (nsPath.rfind("/proc/", 0) == 0 && std::isdigit(uint8_t(nsPath[6]))) nsHolder = std::atoi(nsPath.c_str() + 6);
  for (auto& f : files) {
    if (f.value("kind", "") != "inet" || !f.contains("detail") || !f["detail"].contains("tcp")) continue;
    if (bothEndsInTree(f, files) != (which == UnlockWhich::InTreePairs)) continue;
    for (auto& r : f["detail"]["tcp"].value("lock_rules", Json::array()))
      CRB_CHECK(netfilter(nsPath, r.get<std::vector<std::string>>(), false));
    if (which == UnlockWhich::OutsidePeers) pushRestoredTcp(dir, f, nsHolder);
  }
  return success();
}

}  // namespace crb::native
