#pragma once
/// Learning-rate schedules: a multiplier on the base LR as a function of the step (0-based).
#include <nlohmann/json.hpp>

#include <cstdint>
#include <memory>
#include <string>

namespace lopt {

class LrSchedule {
 public:
  virtual ~LrSchedule() = default;
  /// Multiplier of the base learning rate at update `step` (0 for the first update).
  virtual double operator()(int64_t step) const = 0;
  virtual nlohmann::json hyperparams() const = 0;
};

/// {"type": "constant"}.
class ConstantSchedule : public LrSchedule {
 public:
  double operator()(int64_t) const override { return 1.0; }
  nlohmann::json hyperparams() const override { return {{"type", "constant"}}; }
};

/// Linear warmup from 0 over `warmup_steps`, then cosine decay to `final_fraction` at
/// `total_steps`, constant afterwards. {"type": "warmup_cosine", "warmup_steps": 100,
/// "total_steps": 1000, "final_fraction": 0.1}
class WarmupCosineSchedule : public LrSchedule {
 public:
  WarmupCosineSchedule(int64_t warmup_steps, int64_t total_steps, double final_fraction);
  double operator()(int64_t step) const override;
  nlohmann::json hyperparams() const override;

 private:
  int64_t warmup_, total_;
  double final_;
};

/// Warmup-stable-decay: linear warmup, constant, then linear decay to `final_fraction` over
/// the last `decay_steps` of `total_steps`. {"type": "wsd", "warmup_steps", "total_steps",
/// "decay_steps", "final_fraction"}
class WsdSchedule : public LrSchedule {
 public:
  WsdSchedule(int64_t warmup_steps, int64_t total_steps, int64_t decay_steps, double final_fraction);
  double operator()(int64_t step) const override;
  nlohmann::json hyperparams() const override;

 private:
  int64_t warmup_, total_, decay_;
  double final_;
};

/// The "infinite" schedule of continual pre-training (Ibrahim et al. 2024, Simple and Scalable
/// Strategies to Continually Pre-train LLMs): linear warmup to 1 over `warmup_steps`, cosine
/// cooldown to `constant_fraction` over `cooldown_steps`, constant, then a linear anneal to
/// `final_fraction` over the last `anneal_steps` of `total_steps`. A continuation phase uses
/// warmup 0 and cooldown 0 (constant, then its own anneal). {"type": "infinite", "warmup_steps",
/// "cooldown_steps", "constant_fraction", "total_steps", "anneal_steps", "final_fraction"}
class InfiniteSchedule : public LrSchedule {
 public:
  InfiniteSchedule(int64_t warmup_steps, int64_t cooldown_steps, double constant_fraction, int64_t total_steps,
                   int64_t anneal_steps, double final_fraction);
  double operator()(int64_t step) const override;
  nlohmann::json hyperparams() const override;

 private:
  int64_t warmup_, cooldown_, total_, anneal_;
  double constant_, final_;
};

/// Builds a schedule; ConfigError naming `path` for unknown types or inconsistent steps.
std::unique_ptr<LrSchedule> make_schedule(const nlohmann::json& config, const std::string& path = "/optimizer/schedule");

}  // namespace lopt
