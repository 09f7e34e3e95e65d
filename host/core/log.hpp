#pragma once
// Logging: spdlog to stderr. Level from --verbose / $CRBENCH_LOG (debug, info, warn).
#include <spdlog/spdlog.h>

namespace crb {
void initLogging(bool verbose);
}
