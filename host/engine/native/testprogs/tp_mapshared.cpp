// A MAP_SHARED file mapping (written before and after the dump) and a memfd mapped shared and
// held as an fd, plus a private file mapping with a copied-on-write page.
#include <fcntl.h>
#include <sys/mman.h>

#include <cstring>
#include <string>

#include "tp.hpp"

int main(int argc, char** argv) {
  tp::init(argc, argv);
  std::string path = std::string(argv[1]) + ".map";
  int fd = open(path.c_str(), O_RDWR | O_CREAT | O_TRUNC, 0600);
  ftruncate(fd, 8192);
  auto* m = static_cast<char*>(mmap(nullptr, 8192, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0));
  std::strcpy(m, "shared-before");
  auto* priv = static_cast<char*>(mmap(nullptr, 8192, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0));
  std::strcpy(priv + 4096, "private-cow");
  int mfd = memfd_create("tp-memfd", 0);
  ftruncate(mfd, 4096 * 3);
  auto* mm = static_cast<char*>(mmap(nullptr, 4096 * 3, PROT_READ | PROT_WRITE, MAP_SHARED, mfd, 0));
  std::strcpy(mm + 4096, "memfd-data");
  close(fd);
  tp::ready();
  tp::waitGo();
  tp::check(std::strcmp(m, "shared-before") == 0, "shared mapping content");
  std::strcpy(m + 100, "after");
  char buf[8] = {};
  int rfd = open(path.c_str(), O_RDONLY);
  pread(rfd, buf, 5, 100);
  tp::check(std::strcmp(buf, "after") == 0, "shared mapping writes reach the file");
  tp::check(std::strcmp(priv + 4096, "private-cow") == 0, "private COW page");
  tp::check(std::strcmp(mm + 4096, "memfd-data") == 0, "memfd mapping content");
  char b2[16] = {};
  pread(mfd, b2, 10, 4096);
  tp::check(std::strcmp(b2, "memfd-data") == 0, "memfd fd and mapping are the same object (%s)", b2);
  std::strcpy(mm, "via-map");
  pread(mfd, b2, 7, 0);
  tp::check(std::strncmp(b2, "via-map", 7) == 0, "memfd writes through the mapping visible via fd");
  unlink(path.c_str());
  return tp::finish();
}
