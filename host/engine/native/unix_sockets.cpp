// Unix sockets: stream, datagram and seqpacket; socketpairs; bound (path and abstract) and
// listening sockets; connections between sockets of the tree; data queued in flight.
//
// Dump: the kernel's unix_diag (NETLINK_SOCK_DIAG, asked in the socket's own network namespace)
// gives each socket's name, peer inode, state, queue lengths and shutdown state, which is how peers
// are paired up without running code in the tree. Queued data is read without consuming it: the
// socket is duplicated into crbench with pidfd_getfd and peeked with MSG_PEEK from SO_PEEK_OFF 0
// onwards (the offset is put back), so a leave-running dump leaves the queues as they were.
// Refused by name: a peer outside the tree unless the user marked it external, file descriptors
// (SCM_RIGHTS) in flight, connections not yet accepted, data queued for a socket that wants the
// sender's credentials (SO_PASSCRED), names relative to a working directory.
//
// Restore: every socket is created by the restorer once it is in the tree's network and mount
// namespaces (so names resolve as the tree sees them) and inherited by the tree like any file.
// Pairs in the tree: socketpair(); an accepted connection: connect() to its restored listener and
// accept(); a datagram socket connected to a named one: connect() to that name. Queued data is
// sent again from the peer (datagrams: from their sender, or a fresh unnamed socket when it had no
// name), then shutdown states are replayed. A socket whose peer had closed gets a socketpair
// whose other end is closed after its data is queued.
//
// SO_PEERCRED: the kernel sets a socket's peer credentials once, from the process that calls
// socketpair(), connect() (for the accepting end) or listen() (handed on to later connectors), and
// there is no option to set them. A listener's are set again by a second listen(), which the
// restore runs in the process that had listened (restoreListenerCreds), so clients connecting
// after the restore see the right pid, uid and gid. Connections and socketpairs that existed at
// the dump keep the restorer's (its pid, which may be reused once it exits, or 0 where the
// restorer is outside the tree's pid namespace; uid and gid 0) -- a known gap, documented in
// docs/native-image.md; the image keeps the original triple in `peerCred`.
#include "engine/native/unix_sockets.hpp"

#include <fcntl.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <linux/sock_diag.h>
#include <linux/sockios.h>
#include <linux/unix_diag.h>
#include <netinet/tcp.h>
#include <sched.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstddef>
#include <cstring>
#include <thread>

#include "core/fsutil.hpp"
#include "engine/native/internal.hpp"
#include "engine/native/procfs.hpp"

namespace crb::native {

void to_json(Json& j, const UnixSocket& v) {
  j = Json{{"id", v.id}, {"ino", v.ino}, {"type", v.type}, {"state", v.state}, {"nameHex", v.nameHex},
           {"accepted", v.accepted}, {"peerIno", v.peerIno}, {"peer", v.peer}, {"peerGone", v.peerGone},
           {"external", v.external}, {"peerNameHex", v.peerNameHex}, {"backlog", v.backlog},
           {"shutdown", v.shutdown}, {"sndbuf", v.sndbuf}, {"rcvbuf", v.rcvbuf}, {"passcred", v.passcred},
           {"peekOff", v.peekOff}, {"peerCred", v.peerCred}, {"packets", v.packets}, {"senders", v.senders},
           {"fileMode", v.fileMode}, {"fileUid", v.fileUid}, {"fileGid", v.fileGid}};
}

void from_json(const Json& j, UnixSocket& v) {
  const UnixSocket d{};
  v.id = j.value("id", d.id);
  v.ino = j.value("ino", d.ino);
  v.type = j.value("type", d.type);
  v.state = j.value("state", d.state);
  v.nameHex = j.value("nameHex", d.nameHex);
  v.accepted = j.value("accepted", d.accepted);
  v.peerIno = j.value("peerIno", d.peerIno);
  v.peer = j.value("peer", d.peer);
  v.peerGone = j.value("peerGone", d.peerGone);
  v.external = j.value("external", d.external);
  v.peerNameHex = j.value("peerNameHex", d.peerNameHex);
  v.backlog = j.value("backlog", d.backlog);
  v.shutdown = j.value("shutdown", d.shutdown);
  v.sndbuf = j.value("sndbuf", d.sndbuf);
  v.rcvbuf = j.value("rcvbuf", d.rcvbuf);
  v.passcred = j.value("passcred", d.passcred);
  v.peekOff = j.value("peekOff", d.peekOff);
  v.peerCred = j.value("peerCred", d.peerCred);
  v.packets = j.value("packets", d.packets);
  v.senders = j.value("senders", d.senders);
  v.fileMode = j.value("fileMode", d.fileMode);
  v.fileUid = j.value("fileUid", d.fileUid);
  v.fileGid = j.value("fileGid", d.fileGid);
}

namespace {

constexpr const char* kQueueImage = "unix-queues.img";

const char* typeName(int t) {
  return t == SOCK_STREAM ? "stream" : t == SOCK_DGRAM ? "dgram" : t == SOCK_SEQPACKET ? "seqpacket" : "?";
}

// Abstract names start with a NUL byte; show them as "@rest" like ss(8) does.
std::string displayName(const std::string& raw) {
  if (raw.empty()) return "unnamed";
  if (raw[0] == '\0') return "@" + raw.substr(1);
  return raw;
}

struct Diag {
  int type = 0, state = 0, shutdown = 0;
  std::string name;  // raw sun_path bytes (path names without their trailing NUL)
  uint32_t peer = 0;
  std::vector<uint32_t> icons;
  uint32_t rqueue = 0, wqueue = 0;
  bool haveVfs = false;
};

// Every unix socket of one network namespace, by inode. `nsFd` < 0: crbench's own namespace.
Result<std::map<uint32_t, Diag>> unixDiag(int nsFd) {
  int sk = -1, err = 0;
  auto open = [&] {
    if (nsFd >= 0 && ::setns(nsFd, CLONE_NEWNET) != 0) {
      err = errno;
      return;
    }
    sk = ::socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_SOCK_DIAG);
    err = errno;
  };
  // A netlink socket answers for the namespace it was created in: create it from a thread that
  // joined the socket's namespace (setns of a network namespace is per thread).
  if (nsFd >= 0)
    std::thread(open).join();
  else
    open();
  if (sk < 0) return sysError("open a NETLINK_SOCK_DIAG socket in the tree's network namespace", err);
  Fd s(sk);
  struct {
    nlmsghdr nlh;
    unix_diag_req r;
  } req{};
  req.nlh.nlmsg_len = sizeof req;
  req.nlh.nlmsg_type = SOCK_DIAG_BY_FAMILY;
  req.nlh.nlmsg_flags = NLM_F_REQUEST | NLM_F_DUMP;
  req.nlh.nlmsg_seq = 1;
  req.r.sdiag_family = AF_UNIX;
  req.r.udiag_states = ~0u;
  req.r.udiag_show = UDIAG_SHOW_NAME | UDIAG_SHOW_VFS | UDIAG_SHOW_PEER | UDIAG_SHOW_ICONS | UDIAG_SHOW_RQLEN;
  if (::send(s.get(), &req, sizeof req, 0) != ssize_t(sizeof req)) return sysError("send unix_diag request", errno);
  std::map<uint32_t, Diag> out;
  std::vector<char> buf(1 << 16);
  for (;;) {
    ssize_t n = ::recv(s.get(), buf.data(), buf.size(), 0);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return sysError("read unix_diag answer", n < 0 ? errno : EIO);
    int len = int(n);
    for (auto* h = reinterpret_cast<nlmsghdr*>(buf.data()); NLMSG_OK(h, len); h = NLMSG_NEXT(h, len)) {
      if (h->nlmsg_type == NLMSG_DONE) return out;
      if (h->nlmsg_type == NLMSG_ERROR) {
        auto* e = static_cast<nlmsgerr*>(NLMSG_DATA(h));
        return sysError("unix_diag", -e->error).context("the kernel needs CONFIG_UNIX_DIAG (module unix_diag)");
      }
      auto* m = static_cast<unix_diag_msg*>(NLMSG_DATA(h));
      Diag d;
      d.type = m->udiag_type;
      d.state = m->udiag_state;
      int alen = int(h->nlmsg_len - NLMSG_LENGTH(sizeof *m));
      for (auto* a = reinterpret_cast<rtattr*>(m + 1); RTA_OK(a, alen); a = RTA_NEXT(a, alen)) {
        auto* data = static_cast<const char*>(RTA_DATA(a));
        size_t dl = RTA_PAYLOAD(a);
        switch (a->rta_type) {
          case UNIX_DIAG_NAME:
            d.name.assign(data, dl);
            if (!d.name.empty() && d.name[0] != '\0') d.name = d.name.substr(0, std::strlen(d.name.c_str()));
            break;
          case UNIX_DIAG_VFS: d.haveVfs = true; break;
          case UNIX_DIAG_PEER: std::memcpy(&d.peer, data, 4); break;
          case UNIX_DIAG_ICONS:
            for (size_t i = 0; i + 4 <= dl; i += 4) {
              uint32_t v;
              std::memcpy(&v, data + i, 4);
              d.icons.push_back(v);
            }
            break;
          case UNIX_DIAG_RQLEN: {
            unix_diag_rqlen rq{};
            std::memcpy(&rq, data, std::min(dl, sizeof rq));
            d.rqueue = rq.udiag_rqueue;
            d.wqueue = rq.udiag_wqueue;
            break;
          }
          case UNIX_DIAG_SHUTDOWN: d.shutdown = uint8_t(data[0]); break;
          default: break;
        }
      }
      out[m->udiag_ino] = d;
    }
  }
}

// The dump's view of the tree's unix sockets, kept between the per-fd pass and the resolve pass.
struct DumpState {
  std::map<int, std::pair<pid_t, int>> holder;  // socket id -> a (pid, fd) holding it
  std::map<uint64_t, std::map<uint32_t, Diag>> diag;  // netns inode -> its sockets
  std::map<int, uint64_t> netns;                // socket id -> netns inode
};
std::map<const DumpCtx*, DumpState> gDump;

std::string hexOf(const std::string& raw) { return toHex(raw.data(), raw.size()); }
std::string rawOf(const std::string& hex) {
  auto r = fromHex(hex);
  return r.ok() ? *r : std::string();
}

// Holders of socket:[ino] outside the tree, to name an external peer.
std::string describeHolder(uint64_t ino, const std::set<pid_t>& tree) {
  std::string want = fmt::format("socket:[{}]", ino);
  for (auto& e : std::filesystem::directory_iterator("/proc", std::filesystem::directory_options::skip_permission_denied)) {
    pid_t p = std::atoi(e.path().filename().c_str());
    if (p <= 0 || tree.count(p)) continue;
    std::error_code ec;
    for (auto& f : std::filesystem::directory_iterator(e.path() / "fd", ec)) {
      auto l = readLink(f.path().string());
      if (l.ok() && *l == want) {
        auto comm = readProc(p, "comm");
        std::string c = comm.ok() ? *comm : "";
        if (!c.empty() && c.back() == '\n') c.pop_back();
        return fmt::format("held by pid {} ({}) fd {}", p, c, f.path().filename().string());
      }
    }
  }
  return "held by no process crbench can see";
}

bool markedExternal(const DumpCtx& c, uint64_t ino, const std::string& peerName) {
  for (auto& e : c.opts.external) {
    if (e.rfind("unix:", 0) != 0) continue;
    std::string v = e.substr(5);
    if (v == std::to_string(ino)) return true;
    if (!peerName.empty() && v == displayName(peerName)) return true;
  }
  return false;
}

}  // namespace

// A netlink socket that only talks to the kernel (dbus-daemon's audit socket): no multicast
// groups, no fixed destination, nothing queued. Recreated with the same protocol and port id.
static bool dumpNetlinkFd(DumpCtx& c, int g, FileDesc& f, const std::string& what) {
  int type = 0, proto = 0;
  socklen_t l = sizeof type;
  ::getsockopt(g, SOL_SOCKET, SO_TYPE, &type, &l);
  l = sizeof proto;
  ::getsockopt(g, SOL_SOCKET, SO_PROTOCOL, &proto, &l);
  sockaddr_nl me{}, peer{};
  l = sizeof me;
  ::getsockname(g, reinterpret_cast<sockaddr*>(&me), &l);
  l = sizeof peer;
  ::getpeername(g, reinterpret_cast<sockaddr*>(&peer), &l);
  std::string w = fmt::format("{}: netlink socket (protocol {})", what, proto);
  uint32_t groups[32] = {};
  l = sizeof groups;
  bool anyGroup = me.nl_groups != 0;
  if (::getsockopt(g, 270 /*SOL_NETLINK*/, 9 /*NETLINK_LIST_MEMBERSHIPS*/, groups, &l) == 0)
    for (size_t i = 0; i < std::min<size_t>(32, l / 4); i++) anyGroup = anyGroup || groups[i];
  char b;
  bool queued = ::recv(g, &b, 1, MSG_PEEK | MSG_DONTWAIT) >= 0;
  if (anyGroup) c.refuse(w + " subscribed to multicast groups");
  if (peer.nl_pid || peer.nl_groups) c.refuse(w + " connected to a fixed destination");
  if (queued) c.refuse(w + " with messages queued");
  f.kind = "netlink";
  f.detail = Json{{"type", type}, {"protocol", proto}, {"portid", me.nl_pid}};
  return true;
}

bool dumpUnixSocketFd(DumpCtx& c, pid_t pid, int fd, FileDesc& f, const std::string& what) {
  auto g = grabRemoteFd(pid, fd);
  if (!g.ok()) return false;
  int dom = 0;
  socklen_t l = sizeof dom;
  if (::getsockopt(g->get(), SOL_SOCKET, SO_DOMAIN, &dom, &l) == 0 && dom == AF_NETLINK)
    return dumpNetlinkFd(c, g->get(), f, what);
  if (dom != AF_UNIX) return false;
  auto& ds = gDump[&c];
  UnixSocket s;
  s.id = int(c.tree.unixSockets.size());
  s.ino = f.ino;
  l = sizeof s.type;
  ::getsockopt(g->get(), SOL_SOCKET, SO_TYPE, &s.type, &l);
  l = sizeof s.sndbuf;
  ::getsockopt(g->get(), SOL_SOCKET, SO_SNDBUF, &s.sndbuf, &l);
  l = sizeof s.rcvbuf;
  ::getsockopt(g->get(), SOL_SOCKET, SO_RCVBUF, &s.rcvbuf, &l);
  int on = 0;
  l = sizeof on;
  ::getsockopt(g->get(), SOL_SOCKET, SO_PASSCRED, &on, &l);
  s.passcred = on != 0;
  l = sizeof s.peekOff;
  ::getsockopt(g->get(), SOL_SOCKET, SO_PEEK_OFF, &s.peekOff, &l);
  ucred cr{};
  l = sizeof cr;
  if (::getsockopt(g->get(), SOL_SOCKET, SO_PEERCRED, &cr, &l) == 0 && cr.pid > 0)
    s.peerCred = {uint32_t(c.imagePid(cr.pid)), cr.uid, cr.gid};  // the pid as the restored tree numbers it
  // The namespace the socket was created in (not necessarily its holder's).
  Fd ns(::ioctl(g->get(), SIOCGSKNS));
  struct stat nst {};
  if (!ns.valid() || ::fstat(ns.get(), &nst) != 0) {
    c.refuse(what + " (cannot find its network namespace: SIOCGSKNS)");
  } else {
    ds.netns[s.id] = nst.st_ino;
    if (!ds.diag.count(nst.st_ino)) {
      struct stat mine {};
      bool own = ::stat("/proc/self/ns/net", &mine) == 0 && mine.st_ino == nst.st_ino;
      auto d = unixDiag(own ? -1 : ns.get());
      if (!d.ok()) {
        c.refuse(what + " (" + d.error().message + ")");
        ds.diag[nst.st_ino] = {};
      } else {
        ds.diag[nst.st_ino] = std::move(*d);
      }
    }
  }
  f.kind = "unix";
  f.object = s.id;
  ds.holder[s.id] = {pid, fd};
  c.tree.unixSockets.push_back(s);
  return true;
}

void forgetPosixMqDump(const DumpCtx& c);

// Per-dump state is kept by the context's address: a new dump starts clean.
void resetLocalSockets(const DumpCtx& c) {
  gDump.erase(&c);
  forgetPosixMqDump(c);
}

// After every fd is known: names, peers, queues; refusals name the socket and its holder.
Status resolveUnixSockets(DumpCtx& c) {
  auto it = gDump.find(&c);
  if (it == gDump.end()) return success();
  DumpState ds = std::move(it->second);
  gDump.erase(it);
  std::set<pid_t> inTree;
  for (auto& ps : c.tree.procs) inTree.insert(ps.pid);
  std::map<uint64_t, int> byIno;
  for (auto& s : c.tree.unixSockets) byIno[s.ino] = s.id;
  uint64_t treeNs = 0;
  {
    struct stat st {};
    if (!c.tree.procs.empty() && ::stat(fmt::format("/proc/{}/ns/net", c.tree.procs[0].pid).c_str(), &st) == 0)
      treeNs = st.st_ino;
  }
  // Which FileDesc holds which socket: to rename it stdio when it is an outside connection at 0-2.
  std::map<int, FileDesc*> descOf;
  for (auto& f : c.tree.files)
    if (f.kind == "unix") descOf[f.object] = &f;
  auto lowFdsOnly = [&](int fileId) {
    bool any = false;
    for (auto& ps : c.tree.procs)
      for (auto& e : ps.fds)
        if (e.file == fileId) {
          if (e.fd > 2) return false;
          any = true;
        }
    return any;
  };

  std::optional<ImageWriter> queues;
  {
    CRB_ASSIGN(auto w, ImageWriter::create(c.dir, kQueueImage));
    queues.emplace(std::move(w));
  }
  std::vector<char> buf(4 << 20);
  for (auto& s : c.tree.unixSockets) {
    auto [hpid, hfd] = ds.holder.at(s.id);
    std::string what = fmt::format("unix {} socket ino {} at fd {} of pid {}", typeName(s.type), s.ino, hfd, hpid);
    if (!ds.netns.count(s.id)) continue;  // refused already
    if (treeNs && ds.netns[s.id] != treeNs) {
      c.refuse(what + " (created in another network namespace than the tree's)");
      continue;
    }
    auto& diag = ds.diag[ds.netns[s.id]];
    auto d = diag.find(uint32_t(s.ino));
    if (d == diag.end()) {
      c.refuse(what + " (not listed by unix_diag)");
      continue;
    }
    const Diag& me = d->second;
    s.state = me.state;
    s.shutdown = me.shutdown;
    s.nameHex = hexOf(me.name);
    s.peerIno = me.peer;
    if (!me.name.empty()) {
      what += " named " + displayName(me.name);
      if (me.name[0] != '\0' && me.name[0] != '/') c.refuse(what + " (a name relative to a working directory)");
      if (me.name[0] == '/') {
        struct stat fst {};
        if (::lstat((c.opts.rootPrefix + me.name).c_str(), &fst) == 0 && S_ISSOCK(fst.st_mode)) {
          s.fileMode = int(fst.st_mode & 07777);
          s.fileUid = fst.st_uid;
          s.fileGid = fst.st_gid;
        }
      }
    }
    if (me.state == TCP_LISTEN) {
      s.backlog = int(me.wqueue);
      if (me.rqueue > 0 || !me.icons.empty())
        c.refuse(fmt::format("{} (listening) has {} connection(s) waiting to be accepted", what,
                             std::max<size_t>(me.rqueue, me.icons.size())));
      continue;
    }
    if (me.state == TCP_ESTABLISHED || me.peer) {
      if (me.peer == 0) {
        if (s.type == SOCK_DGRAM) {
          s.state = TCP_CLOSE;  // its peer was closed: the next send fails, as it would have
        } else {
          s.peerGone = true;
        }
      } else if (byIno.count(me.peer)) {
        s.peer = byIno[me.peer];
      } else {
        // Connected to a socket outside the tree.
        std::string peerName;
        for (auto& [nsIno, m] : ds.diag) {
          auto p = m.find(me.peer);
          if (p != m.end()) peerName = p->second.name;
        }
        FileDesc* fd = descOf.count(s.id) ? descOf[s.id] : nullptr;
        if (markedExternal(c, s.ino, peerName) || markedExternal(c, me.peer, peerName)) {
          if (peerName.empty() || (peerName[0] != '\0' && peerName[0] != '/'))
            c.refuse(fmt::format("{} is marked external but its peer (ino {}) has no name to reconnect to", what, me.peer));
          s.external = true;
          s.peerNameHex = hexOf(peerName);
        } else if (fd && lowFdsOnly(fd->id)) {
          fd->kind = "stdio";  // the restorer's own stdio stands in for it, like an outside pipe
          int low = -1;
          for (auto& ps : c.tree.procs)
            for (auto& e : ps.fds)
              if (e.file == fd->id && low < 0) low = e.fd;
          fd->stdioFd = low;
          fd->object = -1;
          s.state = -1;  // not restored as a socket
          continue;
        } else {
          c.refuse(fmt::format("{} is connected to unix socket ino {} ({}) outside the tree, {}", what, me.peer,
                               displayName(peerName), describeHolder(me.peer, inTree)) +
                   "; mark it with --external unix:" + std::to_string(me.peer) +
                   (peerName.empty() ? "" : " or unix:" + displayName(peerName)) + " to reconnect it by name on restore");
          continue;
        }
      }
    }
    // An established stream/seqpacket socket that carries a name it did not bind: an accepted
    // connection (it shares its listener's address).
    if (s.type != SOCK_DGRAM && me.state == TCP_ESTABLISHED && !me.name.empty()) s.accepted = true;
    // Queued data.
    if (me.rqueue == 0 && s.type != SOCK_DGRAM) continue;
    auto g = grabRemoteFd(hpid, hfd);
    if (!g.ok()) return g.error().context(what);
    // SO_PEEK_OFF is the socket's own (the tree sees it): recorded with the guardian before it
    // changes, and set back on every way out of this block.
    auto guard = c.seizure->guardian();
    CRB_ASSIGN(int peekSlot, guard->notePeekOff(hpid, hfd, s.peekOff));
    struct PeekOffBack {
      int fd, old, slot;
      Guardian& guard;
      ~PeekOffBack() {
        ::setsockopt(fd, SOL_SOCKET, SO_PEEK_OFF, &old, sizeof old);
        guard.fixed(slot);
      }
    } peekBack{g->get(), s.peekOff, peekSlot, *guard};
    int zero = 0;
    if (::setsockopt(g->get(), SOL_SOCKET, SO_PEEK_OFF, &zero, sizeof zero) != 0)
      return sysError("set SO_PEEK_OFF on " + what, errno);
    uint64_t total = 0;
    bool refused = false;
    for (int i = 0; i < 100000; i++) {
      sockaddr_un from{};
      iovec iov{buf.data(), buf.size()};
      // No room for control data: passed fds are then not installed in crbench and the kernel
      // flags them with MSG_CTRUNC (so do credentials, refused below anyway).
      msghdr mh{};
      mh.msg_name = &from;
      mh.msg_namelen = sizeof from;
      mh.msg_iov = &iov;
      mh.msg_iovlen = 1;
      if (s.type == SOCK_STREAM && total >= me.rqueue) break;
      ssize_t n = ::recvmsg(g->get(), &mh, MSG_PEEK | MSG_DONTWAIT);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && errno == EAGAIN) break;
      if (n < 0) return sysError("peek the queue of " + what, errno);
      if (n == 0 && s.type != SOCK_DGRAM) break;  // end of stream (peer shut down)
      if (mh.msg_flags & MSG_CTRUNC) {
        c.refuse(what + " has file descriptors (SCM_RIGHTS) queued in flight");
        refused = true;
        break;
      }
      if (mh.msg_flags & MSG_TRUNC) {
        c.refuse(what + fmt::format(" has a datagram larger than {} bytes queued", buf.size()));
        refused = true;
        break;
      }
      if (s.passcred) {
        c.refuse(what + " wants the sender's credentials (SO_PASSCRED) and has data queued");
        refused = true;
        break;
      }
      int sender = -1;
      if (s.type == SOCK_DGRAM) {
        size_t nl = mh.msg_namelen > offsetof(sockaddr_un, sun_path) ? mh.msg_namelen - offsetof(sockaddr_un, sun_path) : 0;
        std::string src(from.sun_path, nl);
        if (!src.empty() && src[0] != '\0') src = src.substr(0, std::strlen(src.c_str()));
        if (!src.empty()) {
          for (auto& o : c.tree.unixSockets) {
            auto od = ds.diag[ds.netns.count(o.id) ? ds.netns[o.id] : 0].find(uint32_t(o.ino));
            if (o.type == SOCK_DGRAM && od != ds.diag[ds.netns[o.id]].end() && od->second.name == src) sender = o.id;
          }
          if (sender < 0) {
            c.refuse(fmt::format("{} has a datagram queued from {} outside the tree", what, displayName(src)));
            refused = true;
            break;
          }
        }
      }
      if (s.type == SOCK_STREAM && !s.packets.empty()) {
        s.packets[0] += uint64_t(n);
      } else {
        s.packets.push_back(uint64_t(n));
        s.senders.push_back(sender);
      }
      CRB_CHECK(queues->write(buf.data(), size_t(n)));
      total += uint64_t(n);
      faultPoint("peek");
    }
    if (refused) continue;
    if (s.external && total) c.refuse(what + " (external) has data queued from its outside peer");
  }
  // A datagram socket connected to an in-tree socket that is not connected back needs its peer's
  // name to connect to again.
  for (auto& s : c.tree.unixSockets) {
    if (s.type != SOCK_DGRAM || s.peer < 0) continue;
    auto& p = c.tree.unixSockets[size_t(s.peer)];
    if (p.peer != s.id && p.nameHex.empty())
      c.refuse(fmt::format("unix dgram socket ino {} is connected to unnamed socket ino {} that is connected elsewhere",
                           s.ino, p.ino));
  }
  return queues->commit(c.opts.sync);
}

// ---------------------------------------------------------------- restore
namespace {

socklen_t makeAddr(const std::string& raw, sockaddr_un& a) {
  a = {};
  a.sun_family = AF_UNIX;
  size_t n = std::min(raw.size(), sizeof a.sun_path - 1);
  std::memcpy(a.sun_path, raw.data(), n);
  // Path names are bound with their terminating NUL (as bind(2) records them); abstract ones as is.
  return socklen_t(offsetof(sockaddr_un, sun_path) + n + (raw[0] == '\0' ? 0 : 1));
}

class SocketBuilder {
 public:
  SocketBuilder(RestoreCtx& c) : c_(c) {}
  ~SocketBuilder() {
    for (auto& [k, v] : fds_) ::close(v);
    for (int t : temp_) ::close(t);
  }
  Status run();

 private:
  const UnixSocket& sock(int id) { return c_.tree.unixSockets[size_t(id)]; }
  std::string what(const UnixSocket& s) {
    return fmt::format("unix {} socket ino {}{}", typeName(s.type), s.ino,
                       s.nameHex.empty() ? "" : " named " + displayName(rawOf(s.nameHex)));
  }
  Result<int> create(const UnixSocket& s) {
    int fd = ::socket(AF_UNIX, s.type | SOCK_CLOEXEC, 0);
    if (fd < 0) return sysError("create " + what(s), errno);
    return fd;
  }
  Status bindName(int fd, const UnixSocket& s, const std::string& raw);
  Status connectTo(int fd, const std::string& raw, const std::string& whatFor) {
    sockaddr_un a{};
    socklen_t l = makeAddr(raw, a);
    if (::connect(fd, reinterpret_cast<sockaddr*>(&a), l) != 0)
      return sysError(fmt::format("connect {} to {}", whatFor, displayName(raw)), errno);
    return success();
  }
  Status clearStale(const std::string& raw, const std::string& whatFor);
  Status sendQueue(const UnixSocket& s, const std::string& data);
  RestoreCtx& c_;
  std::map<int, int> fds_;     // socket id -> fd in the restorer
  std::map<int, int> closedPeer_;  // socket id -> the other end standing in for a closed peer
  std::vector<int> temp_;
};

// A path name left over from the original (its socket file outlives the socket) is removed, but
// only when nothing listens on it any more.
Status SocketBuilder::clearStale(const std::string& raw, const std::string& whatFor) {
  if (raw.empty() || raw[0] == '\0') return success();
  struct stat st {};
  if (::lstat(raw.c_str(), &st) != 0) return success();
  if (!S_ISSOCK(st.st_mode))
    return makeError(fmt::format("cannot bind {} to {}: a file that is not a socket is there", whatFor, raw),
                     "remove it, or restore where the tree's files are as they were");
  Fd probe(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_un a{};
  socklen_t l = makeAddr(raw, a);
  // ECONNREFUSED: no socket is bound to that inode any more (any other answer, EPROTOTYPE
  // included, means one is).
  if (::connect(probe.get(), reinterpret_cast<sockaddr*>(&a), l) == 0 || errno != ECONNREFUSED)
    return makeError(fmt::format("cannot bind {} to {}: a live socket is bound there", whatFor, raw),
                     "stop whatever holds that name (the original tree, if it runs on), then restore");
  if (::unlink(raw.c_str()) != 0) return sysError("remove the stale socket file " + raw, errno);
  return success();
}

Status SocketBuilder::bindName(int fd, const UnixSocket& s, const std::string& raw) {
  CRB_CHECK(clearStale(raw, what(s)));
  sockaddr_un a{};
  socklen_t l = makeAddr(raw, a);
  mode_t old = ::umask(0);
  int rc = ::bind(fd, reinterpret_cast<sockaddr*>(&a), l);
  int e = errno;
  ::umask(old);
  if (rc != 0) return sysError("bind " + what(s), e);
  if (raw[0] != '\0' && s.fileMode >= 0) {
    ::chmod(raw.c_str(), mode_t(s.fileMode));
    if (::lchown(raw.c_str(), s.fileUid, s.fileGid) != 0) return sysError("chown socket file " + raw, errno);
  }
  return success();
}

// Re-queue `data` (this socket's receive queue at dump time) by sending it from its peer.
Status SocketBuilder::sendQueue(const UnixSocket& s, const std::string& data) {
  int self = fds_.at(s.id);
  size_t off = 0;
  for (size_t i = 0; i < s.packets.size(); i++) {
    size_t len = s.packets[i];
    int from = -1;
    bool viaName = false;
    if (s.type == SOCK_DGRAM && s.senders[i] >= 0) {
      from = fds_.at(s.senders[i]);
      viaName = true;
    } else if (s.peer >= 0 && (s.type != SOCK_DGRAM || sock(s.peer).peer == s.id)) {
      from = fds_.at(s.peer);
    } else if (closedPeer_.count(s.id)) {
      from = closedPeer_[s.id];
    } else if (s.type == SOCK_DGRAM && !s.nameHex.empty()) {
      int t = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
      if (t < 0) return sysError("socket", errno);
      temp_.push_back(t);
      from = t;
      viaName = true;
    } else {
      return makeError("no socket to re-send the queued data of " + what(s) + " from");
    }
    // The data was charged to the sender's buffer; make room for all of it, then put the size back.
    int sb = 0;
    socklen_t l = sizeof sb;
    ::getsockopt(from, SOL_SOCKET, SO_SNDBUF, &sb, &l);
    int want = int(std::min<uint64_t>(INT32_MAX / 4, data.size() + 65536 * 4));
    if (sb < 2 * want) ::setsockopt(from, SOL_SOCKET, SO_SNDBUFFORCE, &want, sizeof want);
    sockaddr_un a{};
    socklen_t al = viaName ? makeAddr(rawOf(s.nameHex), a) : 0;
    for (size_t done = 0; done < len || (len == 0 && done == 0);) {
      ssize_t n = ::sendto(from, data.data() + off + done, len - done, MSG_DONTWAIT | MSG_NOSIGNAL,
                           viaName ? reinterpret_cast<sockaddr*>(&a) : nullptr, al);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) return sysError(fmt::format("re-queue {} bytes into {}", len, what(s)), errno);
      done += size_t(n);
      if (len == 0 || s.type != SOCK_STREAM) break;
    }
    int half = sb / 2;
    ::setsockopt(from, SOL_SOCKET, SO_SNDBUFFORCE, &half, sizeof half);
    off += len;
  }
  (void)self;
  return success();
}

Status SocketBuilder::run() {
  auto& socks = c_.tree.unixSockets;
  std::optional<RawImageReader> queues;
  if (!socks.empty()) {
    CRB_ASSIGN(auto q, RawImageReader::open(c_.dir, kQueueImage));
    queues.emplace(std::move(q));
  }
  // 1. Listeners and unconnected sockets, with their names.
  for (auto& s : socks) {
    if (s.state == -1) continue;  // stood in for by stdio
    bool connected = s.peer >= 0 || s.peerGone || s.external;
    if (connected) continue;
    CRB_ASSIGN(int fd, create(s));
    fds_[s.id] = fd;
    if (!s.nameHex.empty() && !s.accepted) CRB_CHECK(bindName(fd, s, rawOf(s.nameHex)));
    if (s.state == TCP_LISTEN && ::listen(fd, s.backlog) != 0) return sysError("listen " + what(s), errno);
  }
  auto listenerNamed = [&](const std::string& hex) -> int {
    for (auto& l : socks)
      if (l.state == TCP_LISTEN && l.nameHex == hex && fds_.count(l.id)) return l.id;
    return -1;
  };
  // 2. Connected sockets.
  for (auto& s : socks) {
    if (s.state == -1 || fds_.count(s.id)) continue;
    if (s.external) {
      CRB_ASSIGN(int fd, create(s));
      fds_[s.id] = fd;
      if (!s.nameHex.empty() && !s.accepted) CRB_CHECK(bindName(fd, s, rawOf(s.nameHex)));
      CRB_CHECK(connectTo(fd, rawOf(s.peerNameHex), what(s) + " (external)"));
      continue;
    }
    if (s.peerGone) {
      int sv[2];
      if (::socketpair(AF_UNIX, s.type | SOCK_CLOEXEC, 0, sv) != 0) return sysError("socketpair for " + what(s), errno);
      fds_[s.id] = sv[0];
      closedPeer_[s.id] = sv[1];
      continue;
    }
    const UnixSocket& p = sock(s.peer);
    bool mutual = p.peer == s.id;
    if (s.type == SOCK_DGRAM) {
      if (mutual && s.nameHex.empty() && p.nameHex.empty()) {
        int sv[2];
        if (::socketpair(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0, sv) != 0) return sysError("socketpair for " + what(s), errno);
        fds_[s.id] = sv[0];
        fds_[p.id] = sv[1];
        continue;
      }
      CRB_ASSIGN(int fd, create(s));
      fds_[s.id] = fd;
      if (!s.nameHex.empty()) CRB_CHECK(bindName(fd, s, rawOf(s.nameHex)));
      continue;  // connected in step 3, once its peer exists
    }
    if (!mutual) return makeError(what(s) + " is connected to a socket that is not connected back (image inconsistent)");
    const UnixSocket* acc = s.accepted ? &s : p.accepted ? &p : nullptr;
    if (!acc) {
      int sv[2];
      if (::socketpair(AF_UNIX, s.type | SOCK_CLOEXEC, 0, sv) != 0) return sysError("socketpair for " + what(s), errno);
      fds_[s.id] = sv[0];
      fds_[p.id] = sv[1];
      for (const UnixSocket* x : std::array<const UnixSocket*, 2>{&s, &p})
        if (!x->nameHex.empty()) CRB_CHECK(bindName(fds_[x->id], *x, rawOf(x->nameHex)));
      continue;
    }
    // An accepted connection: connect to its listener and accept, so both ends carry the names
    // they had. A listener that was closed since is stood in for by a temporary one.
    const UnixSocket& client = acc == &s ? p : s;
    std::string name = rawOf(acc->nameHex);
    int lid = listenerNamed(acc->nameHex);
    int lfd = lid >= 0 ? fds_[lid] : -1;
    Fd tempListener;
    if (lfd < 0) {
      tempListener.reset(::socket(AF_UNIX, acc->type | SOCK_CLOEXEC, 0));
      CRB_CHECK(bindName(tempListener.get(), *acc, name));
      if (::listen(tempListener.get(), 1) != 0) return sysError("listen (temporary) for " + what(*acc), errno);
      lfd = tempListener.get();
    }
    CRB_ASSIGN(int cfd, create(client));
    fds_[client.id] = cfd;
    if (!client.nameHex.empty() && !client.accepted) CRB_CHECK(bindName(cfd, client, rawOf(client.nameHex)));
    CRB_CHECK(connectTo(cfd, name, what(client)));
    int afd = ::accept4(lfd, nullptr, nullptr, SOCK_CLOEXEC);
    if (afd < 0) return sysError("accept " + what(*acc), errno);
    fds_[acc->id] = afd;
    if (tempListener.valid()) {
      tempListener.reset();
      if (name[0] == '/') ::unlink(name.c_str());
    }
  }
  // 3. Datagram sockets connected by name.
  for (auto& s : socks) {
    if (s.state == -1 || s.type != SOCK_DGRAM || s.peer < 0) continue;
    const UnixSocket& p = sock(s.peer);
    if (p.peer == s.id && s.nameHex.empty() && p.nameHex.empty()) continue;  // a socketpair
    CRB_CHECK(connectTo(fds_.at(s.id), rawOf(p.nameHex), what(s)));
  }
  // 4. Queued data, then shutdown states, options and file flags.
  for (auto& s : socks) {
    uint64_t len = 0;
    for (auto n : s.packets) len += n;
    std::string data(len, '\0');
    CRB_CHECK(queues->read(data.data(), data.size()));
    if (s.state == -1 || s.packets.empty()) continue;
    CRB_CHECK(sendQueue(s, data));
  }
  if (queues) CRB_CHECK(queues->verifyComplete());
  for (auto& [id, fd] : closedPeer_) ::close(fd);
  closedPeer_.clear();
  for (auto& s : socks) {
    if (s.state == -1) continue;
    int fd = fds_.at(s.id);
    if (!s.peerGone && s.peer >= 0 && s.type != SOCK_DGRAM && s.shutdown) {
      int how = (s.shutdown & 3) == 3 ? SHUT_RDWR : (s.shutdown & 1) ? SHUT_RD : SHUT_WR;
      if (::shutdown(fd, how) != 0) return sysError("shutdown " + what(s), errno);
    }
    if (s.sndbuf) {
      int v = s.sndbuf / 2;
      ::setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &v, sizeof v);
    }
    if (s.rcvbuf) {
      int v = s.rcvbuf / 2;
      ::setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &v, sizeof v);
    }
    int on = s.passcred;
    ::setsockopt(fd, SOL_SOCKET, SO_PASSCRED, &on, sizeof on);
    if (s.peekOff >= 0) ::setsockopt(fd, SOL_SOCKET, SO_PEEK_OFF, &s.peekOff, sizeof s.peekOff);
  }
  for (auto& f : c_.tree.files) {
    if (f.kind == "netlink") {
      int proto = f.detail.value("protocol", 0);
      Fd s(::socket(AF_NETLINK, f.detail.value("type", SOCK_RAW) | SOCK_CLOEXEC, proto));
      if (!s.valid()) return sysError(fmt::format("create a netlink socket (protocol {})", proto), errno);
      sockaddr_nl a{};
      a.nl_family = AF_NETLINK;
      a.nl_pid = f.detail.value("portid", 0u);
      if (a.nl_pid && ::bind(s.get(), reinterpret_cast<sockaddr*>(&a), sizeof a) != 0)
        return sysError(fmt::format("bind a netlink socket (protocol {}) to port id {}", proto, a.nl_pid), errno);
      if (::fcntl(s.get(), F_SETFL, f.flags & ~O_ACCMODE) != 0) return sysError("set file flags of a netlink socket", errno);
      int hi = ::fcntl(s.get(), F_DUPFD, c_.fdBase);
      if (hi < 0) return sysError("move a netlink socket's fd up", errno);
      c_.fileFds[f.id] = hi;
      continue;
    }
    if (f.kind != "unix") continue;
    int fd = fds_.at(f.object);
    if (::fcntl(fd, F_SETFL, f.flags & ~O_ACCMODE) != 0) return sysError("set file flags of a unix socket", errno);
    int hi = ::fcntl(fd, F_DUPFD, c_.fdBase);
    if (hi < 0) return sysError("move a unix socket's fd up", errno);
    c_.fileFds[f.id] = hi;
  }
  return success();
}

}  // namespace

Status createUnixSockets(RestoreCtx& c) {
  bool any = false;
  for (auto& f : c.tree.files) any = any || f.kind == "unix" || f.kind == "netlink";
  if (!any && c.tree.unixSockets.empty()) return success();
  SocketBuilder b(c);
  return b.run();
}

Status restoreListenerCreds(RestoreCtx& c, const ProcessState& ps) {
  for (auto& s : c.tree.unixSockets) {
    if (s.state != TCP_LISTEN || s.peerCred.size() != 3 || pid_t(s.peerCred[0]) != ps.pid) continue;
    // Only the identity it has now can be given: one that changed its ids since keeps the gap.
    if (ps.uids.size() < 2 || ps.gids.size() < 2 || ps.uids[1] != s.peerCred[1] || ps.gids[1] != s.peerCred[2]) continue;
    int fd = -1;
    for (auto& e : ps.fds)
      for (auto& f : c.tree.files)
        if (fd < 0 && f.id == e.file && f.kind == "unix" && f.object == s.id) fd = e.fd;
    if (fd < 0) continue;
    auto inj = c.inj(ps.pid);
    CRB_CHECK(inj.check(fmt::format("listen() again on unix socket ino {} at fd {} (its SO_PEERCRED)", s.ino, fd),
                        SYS_listen, uint64_t(fd), uint64_t(s.backlog)));
  }
  return success();
}

}  // namespace crb::native
