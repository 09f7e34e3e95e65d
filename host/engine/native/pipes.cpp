// Pipes: data in flight is read without consuming it (tee() from a duplicate of a read end taken
// with pidfd_getfd, no code in the target), and refilled into a new pipe of the same capacity.
#include <fcntl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>

#include "engine/native/internal.hpp"

namespace crb::native {

Status dumpPipeData(DumpCtx& c) {
  for (auto& p : c.tree.pipes) {
    if (!c.pipeAny.count(p.id)) continue;
    auto [apid, afd] = c.pipeAny.at(p.id);
    CRB_ASSIGN(Fd any, grabRemoteFd(apid, afd));
    int cap = ::fcntl(any.get(), F_GETPIPE_SZ);
    if (cap > 0) p.capacity = cap;
    if (!p.readerInTree || !c.pipeReader.count(p.id)) continue;
    auto [rpid, rfd] = c.pipeReader.at(p.id);
    CRB_ASSIGN(Fd r, grabRemoteFd(rpid, rfd));
    int tmp[2];
    if (::pipe2(tmp, O_CLOEXEC | O_NONBLOCK) != 0) return sysError("pipe", errno);
    Fd tr(tmp[0]), tw(tmp[1]);
    ::fcntl(tw.get(), F_SETPIPE_SZ, p.capacity);
    ssize_t n = ::tee(r.get(), tw.get(), size_t(p.capacity), SPLICE_F_NONBLOCK);
    if (n < 0 && errno != EAGAIN) return sysError(fmt::format("tee pipe:[{}]", p.ino), errno);
    std::string data(n > 0 ? size_t(n) : 0, '\0');
    for (size_t got = 0; got < data.size();) {
      ssize_t k = ::read(tr.get(), data.data() + got, data.size() - got);
      if (k <= 0) return sysError(fmt::format("read pipe:[{}] copy", p.ino), k < 0 ? errno : EIO);
      got += size_t(k);
    }
    CRB_CHECK(c.blobs->write(data.data(), data.size()));
    p.blobLen = data.size();
  }
  return success();
}

Status createPipes(RestoreCtx& c, RawImageReader& blobs) {
  for (auto& p : c.tree.pipes) {
    int fds[2];
    if (::pipe2(fds, O_CLOEXEC) != 0) return sysError("pipe", errno);
    ::fcntl(fds[1], F_SETPIPE_SZ, p.capacity);
    std::string data(p.blobLen, '\0');
    CRB_CHECK(blobs.read(data.data(), data.size()));
    if (!data.empty() && ::write(fds[1], data.data(), data.size()) != ssize_t(data.size()))
      return sysError(fmt::format("refill pipe:[{}]", p.ino), errno);
    int r = ::fcntl(fds[0], F_DUPFD, c.fdBase), w = ::fcntl(fds[1], F_DUPFD, c.fdBase);
    ::close(fds[0]);
    ::close(fds[1]);
    if (r < 0 || w < 0) return sysError("move pipe fds up", errno);
    c.pipeFds[p.id] = {r, w};
  }
  return success();
}

}  // namespace crb::native
