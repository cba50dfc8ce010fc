#include "parametrization/parametrization.h"

#include <cmath>

#include "common/config.h"

namespace lopt {

Parametrization::Parametrization(int64_t base_width) : base_width_(base_width) {
  if (base_width <= 0) throw ConfigError("/base_width", "must be positive, got " + std::to_string(base_width));
}

nlohmann::json Parametrization::hyperparams() const { return {{"type", name()}, {"base_width", base_width_}}; }

namespace {
double fan_in_std(const ParamInfo& info) { return 1.0 / std::sqrt(static_cast<double>(info.fan_in)); }
bool is_vector_like(ParamRole r) { return r == ParamRole::bias || r == ParamRole::norm_gain; }
}  // namespace

double StandardParametrization::init_std(const ParamInfo& info) const {
  if (is_vector_like(info.role)) return 0.0;
  if (info.role == ParamRole::embedding) return 1.0;
  return fan_in_std(info);
}

double MupParametrization::init_std(const ParamInfo& info) const {
  if (is_vector_like(info.role)) return 0.0;
  if (info.role == ParamRole::embedding) return 1.0;
  if (info.role == ParamRole::output_weight && zero_init_readout_) return 0.0;
  return fan_in_std(info);
}

double MupParametrization::lr_mult(const ParamInfo& info) const {
  return info.role == ParamRole::hidden_weight ? 1.0 / info.width_mult : 1.0;
}

double MupParametrization::forward_mult(const ParamInfo& info) const {
  return info.role == ParamRole::output_weight ? 1.0 / info.width_mult : 1.0;
}

nlohmann::json MupParametrization::hyperparams() const {
  auto j = Parametrization::hyperparams();
  j["zero_init_readout"] = zero_init_readout_;
  return j;
}

std::unique_ptr<Parametrization> make_parametrization(const std::string& name, int64_t base_width) {
  if (name == "sp") return std::make_unique<StandardParametrization>(base_width);
  if (name == "mup") return std::make_unique<MupParametrization>(base_width);
  throw ConfigError("/type", "unknown parametrization '" + name + "' (valid: sp, mup)");
}

std::unique_ptr<Parametrization> make_parametrization(const nlohmann::json& config, const std::string& path) {
  ConfigReader r(config, path);
  auto type = r.get<std::string>("type", "mup");
  auto base = r.get<int64_t>("base_width", 128);
  config_check(base > 0, r.path_of("base_width"), "must be positive, got " + std::to_string(base));
  std::unique_ptr<Parametrization> p;
  if (type == "sp") {
    p = std::make_unique<StandardParametrization>(base);
  } else if (type == "mup") {
    p = std::make_unique<MupParametrization>(base, r.get<bool>("zero_init_readout", true));
  } else {
    throw ConfigError(r.path_of("type"), "unknown parametrization '" + type + "' (valid: sp, mup)");
  }
  r.finish();
  return p;
}

}  // namespace lopt
