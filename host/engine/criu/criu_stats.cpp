#include "engine/criu/criu_stats.hpp"

#include <cstdint>
#include <cstring>
#include <map>

#include "core/fsutil.hpp"

namespace crb::criu {

namespace {

// images/magic.h: every image starts with a magic; "service" images (stats, inventory) have
// IMG_SERVICE_MAGIC followed by their own, the others IMG_COMMON_MAGIC followed by theirs.
constexpr uint32_t kImgCommonMagic = 0x54564319;
constexpr uint32_t kImgServiceMagic = 0x55105940;
constexpr uint32_t kStatsMagic = 0x57093306;

// images/stats.proto field numbers. Times are microseconds (CRIU accumulates timevals).
const std::map<int, const char*> kDumpFields = {
    {1, "freezing_time_us"}, {2, "frozen_time_us"},   {3, "memdump_time_us"},
    {4, "memwrite_time_us"}, {5, "pages_scanned"},    {6, "pages_skipped_parent"},
    {7, "pages_written"},    {8, "irmap_resolve_us"}, {9, "pages_lazy"},
    {10, "page_pipes"},      {11, "page_pipe_bufs"},  {12, "shpages_scanned"},
    {13, "shpages_skipped_parent"}, {14, "shpages_written"}};
const std::map<int, const char*> kRestoreFields = {{1, "pages_compared"},
                                                   {2, "pages_skipped_cow"},
                                                   {3, "forking_time_us"},
                                                   {4, "restore_time_us"},
                                                   {5, "pages_restored"}};

class Reader {
 public:
  explicit Reader(std::string_view b) : b_(b) {}
  bool done() const { return pos_ >= b_.size(); }
  size_t pos() const { return pos_; }
  bool u32le(uint32_t& v) {
    if (b_.size() - pos_ < 4) return false;
    std::memcpy(&v, b_.data() + pos_, 4);  // images are written little-endian on x86
    pos_ += 4;
    return true;
  }
  bool varint(uint64_t& v) {
    v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      if (pos_ >= b_.size()) return false;
      auto c = static_cast<uint8_t>(b_[pos_++]);
      v |= static_cast<uint64_t>(c & 0x7f) << shift;
      if (!(c & 0x80)) return true;
    }
    return false;
  }
  bool bytes(size_t n, std::string_view& out) {
    if (b_.size() - pos_ < n) return false;
    out = b_.substr(pos_, n);
    pos_ += n;
    return true;
  }
  bool skip(int wireType) {
    uint64_t v;
    std::string_view s;
    switch (wireType) {
      case 0: return varint(v);
      case 1: return bytes(8, s);
      case 2: return varint(v) && bytes(v, s);
      case 5: return bytes(4, s);
      default: return false;
    }
  }

 private:
  std::string_view b_;
  size_t pos_ = 0;
};

Result<Json> decodeFlat(std::string_view msg, const std::map<int, const char*>& names,
                        const char* what) {
  Json out = Json::object();
  Reader r(msg);
  while (!r.done()) {
    uint64_t key;
    if (!r.varint(key)) return makeError(fmt::format("stats image: truncated {} entry", what));
    int field = static_cast<int>(key >> 3), wire = static_cast<int>(key & 7);
    if (wire != 0) {
      if (!r.skip(wire)) return makeError(fmt::format("stats image: bad field {} in {} entry", field, what));
      continue;
    }
    uint64_t v;
    if (!r.varint(v)) return makeError(fmt::format("stats image: truncated field {} in {} entry", field, what));
    auto it = names.find(field);
    out[it != names.end() ? std::string(it->second) : fmt::format("field_{}", field)] = v;
  }
  return out;
}

}  // namespace

Result<Json> decodeStatsImage(std::string_view bytes) {
  Reader r(bytes);
  uint32_t m1 = 0, m2 = 0;
  if (!r.u32le(m1)) return makeError("stats image: shorter than its magic");
  if (m1 == kImgServiceMagic || m1 == kImgCommonMagic) {
    if (!r.u32le(m2)) return makeError("stats image: truncated after the first magic");
  } else {
    m2 = m1;  // images of old CRIUs carried only the specific magic
  }
  if (m2 != kStatsMagic)
    return makeError(fmt::format("not a CRIU stats image (magic {:#010x})", m2));
  uint32_t len = 0;
  std::string_view entry;
  if (!r.u32le(len) || !r.bytes(len, entry)) return makeError("stats image: truncated entry");
  // stats_entry { optional dump_stats_entry dump = 1; optional restore_stats_entry restore = 2; }
  Json out = Json::object();
  Reader e(entry);
  while (!e.done()) {
    uint64_t key;
    if (!e.varint(key)) return makeError("stats image: truncated stats entry");
    int field = static_cast<int>(key >> 3), wire = static_cast<int>(key & 7);
    std::string_view sub;
    uint64_t n;
    if (wire == 2 && (field == 1 || field == 2)) {
      if (!e.varint(n) || !e.bytes(n, sub)) return makeError("stats image: truncated sub-entry");
      CRB_ASSIGN(Json j, field == 1 ? decodeFlat(sub, kDumpFields, "dump")
                                    : decodeFlat(sub, kRestoreFields, "restore"));
      out[field == 1 ? "dump" : "restore"] = std::move(j);
    } else if (!e.skip(wire)) {
      return makeError(fmt::format("stats image: bad field {} in stats entry", field));
    }
  }
  return out;
}

Result<Json> readStatsImage(const std::filesystem::path& dir, const std::string& name) {
  auto data = readFile(dir / name);
  if (!data) return data.error();
  auto j = decodeStatsImage(*data);
  if (!j) return j.error().context((dir / name).string());
  return j;
}

}  // namespace crb::criu
