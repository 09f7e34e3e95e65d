#include "engine/engine.hpp"

namespace crb {
EngineRegistry& EngineRegistry::instance() {
  static EngineRegistry r;
  return r;
}
void EngineRegistry::add(const std::string& name, EngineFactory f) { factories_[name] = std::move(f); }
std::unique_ptr<Engine> EngineRegistry::create(const std::string& name) const {
  auto it = factories_.find(name);
  return it == factories_.end() ? nullptr : it->second();
}
std::vector<std::string> EngineRegistry::names() const {
  std::vector<std::string> n;
  for (auto& [k, v] : factories_) n.push_back(k);
  return n;
}
}  // namespace crb
