#pragma once
// CRIU's own statistics images (stats-dump, stats-restore in the image directory), decoded here
// rather than through crit: the format is tiny (two magics, a length, one protobuf message with
// varint fields) and crit needs python3-protobuf, which the unpacked CRIU prefix does not carry.
#include <filesystem>
#include <string_view>

#include "core/json.hpp"
#include "core/result.hpp"

namespace crb::criu {

// Decode the bytes of a stats-dump or stats-restore image into
//   {"dump": {"freezing_time_us": .., "frozen_time_us": .., "pages_written": .., ...}}  or
//   {"restore": {"forking_time_us": .., "restore_time_us": .., "pages_restored": .., ...}}
// Time fields carry CRIU's unit (microseconds) in their name; fields this decoder does not know
// are kept as "field_<n>" so a newer CRIU loses nothing.
Result<Json> decodeStatsImage(std::string_view bytes);

// Read and decode <dir>/<name> ("stats-dump" / "stats-restore").
Result<Json> readStatsImage(const std::filesystem::path& dir, const std::string& name);

}  // namespace crb::criu
