#include "optimizers/schedule.h"

#include <cmath>

#include "common/config.h"

namespace lopt {

WarmupCosineSchedule::WarmupCosineSchedule(int64_t warmup_steps, int64_t total_steps, double final_fraction)
    : warmup_(warmup_steps), total_(total_steps), final_(final_fraction) {}

double WarmupCosineSchedule::operator()(int64_t step) const {
  if (step < warmup_) return static_cast<double>(step + 1) / static_cast<double>(warmup_);
  if (step >= total_) return final_;
  double progress = static_cast<double>(step - warmup_) / static_cast<double>(std::max<int64_t>(1, total_ - warmup_));
  return final_ + (1.0 - final_) * 0.5 * (1.0 + std::cos(M_PI * progress));
}

nlohmann::json WarmupCosineSchedule::hyperparams() const {
  return {{"type", "warmup_cosine"}, {"warmup_steps", warmup_}, {"total_steps", total_}, {"final_fraction", final_}};
}

WsdSchedule::WsdSchedule(int64_t warmup_steps, int64_t total_steps, int64_t decay_steps, double final_fraction)
    : warmup_(warmup_steps), total_(total_steps), decay_(decay_steps), final_(final_fraction) {}

double WsdSchedule::operator()(int64_t step) const {
  if (step < warmup_) return static_cast<double>(step + 1) / static_cast<double>(warmup_);
  int64_t decay_start = total_ - decay_;
  if (step < decay_start) return 1.0;
  if (step >= total_) return final_;
  double progress = static_cast<double>(step - decay_start + 1) / static_cast<double>(decay_);
  return 1.0 + (final_ - 1.0) * progress;
}

nlohmann::json WsdSchedule::hyperparams() const {
  return {{"type", "wsd"}, {"warmup_steps", warmup_}, {"total_steps", total_}, {"decay_steps", decay_},
          {"final_fraction", final_}};
}

InfiniteSchedule::InfiniteSchedule(int64_t warmup_steps, int64_t cooldown_steps, double constant_fraction, int64_t total_steps,
                                   int64_t anneal_steps, double final_fraction)
    : warmup_(warmup_steps), cooldown_(cooldown_steps), total_(total_steps), anneal_(anneal_steps),
      constant_(constant_fraction), final_(final_fraction) {}

double InfiniteSchedule::operator()(int64_t step) const {
  if (step < warmup_) return static_cast<double>(step + 1) / static_cast<double>(warmup_);
  if (step < warmup_ + cooldown_) {
    const double progress = static_cast<double>(step - warmup_ + 1) / static_cast<double>(cooldown_);
    return constant_ + (1.0 - constant_) * 0.5 * (1.0 + std::cos(M_PI * progress));
  }
  const int64_t anneal_start = total_ - anneal_;
  if (step < anneal_start) return constant_;
  if (step >= total_) return final_;
  const double progress = static_cast<double>(step - anneal_start + 1) / static_cast<double>(anneal_);
  return constant_ + (final_ - constant_) * progress;
}

nlohmann::json InfiniteSchedule::hyperparams() const {
  return {{"type", "infinite"},         {"warmup_steps", warmup_}, {"cooldown_steps", cooldown_},
          {"constant_fraction", constant_}, {"total_steps", total_},   {"anneal_steps", anneal_},
          {"final_fraction", final_}};
}

std::unique_ptr<LrSchedule> make_schedule(const nlohmann::json& config, const std::string& path) {
  ConfigReader r(config, path);
  auto type = r.get<std::string>("type", "constant");
  std::unique_ptr<LrSchedule> s;
  if (type == "constant") {
    s = std::make_unique<ConstantSchedule>();
  } else if (type == "warmup_cosine" || type == "wsd") {
    auto warmup = r.get<int64_t>("warmup_steps", 0);
    auto total = r.require<int64_t>("total_steps");
    auto final_fraction = r.get<double>("final_fraction", 0.0);
    config_check(warmup >= 0, r.path_of("warmup_steps"), "must be >= 0");
    config_check(total > warmup, r.path_of("total_steps"),
                 "must be greater than warmup_steps (" + std::to_string(warmup) + "), got " + std::to_string(total));
    config_check(final_fraction >= 0 && final_fraction <= 1, r.path_of("final_fraction"), "must be in [0, 1]");
    if (type == "warmup_cosine") {
      s = std::make_unique<WarmupCosineSchedule>(warmup, total, final_fraction);
    } else {
      auto decay = r.require<int64_t>("decay_steps");
      config_check(decay >= 1 && decay <= total - warmup, r.path_of("decay_steps"),
                   "must be in [1, total_steps - warmup_steps], got " + std::to_string(decay));
      s = std::make_unique<WsdSchedule>(warmup, total, decay, final_fraction);
    }
  } else if (type == "infinite") {
    auto warmup = r.get<int64_t>("warmup_steps", 0), cooldown = r.get<int64_t>("cooldown_steps", 0);
    auto total = r.require<int64_t>("total_steps"), anneal = r.get<int64_t>("anneal_steps", 0);
    auto constant = r.get<double>("constant_fraction", 1.0), final_fraction = r.get<double>("final_fraction", 0.0);
    config_check(warmup >= 0, r.path_of("warmup_steps"), "must be >= 0");
    config_check(cooldown >= 0, r.path_of("cooldown_steps"), "must be >= 0");
    config_check(anneal >= 0, r.path_of("anneal_steps"), "must be >= 0");
    config_check(total >= warmup + cooldown + anneal && total >= 1, r.path_of("total_steps"),
                 "must be >= warmup_steps + cooldown_steps + anneal_steps (" + std::to_string(warmup + cooldown + anneal) + ")");
    config_check(constant > 0 && constant <= 1, r.path_of("constant_fraction"), "must be in (0, 1]");
    config_check(final_fraction >= 0 && final_fraction <= 1, r.path_of("final_fraction"), "must be in [0, 1]");
    s = std::make_unique<InfiniteSchedule>(warmup, cooldown, constant, total, anneal, final_fraction);
  } else {
    throw ConfigError(r.path_of("type"), "unknown schedule \"" + type + "\" (valid: constant, warmup_cosine, wsd, infinite)");
  }
  r.finish();
  return s;
}

}  // namespace lopt
