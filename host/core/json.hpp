#pragma once
#include <nlohmann/json.hpp>

namespace crb {
using Json = nlohmann::json;
using OrderedJson = nlohmann::ordered_json;
}  // namespace crb
