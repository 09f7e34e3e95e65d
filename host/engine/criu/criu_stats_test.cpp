#include "engine/criu/criu_stats.hpp"

#include <gtest/gtest.h>

namespace crb::criu {

// A stats-dump image written by criu 4.2.1 on this project's test host (dump of a shell loop).
static const unsigned char kStatsDump421[] = {
    0x40, 0x59, 0x10, 0x55, 0x06, 0x33, 0x09, 0x57, 0x22, 0x00, 0x00, 0x00, 0x0a, 0x20, 0x08, 0x84,
    0x01, 0x10, 0xb5, 0x49, 0x18, 0xb5, 0x07, 0x20, 0x9f, 0x01, 0x28, 0x6a, 0x30, 0x00, 0x38, 0x3d,
    0x40, 0x00, 0x48, 0x00, 0x50, 0x0c, 0x58, 0x0c, 0x60, 0x00, 0x68, 0x00, 0x70, 0x00};

TEST(CriuStats, DecodesDumpStatsOfCriu421) {
  auto j = decodeStatsImage(std::string_view(reinterpret_cast<const char*>(kStatsDump421), sizeof kStatsDump421));
  ASSERT_TRUE(j.ok()) << j.error().text();
  const Json& d = (*j)["dump"];
  EXPECT_EQ(d["freezing_time_us"], 132);
  EXPECT_EQ(d["frozen_time_us"], 9397);
  EXPECT_EQ(d["memdump_time_us"], 949);
  EXPECT_EQ(d["memwrite_time_us"], 159);
  EXPECT_EQ(d["pages_scanned"], 106);
  EXPECT_EQ(d["pages_written"], 61);
  EXPECT_EQ(d["page_pipes"], 12);
}

TEST(CriuStats, DecodesRestoreStatsAndKeepsUnknownFields) {
  // service magic, stats magic, len, field 2 (restore) { 3: 1000, 4: 300000 (3 bytes), 5: 7, 99: 1 }
  std::string img("\x40\x59\x10\x55\x06\x33\x09\x57", 8);
  std::string restore = std::string("\x18\xe8\x07", 3) + std::string("\x20\xe0\xa7\x12", 4) + "\x28\x07" +
                        std::string("\x98\x06\x01", 3);
  std::string entry = "\x12" + std::string(1, static_cast<char>(restore.size())) + restore;
  uint32_t len = static_cast<uint32_t>(entry.size());
  img.append(reinterpret_cast<const char*>(&len), 4);
  img += entry;
  auto j = decodeStatsImage(img);
  ASSERT_TRUE(j.ok()) << j.error().text();
  const Json& r = (*j)["restore"];
  EXPECT_EQ(r["forking_time_us"], 1000);
  EXPECT_EQ(r["restore_time_us"], 300000);
  EXPECT_EQ(r["pages_restored"], 7);
  EXPECT_EQ(r["field_99"], 1);
}

TEST(CriuStats, RejectsOtherImagesAndTruncation) {
  std::string notStats("\x19\x43\x56\x54\x01\x02\x03\x04\x00\x00\x00\x00", 12);
  auto j = decodeStatsImage(notStats);
  ASSERT_FALSE(j.ok());
  EXPECT_NE(j.error().message.find("not a CRIU stats image"), std::string::npos);
  std::string cut(reinterpret_cast<const char*>(kStatsDump421), 20);
  EXPECT_FALSE(decodeStatsImage(cut).ok());
  EXPECT_FALSE(decodeStatsImage("").ok());
}

}  // namespace crb::criu
