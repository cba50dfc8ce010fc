#pragma once
/// Truncation schedules: how long an inner-training episode lasts before its task is reset,
/// after learned_optimization `outer_trainers/truncation_schedule.py`.
#include <ATen/core/Generator.h>
#include <nlohmann/json.hpp>

#include <cstdint>
#include <memory>
#include <string>

namespace lopt {

class TruncationSchedule {
 public:
  virtual ~TruncationSchedule() = default;
  /// Length (number of inner steps) of a new episode, drawn from `gen`.
  virtual int64_t sample_length(at::Generator& gen) const = 0;
  /// Longest episode this schedule can produce.
  virtual int64_t max_length() const = 0;
  virtual nlohmann::json hyperparams() const = 0;
};

/// {"type": "constant", "length": 1000}
class ConstantTruncationSchedule : public TruncationSchedule {
 public:
  explicit ConstantTruncationSchedule(int64_t length) : length_(length) {}
  int64_t sample_length(at::Generator&) const override { return length_; }
  int64_t max_length() const override { return length_; }
  nlohmann::json hyperparams() const override { return {{"type", "constant"}, {"length", length_}}; }

 private:
  int64_t length_;
};

/// {"type": "log_uniform", "min_length": 100, "max_length": 1000}: length = int(exp(U(log min,
/// log max))), as learned_optimization's LogUniformLengthSchedule.
class LogUniformTruncationSchedule : public TruncationSchedule {
 public:
  LogUniformTruncationSchedule(int64_t min_length, int64_t max_length) : min_(min_length), max_(max_length) {}
  int64_t sample_length(at::Generator& gen) const override;
  int64_t max_length() const override { return max_; }
  nlohmann::json hyperparams() const override {
    return {{"type", "log_uniform"}, {"min_length", min_}, {"max_length", max_}};
  }

 private:
  int64_t min_, max_;
};

/// Builds a schedule; throws ConfigError naming `path` for unknown types or bad lengths.
std::unique_ptr<TruncationSchedule> make_truncation_schedule(const nlohmann::json& config,
                                                             const std::string& path = "/truncation");

}  // namespace lopt
