#pragma once
// The native engine's on-disk format, in one place (documented in docs/native-image.md).
//
// An image is a directory of files, each "<kind>[-<pid>].img", mode 0600, written atomically
// (temp file, fsync, rename). Every file starts with a 32-byte header:
//   magic "CRBNATIV" | u32 format version | u32 payload type (1 json, 2 raw) |
//   u64 payload size | u32 crc32 of payload | u32 crc32 of the 24 bytes before it
// followed by the payload. inventory.img is written last: a directory without it is an
// incomplete dump and is refused. A truncated or corrupted file is refused naming the file.
#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

#include "core/fsutil.hpp"
#include "core/json.hpp"
#include "core/result.hpp"

namespace crb::native {

// 2: incremental images (incremental.hpp: parent link, pageindex-, pagesums-<pid>.img, uuid).
// Version 1 images (no parent) are still read. Optional in both: pagecrc-<pid>.img beside
// pages-<pid>.img (ChunkedPayload below); an image without it is verified whole, as before.
constexpr uint32_t kImageFormatVersion = 2;
constexpr uint32_t kOldestImageFormatVersion = 1;
// CRC-32 (zlib polynomial) of a payload, continuing from `seed`.
uint32_t payloadCrc(const void* data, size_t len, uint32_t seed);
constexpr size_t kImageHeaderSize = 32;
enum class PayloadType : uint32_t { Json = 1, Raw = 2 };

// Streams a raw payload (pages, blobs) to `dir/name`; checksum computed while streaming.
class ImageWriter {
 public:
  static Result<ImageWriter> create(const std::filesystem::path& dir, const std::string& name,
                                    PayloadType type = PayloadType::Raw);
  ImageWriter(ImageWriter&&) noexcept;
  ImageWriter& operator=(ImageWriter&&) noexcept;
  ~ImageWriter();  // an unfinished writer removes its temp file
  Status write(const void* data, size_t len);
  // As write(), for a caller that has already checksummed the data: `crcAfter` is
  // payloadCrc(data, len, crc()).
  Status writeChecked(const void* data, size_t len, uint32_t crcAfter);
  uint32_t crc() const { return crc_; }
  // Chunk marks (ChunkedPayload) are recorded for a pages-<pid>.img file; commit() writes them.
  uint64_t size() const { return size_; }
  // Finalize the header, optionally fdatasync, and rename into place.
  Status commit(bool sync);
  const std::filesystem::path& path() const { return path_; }

 private:
  ImageWriter() = default;
  void markChunk();
  Fd fd_;
  std::filesystem::path path_, tmp_;
  PayloadType type_ = PayloadType::Raw;
  uint64_t size_ = 0;
  uint32_t crc_ = 0;
  bool committed_ = false;
  bool chunked_ = false;
  std::vector<uint64_t> marks_;  // pairs: payload offset where a chunk ends, running crc there
};

Status writeJsonImage(const std::filesystem::path& dir, const std::string& name, const Json& j,
                      bool sync = true);
// Reads and verifies (magic, version, size, checksum) a JSON image.
Result<Json> readJsonImage(const std::filesystem::path& dir, const std::string& name);

// Sequential reader of a raw payload; the checksum is verified as the payload is streamed,
// and verifyComplete() reports a mismatch. Size is checked against the file at open.
class RawImageReader {
 public:
  static Result<RawImageReader> open(const std::filesystem::path& dir, const std::string& name);
  uint64_t payloadSize() const { return size_; }
  // Read exactly len bytes at the current position.
  Status read(void* buf, size_t len);
  Status skip(uint64_t len);
  // Checks the crc after the whole payload has been read (reads any rest).
  Status verifyComplete();
  const std::filesystem::path& path() const { return path_; }
  int fd() const { return fd_.get(); }

 private:
  Fd fd_;
  std::filesystem::path path_;
  uint64_t size_ = 0, pos_ = 0;
  uint32_t expectCrc_ = 0, crc_ = 0;
};

// A raw payload read in pieces, each chunk verified the first time a read touches it, so a
// lazy restore checks pages as it serves them instead of the whole file first. The chunk sums
// (pagecrc-<pid>.img, written by ImageWriter for pages-<pid>.img) hold, for each chunk, the
// payload offset where it ends and the running CRC-32 of the payload up to there: chunk k is
// verified alone, as payloadCrc(chunk, len, crc at the end of chunk k-1). Recording them costs
// the dump nothing (the running CRC is computed anyway). Not thread-safe.
class ChunkedPayload {
 public:
  // `shown`: the file's path in messages (dir may be a /proc/self/fd path). A file without chunk
  // sums (an older image) opens with chunked() false: read() then checks nothing, and the caller
  // must verify the whole payload (RawImageReader) before trusting it.
  static Result<ChunkedPayload> open(const std::filesystem::path& dir, const std::string& name,
                                     const std::filesystem::path& shown);
  bool chunked() const { return !ends_.empty(); }
  uint64_t payloadSize() const { return size_; }
  uint64_t chunksVerified() const { return nVerified_; }
  // Reads [off, off + len) of the payload; a corrupt chunk is an error naming the file and the
  // chunk's offsets.
  Status read(uint64_t off, void* buf, size_t len);

 private:
  Fd fd_;
  std::filesystem::path shown_;
  uint64_t size_ = 0, nVerified_ = 0;
  std::vector<uint64_t> ends_;
  std::vector<uint32_t> crcs_;
  std::vector<bool> verified_;
  std::vector<char> tmp_;
};
std::string chunkSumsName(const std::string& pagesName);  // pages-N.img -> pagecrc-N.img

// Helpers for binary blobs inside JSON.
std::string toHex(const void* data, size_t len);
Result<std::string> fromHex(const std::string& hex);

}  // namespace crb::native
