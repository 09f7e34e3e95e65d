#pragma once
#include <cstdlib>
#include <string>

namespace crb::criu {

// "4.2.1" >= major.minor ?
inline bool versionAtLeast(const std::string& v, int major, int minor) {
  char* end = nullptr;
  long ma = std::strtol(v.c_str(), &end, 10);
  long mi = (end && *end == '.') ? std::strtol(end + 1, nullptr, 10) : 0;
  return ma > major || (ma == major && mi >= minor);
}

}  // namespace crb::criu
