#include "core/fsutil.hpp"

#include <gtest/gtest.h>
#include <sys/stat.h>

namespace crb {
TEST(FsUtil, AtomicWriteReplacesAndSetsMode) {
  auto dir = fs::temp_directory_path() / "crb-fsutil-test";
  fs::remove_all(dir);
  ASSERT_TRUE(makeDirs(dir).ok());
  auto p = dir / "f.json";
  ASSERT_TRUE(writeFileAtomic(p, "one", 0600).ok());
  ASSERT_TRUE(writeFileAtomic(p, "two", 0600).ok());
  EXPECT_EQ(readFile(p).value(), "two");
  struct stat st {};
  ASSERT_EQ(::stat(p.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  int entries = 0;
  for ([[maybe_unused]] auto& e : fs::directory_iterator(dir)) entries++;
  EXPECT_EQ(entries, 1) << "no temp file may be left behind";
  fs::remove_all(dir);
}

TEST(FsUtil, ReadMissingFileNamesIt) {
  auto r = readFile("/nonexistent/crbench/file");
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message.find("/nonexistent/crbench/file"), std::string::npos);
}

TEST(FsUtil, Crc32KnownValue) { EXPECT_EQ(crc32("123456789"), 0xCBF43926u); }

TEST(FsUtil, UnwritableDirIsAnError) {
  auto r = checkWritableDir("/proc/crbench-cannot-exist");
  EXPECT_FALSE(r.ok());
}
}  // namespace crb
