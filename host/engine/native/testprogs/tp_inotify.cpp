// inotify: two watches (a directory for creations, a file for modifications) with their watch
// descriptors. After restore: events from the same watch descriptors.
#include <fcntl.h>
#include <sys/inotify.h>

#include <cstring>
#include <string>

#include "tp.hpp"

int main(int argc, char** argv) {
  tp::init(argc, argv);
  std::string dir = std::string(argv[1]) + ".inotify";
  mkdir(dir.c_str(), 0700);
  std::string file = dir + "/watched";
  close(open(file.c_str(), O_CREAT | O_WRONLY, 0600));
  int in = inotify_init1(IN_NONBLOCK);
  int wdFile = inotify_add_watch(in, file.c_str(), IN_MODIFY);
  int wdDir = inotify_add_watch(in, dir.c_str(), IN_CREATE);
  tp::ready();
  tp::waitGo();
  close(open((dir + "/new").c_str(), O_CREAT | O_WRONLY, 0600));
  int fd = open(file.c_str(), O_WRONLY);
  write(fd, "x", 1);
  close(fd);
  alignas(inotify_event) char buf[4096];
  ssize_t n = read(in, buf, sizeof buf);
  bool created = false, modified = false;
  for (ssize_t off = 0; off < n;) {
    auto* e = reinterpret_cast<inotify_event*>(buf + off);
    if (e->wd == wdDir && (e->mask & IN_CREATE) && e->len && std::strcmp(e->name, "new") == 0) created = true;
    if (e->wd == wdFile && (e->mask & IN_MODIFY)) modified = true;
    off += ssize_t(sizeof *e + e->len);
  }
  tp::check(created, "IN_CREATE from the directory's watch descriptor %d", wdDir);
  tp::check(modified, "IN_MODIFY from the file's watch descriptor %d", wdFile);
  unlink((dir + "/new").c_str());
  unlink(file.c_str());
  rmdir(dir.c_str());
  return tp::finish();
}
