// Dirty-tracking method choice and pagemap parsing (dirty.hpp). The soft-dirty path itself needs
// a kernel with CONFIG_MEM_SOFT_DIRTY: harness/test_native_precopy.py runs it there, skips here.
#include "engine/native/dirty.hpp"

#include <gtest/gtest.h>

namespace crb::native {
namespace {

TEST(Pagemap, ParsesTheDocumentedBits) {
  // present, exclusive, soft-dirty, PFN 0x1234
  auto e = parsePagemapEntry((1ull << 63) | (1ull << 56) | (1ull << 55) | 0x1234);
  EXPECT_TRUE(e.present);
  EXPECT_FALSE(e.swapped);
  EXPECT_FALSE(e.fileOrShared);
  EXPECT_TRUE(e.exclusive);
  EXPECT_TRUE(e.softDirty);
  EXPECT_EQ(e.pfn, 0x1234u);
  // swapped, file/shared, not soft-dirty: bits 0-54 are the swap type/offset, not a PFN
  auto s = parsePagemapEntry((1ull << 62) | (1ull << 61) | 0x77);
  EXPECT_FALSE(s.present);
  EXPECT_TRUE(s.swapped);
  EXPECT_TRUE(s.fileOrShared);
  EXPECT_FALSE(s.softDirty);
  EXPECT_EQ(s.pfn, 0u);
  // bit 55 alone (an unpopulated page keeps none of the others)
  auto d = parsePagemapEntry(1ull << 55);
  EXPECT_TRUE(d.softDirty);
  EXPECT_FALSE(d.present || d.swapped);
  EXPECT_FALSE(parsePagemapEntry(0).softDirty);
}

DirtyMethods kernel(bool uffd, bool scan, bool sd) {
  DirtyMethods m;
  m.uffdWpAsync = uffd;
  m.pagemapScan = scan;
  m.softDirty = sd;
  m.why = "test kernel";
  return m;
}

TEST(DirtyMethod, AutoPrefersUffdWpThenSoftDirty) {
  EXPECT_EQ(*chooseDirtyMethod(kernel(true, true, true), ""), DirtyTracker::kUffdWp);
  EXPECT_EQ(*chooseDirtyMethod(kernel(true, true, false), "auto"), DirtyTracker::kUffdWp);
  // UFFD-WP without PAGEMAP_SCAN (or the reverse) is not enough: soft-dirty if there is some
  EXPECT_EQ(*chooseDirtyMethod(kernel(true, false, true), ""), DirtyTracker::kSoftDirty);
  EXPECT_EQ(*chooseDirtyMethod(kernel(false, true, true), "auto"), DirtyTracker::kSoftDirty);
  auto none = chooseDirtyMethod(kernel(true, false, false), "");
  ASSERT_FALSE(none.ok());
  EXPECT_NE(none.error().message.find("no dirty-page tracking"), std::string::npos);
  EXPECT_NE(none.error().hint.find("CONFIG_MEM_SOFT_DIRTY"), std::string::npos);
}

TEST(DirtyMethod, AForcedMethodIsUsedOrFailsNamingWhatIsMissing) {
  EXPECT_EQ(*chooseDirtyMethod(kernel(true, true, true), "soft-dirty"), DirtyTracker::kSoftDirty);
  EXPECT_EQ(*chooseDirtyMethod(kernel(true, true, true), "uffd-wp"), DirtyTracker::kUffdWp);
  auto sd = chooseDirtyMethod(kernel(true, true, false), "soft-dirty");
  ASSERT_FALSE(sd.ok());
  EXPECT_NE(sd.error().message.find("soft-dirty was asked for"), std::string::npos);
  EXPECT_NE(sd.error().message.find("test kernel"), std::string::npos);
  auto uf = chooseDirtyMethod(kernel(false, false, true), "uffd-wp");
  ASSERT_FALSE(uf.ok());
  EXPECT_NE(uf.error().message.find("uffd-wp was asked for"), std::string::npos);
  auto bad = chooseDirtyMethod(kernel(true, true, true), "dirty-bits");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.error().hint.find("auto, uffd-wp or soft-dirty"), std::string::npos);
}

TEST(DirtyMethod, ProbeOfThisKernelIsConsistent) {
  // Whatever this kernel has, auto chooses one of what the probe found, or says none is there.
  auto have = probeDirtyMethods();
  auto m = chooseDirtyMethod(have, "");
  if (have.uffdWpAsync && have.pagemapScan) {
    EXPECT_EQ(*m, DirtyTracker::kUffdWp);
  } else if (have.softDirty) {
    EXPECT_EQ(*m, DirtyTracker::kSoftDirty);
  } else {
    EXPECT_FALSE(m.ok());
  }
  if (!have.softDirty) {
    EXPECT_NE(have.why.find("soft-dirty"), std::string::npos) << have.why;
  }
}

}  // namespace
}  // namespace crb::native
