#include "engine/native/image.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#if __has_include(<isa-l/crc.h>)
#include <isa-l/crc.h>
#define CRB_HAVE_ISAL 1
#endif

namespace crb::native {

// The payload checksum is CRC-32 (zlib's). zlib computes it at roughly the speed the dump copies
// memory, halving throughput; ISA-L's PCLMULQDQ-folded crc32_gzip_refl is the same CRC several
// times faster, so images stay byte-identical whichever one built them.
uint32_t payloadCrc(const void* data, size_t len, uint32_t seed) {
#ifdef CRB_HAVE_ISAL
  return crc32_gzip_refl(seed, static_cast<const unsigned char*>(data), len);
#else
  return crc32(std::string_view(static_cast<const char*>(data), len), seed);
#endif
}

namespace {
constexpr uint64_t kChunkBytes = 1 << 20;  // 256 pages: one pread + CRC per chunk served lazily
constexpr char kMagic[8] = {'C', 'R', 'B', 'N', 'A', 'T', 'I', 'V'};

struct Header {
  char magic[8];
  uint32_t version;
  uint32_t type;
  uint64_t size;
  uint32_t payloadCrc;
  uint32_t headerCrc;
};
static_assert(sizeof(Header) == kImageHeaderSize);

uint32_t headerCrc(const Header& h) {
  return crc32(std::string_view(reinterpret_cast<const char*>(&h), offsetof(Header, headerCrc)));
}

Status writeAllAt(int fd, const void* data, size_t len, off_t off, const std::filesystem::path& p) {
  auto* c = static_cast<const char*>(data);
  while (len) {
    ssize_t n = off >= 0 ? ::pwrite(fd, c, len, off) : ::write(fd, c, len);
    if (n < 0) {
      if (errno == EINTR) continue;
      return sysError("write image file " + p.string(), errno);
    }
    c += n;
    len -= size_t(n);
    if (off >= 0) off += n;
  }
  return success();
}

Error corrupt(const std::filesystem::path& p, const std::string& what) {
  return makeError("image file " + p.string() + " " + what,
                   "the image is incomplete or damaged: dump again");
}

Result<Header> readHeader(int fd, const std::filesystem::path& p, PayloadType want) {
  Header h{};
  ssize_t n = ::pread(fd, &h, sizeof h, 0);
  if (n < 0) return sysError("read image file " + p.string(), errno);
  if (size_t(n) < sizeof h) return corrupt(p, "is truncated (no complete header)");
  if (std::memcmp(h.magic, kMagic, sizeof kMagic) != 0)
    return corrupt(p, "is not a crbench native image (bad magic)");
  if (headerCrc(h) != h.headerCrc) return corrupt(p, "has a corrupted header (checksum mismatch)");
  if (h.version < kOldestImageFormatVersion || h.version > kImageFormatVersion)
    return makeError(fmt::format("image file {} has format version {}, this crbench reads {} to {}",
                                 p.string(), h.version, kOldestImageFormatVersion, kImageFormatVersion),
                     "restore with the crbench that wrote it");
  if (h.type != uint32_t(want)) return corrupt(p, "has the wrong payload type");
  struct stat st {};
  if (::fstat(fd, &st) != 0) return sysError("stat " + p.string(), errno);
  if (uint64_t(st.st_size) != sizeof h + h.size)
    return corrupt(p, fmt::format("is truncated or has trailing data ({} bytes, header says {})",
                                  st.st_size, sizeof h + h.size));
  return h;
}
}  // namespace

Result<ImageWriter> ImageWriter::create(const std::filesystem::path& dir, const std::string& name,
                                        PayloadType type) {
  ImageWriter w;
  w.path_ = dir / name;
  w.tmp_ = dir / ("." + name + ".tmp");
  w.type_ = type;
  w.fd_.reset(::open(w.tmp_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
  if (!w.fd_.valid()) return sysError("create image file " + w.tmp_.string(), errno);
  Header h{};
  CRB_CHECK(writeAllAt(w.fd_.get(), &h, sizeof h, -1, w.tmp_));
  w.chunked_ = type == PayloadType::Raw && name.rfind("pages-", 0) == 0;
  return w;
}

ImageWriter::ImageWriter(ImageWriter&& o) noexcept { *this = std::move(o); }
ImageWriter& ImageWriter::operator=(ImageWriter&& o) noexcept {
  fd_ = std::move(o.fd_);
  path_ = o.path_;
  tmp_ = o.tmp_;
  type_ = o.type_;
  size_ = o.size_;
  crc_ = o.crc_;
  committed_ = o.committed_;
  chunked_ = o.chunked_;
  marks_ = std::move(o.marks_);
  o.committed_ = true;
  return *this;
}
ImageWriter::~ImageWriter() {
  if (!committed_ && !tmp_.empty()) ::unlink(tmp_.c_str());
}

void ImageWriter::markChunk() {
  marks_.push_back(size_);
  marks_.push_back(crc_);
}

Status ImageWriter::write(const void* data, size_t len) {
  if (!chunked_) {
    crc_ = payloadCrc(data, len, crc_);
  } else {
    // Chunks end exactly every kChunkBytes here: the running CRC is split where they end.
    auto* c = static_cast<const char*>(data);
    for (size_t done = 0; done < len;) {
      uint64_t since = size_ - (marks_.empty() ? 0 : marks_[marks_.size() - 2]);
      size_t n = size_t(std::min<uint64_t>(len - done, kChunkBytes - since));
      crc_ = payloadCrc(c + done, n, crc_);
      size_ += n;
      done += n;
      if (since + n >= kChunkBytes) markChunk();
    }
    return writeAllAt(fd_.get(), data, len, -1, tmp_);
  }
  size_ += len;
  return writeAllAt(fd_.get(), data, len, -1, tmp_);
}

Status ImageWriter::writeChecked(const void* data, size_t len, uint32_t crcAfter) {
  crc_ = crcAfter;
  size_ += len;
  // The caller's pieces are not split (their CRC is computed elsewhere): a chunk ends after the
  // piece that reaches kChunkBytes (copyPages writes 1 MiB pieces).
  if (chunked_ && size_ - (marks_.empty() ? 0 : marks_[marks_.size() - 2]) >= kChunkBytes) markChunk();
  return writeAllAt(fd_.get(), data, len, -1, tmp_);
}

Status ImageWriter::commit(bool sync) {
  if (chunked_) {
    if (size_ > (marks_.empty() ? 0 : marks_[marks_.size() - 2])) markChunk();
    // Before the pages file is renamed into place: a pages file is never without its sums.
    CRB_ASSIGN(auto sums, ImageWriter::create(path_.parent_path(), chunkSumsName(path_.filename().string())));
    CRB_CHECK(sums.write(marks_.data(), marks_.size() * sizeof(uint64_t)));
    CRB_CHECK(sums.commit(sync));
  }
  Header h{};
  std::memcpy(h.magic, kMagic, sizeof kMagic);
  h.version = kImageFormatVersion;
  h.type = uint32_t(type_);
  h.size = size_;
  h.payloadCrc = crc_;
  h.headerCrc = headerCrc(h);
  CRB_CHECK(writeAllAt(fd_.get(), &h, sizeof h, 0, tmp_));
  if (sync && ::fdatasync(fd_.get()) != 0) return sysError("fdatasync " + tmp_.string(), errno);
  fd_.reset();
  if (::rename(tmp_.c_str(), path_.c_str()) != 0) return sysError("rename " + tmp_.string(), errno);
  committed_ = true;
  return success();
}

Status writeJsonImage(const std::filesystem::path& dir, const std::string& name, const Json& j,
                      bool sync) {
  CRB_ASSIGN(auto w, ImageWriter::create(dir, name, PayloadType::Json));
  std::string s = j.dump(1);
  CRB_CHECK(w.write(s.data(), s.size()));
  return w.commit(sync);
}

Result<Json> readJsonImage(const std::filesystem::path& dir, const std::string& name) {
  auto p = dir / name;
  Fd fd(::open(p.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd.valid()) {
    if (errno == ENOENT)
      return makeError("image file " + p.string() + " is missing",
                       name == "inventory.img" ? "not a complete native image directory: dump again"
                                               : "the image is incomplete: dump again");
    return sysError("open image file " + p.string(), errno);
  }
  CRB_ASSIGN(Header h, readHeader(fd.get(), p, PayloadType::Json));
  std::string s(h.size, '\0');
  ssize_t n = ::pread(fd.get(), s.data(), s.size(), sizeof h);
  if (n != ssize_t(s.size())) return corrupt(p, "is truncated");
  if (payloadCrc(s.data(), s.size(), 0) != h.payloadCrc) return corrupt(p, "is corrupted (payload checksum mismatch)");
  Json j = Json::parse(s, nullptr, false);
  if (j.is_discarded()) return corrupt(p, "holds invalid JSON");
  return j;
}

Result<RawImageReader> RawImageReader::open(const std::filesystem::path& dir, const std::string& name) {
  RawImageReader r;
  r.path_ = dir / name;
  r.fd_.reset(::open(r.path_.c_str(), O_RDONLY | O_CLOEXEC));
  if (!r.fd_.valid()) {
    if (errno == ENOENT) return makeError("image file " + r.path_.string() + " is missing", "dump again");
    return sysError("open image file " + r.path_.string(), errno);
  }
  CRB_ASSIGN(Header h, readHeader(r.fd_.get(), r.path_, PayloadType::Raw));
  r.size_ = h.size;
  r.expectCrc_ = h.payloadCrc;
  if (::lseek(r.fd_.get(), sizeof h, SEEK_SET) < 0) return sysError("seek " + r.path_.string(), errno);
  return r;
}

Status RawImageReader::read(void* buf, size_t len) {
  if (pos_ + len > size_) return corrupt(path_, "is shorter than its index says");
  auto* c = static_cast<char*>(buf);
  size_t left = len;
  while (left) {
    ssize_t n = ::read(fd_.get(), c, left);
    if (n < 0) {
      if (errno == EINTR) continue;
      return sysError("read image file " + path_.string(), errno);
    }
    if (n == 0) return corrupt(path_, "is truncated");
    c += n;
    left -= size_t(n);
  }
  crc_ = payloadCrc(buf, len, crc_);
  pos_ += len;
  return success();
}

Status RawImageReader::skip(uint64_t len) {
  std::string buf(1 << 20, '\0');
  while (len) {
    size_t n = std::min<uint64_t>(len, buf.size());
    CRB_CHECK(read(buf.data(), n));
    len -= n;
  }
  return success();
}

Status RawImageReader::verifyComplete() {
  CRB_CHECK(skip(size_ - pos_));
  if (crc_ != expectCrc_) return corrupt(path_, "is corrupted (payload checksum mismatch)");
  return success();
}

std::string chunkSumsName(const std::string& pagesName) {
  return pagesName.rfind("pages-", 0) == 0 ? "pagecrc-" + pagesName.substr(6) : pagesName + ".crc";
}

namespace {
Status preadAll(int fd, void* buf, size_t len, uint64_t payloadOff, const std::filesystem::path& shown) {
  auto* c = static_cast<char*>(buf);
  off_t off = off_t(kImageHeaderSize + payloadOff);
  while (len) {
    ssize_t n = ::pread(fd, c, len, off);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return sysError("read image file " + shown.string(), errno);
    if (n == 0) return corrupt(shown, "is truncated");
    c += n;
    len -= size_t(n);
    off += n;
  }
  return success();
}
}  // namespace

Result<ChunkedPayload> ChunkedPayload::open(const std::filesystem::path& dir, const std::string& name,
                                            const std::filesystem::path& shown) {
  ChunkedPayload p;
  p.shown_ = shown;
  auto path = dir / name;
  p.fd_.reset(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!p.fd_.valid()) {
    if (errno == ENOENT) return makeError("image file " + shown.string() + " is missing", "dump again");
    return sysError("open image file " + shown.string(), errno);
  }
  CRB_ASSIGN(Header h, readHeader(p.fd_.get(), shown, PayloadType::Raw));
  p.size_ = h.size;
  std::string sumsName = chunkSumsName(name);
  if (!std::filesystem::exists(dir / sumsName)) return p;  // an older image: verified whole by the caller
  auto r = RawImageReader::open(dir, sumsName);
  if (!r.ok()) return r.error().context("chunk checksums of " + shown.string());
  std::vector<uint64_t> marks(r->payloadSize() / 8);
  if (r->payloadSize() % 16) return corrupt(shown.parent_path() / sumsName, "has a partial entry");
  CRB_CHECK(r->read(marks.data(), marks.size() * 8));
  if (auto st = r->verifyComplete(); !st.ok()) return st.error().context("chunk checksums of " + shown.string());
  uint64_t last = 0;
  for (size_t i = 0; i < marks.size(); i += 2) {
    if (marks[i] <= last || marks[i + 1] > 0xffffffffull)
      return corrupt(shown.parent_path() / sumsName, "has chunk ends out of order");
    last = marks[i];
    p.ends_.push_back(marks[i]);
    p.crcs_.push_back(uint32_t(marks[i + 1]));
  }
  // The sums belong to this very payload: they end where it ends, with its checksum.
  if (!p.ends_.empty() && (p.ends_.back() != p.size_ || p.crcs_.back() != h.payloadCrc))
    return corrupt(shown.parent_path() / sumsName, "does not belong to " + name + " (size or checksum differs)");
  if (p.ends_.empty() && p.size_) return corrupt(shown.parent_path() / sumsName, "is empty");
  p.verified_.assign(p.ends_.size(), false);
  return p;
}

Status ChunkedPayload::read(uint64_t off, void* buf, size_t len) {
  if (off + len > size_) return corrupt(shown_, "is shorter than its index says");
  if (!chunked()) return preadAll(fd_.get(), buf, len, off, shown_);
  auto* out = static_cast<char*>(buf);
  size_t k = size_t(std::upper_bound(ends_.begin(), ends_.end(), off) - ends_.begin());
  for (uint64_t at = off, end = off + len; at < end; k++) {
    uint64_t cs = k ? ends_[k - 1] : 0, ce = ends_[k], stop = std::min(end, ce);
    if (verified_[k]) {
      CRB_CHECK(preadAll(fd_.get(), out + (at - off), stop - at, at, shown_));
    } else {
      tmp_.resize(ce - cs);
      CRB_CHECK(preadAll(fd_.get(), tmp_.data(), tmp_.size(), cs, shown_));
      if (payloadCrc(tmp_.data(), tmp_.size(), k ? crcs_[k - 1] : 0) != crcs_[k])
        return makeError(fmt::format("image file {} is corrupted: the chunk at payload offset {:#x} (file offset "
                                     "{:#x}, {} bytes) does not match its checksum",
                                     shown_.string(), cs, cs + kImageHeaderSize, ce - cs),
                         "the image is damaged: dump again");
      verified_[k] = true;
      nVerified_++;
      std::memcpy(out + (at - off), tmp_.data() + (at - cs), stop - at);
    }
    at = stop;
  }
  return success();
}

std::string toHex(const void* data, size_t len) {
  static const char* d = "0123456789abcdef";
  std::string s(len * 2, '0');
  auto* b = static_cast<const unsigned char*>(data);
  for (size_t i = 0; i < len; i++) {
    s[2 * i] = d[b[i] >> 4];
    s[2 * i + 1] = d[b[i] & 15];
  }
  return s;
}

Result<std::string> fromHex(const std::string& hex) {
  if (hex.size() % 2) return makeError("bad hex blob in image (odd length)");
  std::string out(hex.size() / 2, '\0');
  auto val = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
  };
  for (size_t i = 0; i < out.size(); i++) {
    int hi = val(hex[2 * i]), lo = val(hex[2 * i + 1]);
    if (hi < 0 || lo < 0) return makeError("bad hex blob in image");
    out[i] = char(hi << 4 | lo);
  }
  return out;
}

}  // namespace crb::native
