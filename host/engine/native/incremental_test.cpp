// Incremental images: page-run arithmetic, the page hash, and which format versions are read.
#include "engine/native/incremental.hpp"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstring>
#include <fstream>

#include "core/json.hpp"
#include "engine/native/image.hpp"

namespace crb::native {
namespace {

constexpr uint64_t P = 4096;

std::vector<PageRun> R(std::initializer_list<std::pair<uint64_t, uint64_t>> l) {
  std::vector<PageRun> v;
  for (auto [a, n] : l) v.push_back({a * P, n});
  return v;
}
bool same(const std::vector<PageRun>& a, const std::vector<PageRun>& b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); i++)
    if (a[i].addr != b[i].addr || a[i].pages != b[i].pages) return false;
  return true;
}

TEST(NativeIncremental, IntersectAndSubtractRuns) {
  auto a = R({{10, 10}, {30, 5}});
  auto b = R({{5, 7}, {18, 14}, {34, 3}});
  EXPECT_TRUE(same(intersectRuns(a, b), R({{10, 2}, {18, 2}, {30, 2}, {34, 1}})));
  EXPECT_TRUE(same(subtractRuns(a, b), R({{12, 6}, {32, 2}})));
  EXPECT_TRUE(same(subtractRuns(a, {}), a));
  EXPECT_TRUE(intersectRuns(a, {}).empty());
  EXPECT_EQ(runPages(a), 15u);
}

TEST(NativeIncremental, PageHashIsCrc64EcmaReflected) {
  // The same value whichever implementation built crbench (ISA-L or the table).
  std::vector<unsigned char> page(P, 0);
  uint64_t zero = pageHash(page.data());
  page[100] = 1;
  EXPECT_NE(pageHash(page.data()), zero);
  std::vector<unsigned char> check(P);
  for (size_t i = 0; i < P; i++) check[i] = static_cast<unsigned char>(i * 7 + 3);
  uint64_t h = pageHash(check.data());
  EXPECT_EQ(h, pageHash(check.data()));
  EXPECT_NE(newImageUuid(), newImageUuid());
}

struct TmpDir {
  std::filesystem::path p;
  TmpDir() {
    char t[] = "/tmp/crb-incr-XXXXXX";
    p = ::mkdtemp(t);
  }
  ~TmpDir() { std::filesystem::remove_all(p); }
};

void setVersion(const std::filesystem::path& f, uint32_t v) {
  // The header's version and its own CRC (crc32 of bytes 0-27, zlib's) are rewritten.
  std::fstream s(f, std::ios::in | std::ios::out | std::ios::binary);
  char h[32];
  s.read(h, 32);
  std::memcpy(h + 8, &v, 4);
  uint32_t c = crc32(std::string_view(h, 28));
  std::memcpy(h + 28, &c, 4);
  s.seekp(0);
  s.write(h, 32);
}

TEST(NativeIncremental, FormatVersionOneIsReadNewerIsRefused) {
  TmpDir d;
  ASSERT_TRUE(writeJsonImage(d.p, "inventory.img", Json{{"a", 1}}, false).ok());
  setVersion(d.p / "inventory.img", 1);
  EXPECT_TRUE(readJsonImage(d.p, "inventory.img").ok());
  setVersion(d.p / "inventory.img", kImageFormatVersion + 1);
  auto j = readJsonImage(d.p, "inventory.img");
  ASSERT_FALSE(j.ok());
  EXPECT_NE(j.error().message.find("format version"), std::string::npos) << j.error().message;
  EXPECT_NE(j.error().message.find("inventory.img"), std::string::npos);
}

TEST(NativeIncremental, MissingChainParentIsNamed) {
  TmpDir d;
  auto child = d.p / "child";
  std::filesystem::create_directory(child);
  ASSERT_TRUE(writeJsonImage(child, "inventory.img",
                             Json{{"engine", "crbench-native"}, {"uuid", "u"},
                                  {"parent", {{"path", "../base"}, {"uuid", "p"}, {"inventory_crc", 1}}}},
                             false)
                  .ok());
  auto c = PageChain::load(child);
  ASSERT_FALSE(c.ok());
  EXPECT_NE(c.error().message.find("parent image " + (d.p / "base").string() + " of incremental image"),
            std::string::npos)
      << c.error().message;
}

}  // namespace
}  // namespace crb::native
