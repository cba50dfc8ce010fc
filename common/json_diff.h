#pragma once
/// Where two JSON configs differ, for messages (resume checks, ranks that must agree).
#include <nlohmann/json.hpp>

#include <string>

namespace lopt {

/// The first place two configs differ: "/optimizer/lr: 0.003 there, 0.01 now" ("" when equal).
std::string config_difference(const nlohmann::json& there, const nlohmann::json& now);

}  // namespace lopt
