// Files: a regular file at an offset, O_APPEND, a deleted open file with content, a directory
// fd, /dev/null, a dup'ed fd sharing its offset, and an fd with close-on-exec.
#include <fcntl.h>

#include <cstring>
#include <string>

#include "tp.hpp"

int main(int argc, char** argv) {
  tp::init(argc, argv);
  std::string dir = std::string(argv[1]) + ".d";
  mkdir(dir.c_str(), 0700);
  std::string a = dir + "/a", del = dir + "/deleted", app = dir + "/append";
  int fa = open(a.c_str(), O_RDWR | O_CREAT | O_TRUNC, 0600);
  write(fa, "0123456789abcdef", 16);
  lseek(fa, 5, SEEK_SET);
  int dupfd = dup(fa);
  int fd = open(del.c_str(), O_RDWR | O_CREAT | O_TRUNC, 0600);
  write(fd, "secret-content", 14);
  lseek(fd, 7, SEEK_SET);
  unlink(del.c_str());
  int fapp = open(app.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_TRUNC, 0600);
  write(fapp, "one\n", 4);
  int fdir = open(dir.c_str(), O_RDONLY | O_DIRECTORY);
  int fnull = open("/dev/null", O_WRONLY | O_CLOEXEC);
  tp::ready();
  tp::waitGo();
  char buf[32] = {};
  tp::check(read(fa, buf, 3) == 3 && std::memcmp(buf, "567", 3) == 0, "offset of the regular file (%s)", buf);
  tp::check(lseek(dupfd, 0, SEEK_CUR) == 8, "dup shares the offset");
  std::memset(buf, 0, sizeof buf);
  tp::check(read(fd, buf, 7) == 7 && std::strcmp(buf, "content") == 0, "deleted file content and offset (%s)", buf);
  char link[256] = {};
  readlink(("/proc/self/fd/" + std::to_string(fd)).c_str(), link, sizeof link - 1);
  tp::check(std::strstr(link, "(deleted)") != nullptr, "deleted file is still deleted (%s)", link);
  lseek(fapp, 0, SEEK_SET);
  write(fapp, "two\n", 4);
  int chk = open(app.c_str(), O_RDONLY);
  std::memset(buf, 0, sizeof buf);
  read(chk, buf, sizeof buf - 1);
  tp::check(std::strcmp(buf, "one\ntwo\n") == 0, "O_APPEND kept (%s)", buf);
  tp::check(fcntl(fdir, F_GETFL) & O_DIRECTORY, "directory fd");
  tp::check(write(fnull, "x", 1) == 1, "/dev/null writable");
  tp::check(fcntl(fnull, F_GETFD) == FD_CLOEXEC, "close-on-exec flag");
  tp::check(fcntl(fa, F_GETFD) == 0, "no close-on-exec flag");
  unlink(a.c_str());
  unlink(app.c_str());
  rmdir(dir.c_str());
  return tp::finish();
}
