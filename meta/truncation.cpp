#include "meta/truncation.h"

#include <torch/torch.h>

#include <cmath>

#include "common/config.h"

namespace lopt {

int64_t LogUniformTruncationSchedule::sample_length(at::Generator& gen) const {
  double u = torch::rand({1}, gen, torch::kFloat64).item<double>();
  double v = std::exp(std::log(static_cast<double>(min_)) + u * (std::log(static_cast<double>(max_)) - std::log(static_cast<double>(min_))));
  return std::min<int64_t>(max_, std::max<int64_t>(min_, static_cast<int64_t>(v)));
}

std::unique_ptr<TruncationSchedule> make_truncation_schedule(const nlohmann::json& config, const std::string& path) {
  config_check(config.is_object(), path, "must be an object like {\"type\": \"log_uniform\", \"min_length\": 100, \"max_length\": 1000}");
  ConfigReader r(config, path);
  auto type = r.get<std::string>("type", "log_uniform");
  if (type == "constant") {
    auto len = r.require<int64_t>("length");
    r.finish();
    config_check(len >= 1, r.path_of("length"), "must be >= 1");
    return std::make_unique<ConstantTruncationSchedule>(len);
  }
  if (type == "log_uniform") {
    auto lo = r.get<int64_t>("min_length", 100), hi = r.get<int64_t>("max_length", 1000);
    r.finish();
    config_check(lo >= 1, r.path_of("min_length"), "must be >= 1");
    config_check(hi >= lo, r.path_of("max_length"), "must be >= min_length (" + std::to_string(lo) + ")");
    return std::make_unique<LogUniformTruncationSchedule>(lo, hi);
  }
  throw ConfigError(r.path_of("type"), "unknown truncation schedule '" + type + "' (valid: constant, log_uniform)");
}

}  // namespace lopt
