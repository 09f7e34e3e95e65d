#include "engine/native/image.hpp"

#include <gtest/gtest.h>
#include <unistd.h>

#include <fstream>

namespace crb::native {
namespace {

struct TmpDir {
  std::filesystem::path p;
  TmpDir() {
    char t[] = "/tmp/crb-native-XXXXXX";
    p = ::mkdtemp(t);
  }
  ~TmpDir() { std::filesystem::remove_all(p); }
};

TEST(NativeImage, JsonRoundTripAndMode) {
  TmpDir d;
  ASSERT_TRUE(writeJsonImage(d.p, "x.img", Json{{"a", 1}}, false).ok());
  auto j = readJsonImage(d.p, "x.img");
  ASSERT_TRUE(j.ok()) << j.error().text();
  EXPECT_EQ((*j)["a"], 1);
  EXPECT_EQ(std::filesystem::status(d.p / "x.img").permissions() & std::filesystem::perms::all,
            std::filesystem::perms::owner_read | std::filesystem::perms::owner_write);
}

TEST(NativeImage, TruncatedIsRefusedNamingTheFile) {
  TmpDir d;
  ASSERT_TRUE(writeJsonImage(d.p, "x.img", Json{{"a", std::string(100, 'x')}}, false).ok());
  std::filesystem::resize_file(d.p / "x.img", 60);
  auto j = readJsonImage(d.p, "x.img");
  ASSERT_FALSE(j.ok());
  EXPECT_NE(j.error().message.find("x.img"), std::string::npos);
  EXPECT_NE(j.error().message.find("truncated"), std::string::npos);
}

TEST(NativeImage, CorruptedPayloadIsRefused) {
  TmpDir d;
  auto w = ImageWriter::create(d.p, "r.img");
  ASSERT_TRUE(w.ok());
  std::string data(10000, 'a');
  ASSERT_TRUE(w->write(data.data(), data.size()).ok());
  ASSERT_TRUE(w->commit(false).ok());
  {
    std::fstream f(d.p / "r.img", std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(kImageHeaderSize + 5000);
    f.put('b');
  }
  auto r = RawImageReader::open(d.p, "r.img");
  ASSERT_TRUE(r.ok());
  auto st = r->verifyComplete();
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.error().message.find("r.img"), std::string::npos);
  EXPECT_NE(st.error().message.find("corrupted"), std::string::npos);
}

// Images must not depend on which CRC implementation built crbench (ISA-L or zlib).
TEST(NativeImage, PayloadCrcIsZlibCrc32InAnySplit) {
  std::string data(1 << 20, '\0');
  uint32_t x = 12345;
  for (auto& ch : data) ch = char((x = x * 1103515245 + 12345) >> 16);
  uint32_t whole = crc32(data);
  EXPECT_EQ(payloadCrc(data.data(), data.size(), 0), whole);
  uint32_t split = payloadCrc(data.data(), 777, 0);
  split = payloadCrc(data.data() + 777, data.size() - 777, split);
  EXPECT_EQ(split, whole);
  EXPECT_EQ(payloadCrc("", 0, 0), crc32(std::string_view()));
}

TEST(NativeImage, MissingInventoryIsAnIncompleteImage) {
  TmpDir d;
  auto j = readJsonImage(d.p, "inventory.img");
  ASSERT_FALSE(j.ok());
  EXPECT_NE(j.error().message.find("inventory.img"), std::string::npos);
}

}  // namespace
}  // namespace crb::native
