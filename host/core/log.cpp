#include "core/log.hpp"

#include <spdlog/sinks/stdout_color_sinks.h>

#include <cstdlib>
#include <string>

namespace crb {
void initLogging(bool verbose) {
  auto logger = spdlog::stderr_color_mt("crbench");
  logger->set_pattern("%^[%L %H:%M:%S.%e]%$ %v");
  spdlog::set_default_logger(logger);
  spdlog::set_level(spdlog::level::warn);
  if (const char* l = std::getenv("CRBENCH_LOG")) spdlog::set_level(spdlog::level::from_str(l));
  if (verbose) spdlog::set_level(spdlog::level::debug);
}
}  // namespace crb
