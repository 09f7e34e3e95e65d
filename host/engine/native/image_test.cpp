#include "engine/native/image.hpp"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstring>
#include <fstream>
#include <vector>

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

TEST(NativeImage, ChunkedPayloadVerifiesEachChunkOnFirstRead) {
  TmpDir d;
  // 2.5 MiB through write() (split at 1 MiB) and writeChecked() (copyPages' path, not split: the
  // chunk ends after the piece that reaches 1 MiB): chunks [0, 1 MiB) and [1 MiB, 2.5 MiB).
  std::vector<char> data(5 << 19);
  for (size_t i = 0; i < data.size(); i++) data[i] = char(i * 7 + i / 4096);
  {
    auto w = ImageWriter::create(d.p, "pages-7.img");
    ASSERT_TRUE(w.ok());
    ASSERT_TRUE(w->write(data.data(), 3 << 19).ok());
    uint32_t crc = payloadCrc(data.data() + (3 << 19), 1 << 20, w->crc());
    ASSERT_TRUE(w->writeChecked(data.data() + (3 << 19), 1 << 20, crc).ok());
    ASSERT_TRUE(w->commit(false).ok());
  }
  ASSERT_TRUE(std::filesystem::exists(d.p / "pagecrc-7.img"));
  auto p = ChunkedPayload::open(d.p, "pages-7.img", d.p / "pages-7.img");
  ASSERT_TRUE(p.ok()) << p.error().text();
  ASSERT_TRUE(p->chunked());
  std::vector<char> got(8192);
  ASSERT_TRUE(p->read((1 << 20) - 4096, got.data(), got.size()).ok());  // across the chunk end
  EXPECT_EQ(0, std::memcmp(got.data(), data.data() + (1 << 20) - 4096, got.size()));
  EXPECT_EQ(p->chunksVerified(), 2u);
  // One byte flipped in the second chunk: the first still reads, the second names file and offset.
  {
    std::fstream f(d.p / "pages-7.img", std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(kImageHeaderSize + (9 << 18));
    f.put(char(data[9 << 18] ^ 1));
  }
  auto q = ChunkedPayload::open(d.p, "pages-7.img", d.p / "pages-7.img");
  ASSERT_TRUE(q.ok());
  EXPECT_TRUE(q->read(0, got.data(), got.size()).ok());
  auto bad = q->read(9 << 18, got.data(), 4096);
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.error().message.find("pages-7.img"), std::string::npos) << bad.error().message;
  EXPECT_NE(bad.error().message.find("payload offset 0x100000"), std::string::npos) << bad.error().message;
  // Without the sums (an older image) nothing is checked here: the caller verifies the whole file.
  std::filesystem::remove(d.p / "pagecrc-7.img");
  auto old = ChunkedPayload::open(d.p, "pages-7.img", d.p / "pages-7.img");
  ASSERT_TRUE(old.ok());
  EXPECT_FALSE(old->chunked());
}

}  // namespace
}  // namespace crb::native
