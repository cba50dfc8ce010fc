#include "common/json_diff.h"

namespace lopt {

std::string config_difference(const nlohmann::json& there, const nlohmann::json& now) {
  const auto patch = nlohmann::json::diff(there, now);
  if (patch.empty()) return "";
  const auto& op = patch.front();
  const std::string path = op.value("path", std::string(""));
  nlohmann::json::json_pointer ptr(path);
  const auto side = [&](const nlohmann::json& j) { return j.contains(ptr) ? j.at(ptr).dump() : std::string("absent"); };
  return (path.empty() ? std::string("/") : path) + ": " + side(there) + " there, " + side(now) + " now";
}

}  // namespace lopt
