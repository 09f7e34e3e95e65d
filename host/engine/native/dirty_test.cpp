// Dirty-tracking method choice and pagemap parsing (dirty.hpp). The soft-dirty path itself needs
// a kernel with CONFIG_MEM_SOFT_DIRTY: harness/test_native_precopy.py runs it there, skips here.
#include "engine/native/dirty.hpp"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#include "core/fsutil.hpp"
#include "engine/native/procfs.hpp"

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

// The kernel's PAGEMAP_SCAN sets walk_end only when a buffer fills: with more than 512 regions
// (its internal buffer) and no more than the caller's vec holds, the walk ends with walk_end where
// the internal buffer filled, before regions it returned. Trusting walk_end scanned them again:
// pre-copy's final scan listed most of a 4 GiB mapping twice and the image held it twice.
TEST(Pagemap, ScanReportsEveryPageOnceWhateverTheNumberOfRegions) {
  constexpr uint64_t kPages = 4096, kPageSize = 4096;
  Fd pm(::open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC));
  ASSERT_TRUE(pm.valid());
  PmScanArg probe{};
  probe.size = sizeof probe;
  if (::ioctl(pm.get(), kPagemapScan, &probe) != 0 && (errno == ENOTTY || errno == EINVAL))
    GTEST_SKIP() << "no PAGEMAP_SCAN on this kernel (Linux >= 6.7)";
  for (uint64_t regions : {300, 512, 513, 700, 1023, 1024, 1025, 1500, 2047}) {
    void* m = ::mmap(nullptr, kPages * kPageSize, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    ASSERT_NE(m, MAP_FAILED);
    ::madvise(m, kPages * kPageSize, MADV_NOHUGEPAGE);  // one region per touched page
    auto* base = static_cast<char*>(m);
    for (uint64_t k = 0; k < regions; k++) base[2 * k * kPageSize] = 1;
    PmScanArg a{};
    a.start = reinterpret_cast<uint64_t>(base);
    a.end = a.start + kPages * kPageSize;
    a.category_anyof_mask = kIsPresent;
    a.return_mask = kIsPresent;
    std::vector<PageRegion> vec(1024);
    std::vector<PageRegion> seen;
    auto st = pagemapScan(pm.get(), a, vec, "test", [&](const PageRegion& r) { seen.push_back(r); });
    ::munmap(m, kPages * kPageSize);
    ASSERT_TRUE(st.ok()) << st.error().message;
    uint64_t pages = 0;
    for (size_t i = 0; i < seen.size(); i++) {
      pages += (seen[i].end - seen[i].start) / kPageSize;
      if (i) {
        EXPECT_LE(seen[i - 1].end, seen[i].start) << "region " << i << " of " << regions << " reported again";
      }
    }
    EXPECT_EQ(pages, regions) << regions << " present pages, each its own region";
  }
}

}  // namespace
}  // namespace crb::native
