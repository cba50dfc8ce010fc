#pragma once
/// Meta-gradient estimators over a TruncatedStep, after learned_optimization
/// `outer_trainers/{truncated_es,truncated_pes,truncated_grad,full_es}.py`.
///
/// Each estimator owns the unroll states of the step's task slots, and each call to estimate()
/// advances them by one truncation and returns a gradient of the meta-loss (the mean
/// normalised training loss over the truncation) with respect to theta. All randomness of a
/// call is drawn from its `seed`, so a run restored from a checkpoint repeats exactly.
#include <nlohmann/json.hpp>
#include <torch/types.h>

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "meta/truncated_step.h"

namespace lopt {

struct EstimatorConfig {
  std::string type = "pes";  ///< pes, truncated_es, truncated_backprop, full_es
  double std = 0.01;         ///< perturbation standard deviation (ES, PES)
  int64_t trunc_length = 50; ///< inner steps per estimate (not used by full_es)
  int64_t num_tasks = 8;     ///< task slots (each ES / PES slot runs an antithetic pair)
  bool stagger = true;       ///< start the slots at random points of their episodes
  bool population = true;    ///< batch members of identical shape into one computation

  static EstimatorConfig from_json(const nlohmann::json& j, const std::string& path = "/estimator");
  nlohmann::json to_json() const;
};

struct EstimateOut {
  torch::Tensor grad;        ///< same shape and dtype as theta
  double loss = 0;           ///< mean meta-loss of the unrolls (both antithetic signs)
  int64_t inner_steps = 0;   ///< inner training steps taken (members x steps, resets excluded)
  int64_t resets = 0;        ///< episodes that ended and were reset
  int64_t nonfinite = 0;     ///< inner steps whose raw training loss was NaN/inf (clipped by the normaliser)
};

class ProcessGroup;

class GradientEstimator {
 public:
  explicit GradientEstimator(TruncatedStep& step, EstimatorConfig config) : step_(step), config_(std::move(config)) {}
  /// Splits the task slots over the ranks of `group` (before init / load): rank r unrolls slots
  /// i with i % world_size == r and the estimates are summed over the ranks, so that every rank
  /// gets the estimate one process computes with the same seeds (ES and PES; the other estimators
  /// throw UsageError). The unroll states a rank saves are its own slots'.
  virtual void set_process_group(ProcessGroup* group);
  virtual ~GradientEstimator() = default;
  /// Fresh unroll states drawn from `seed` (staggered when configured).
  virtual void init(const torch::Tensor& theta, uint64_t seed) = 0;
  /// One gradient estimate; advances the unroll states.
  virtual EstimateOut estimate(const torch::Tensor& theta, uint64_t seed) = 0;
  /// Writes the unroll states (tensors into `out`) and returns what else restores them.
  virtual nlohmann::json save(SafeTensors& out) const = 0;
  virtual void load(const nlohmann::json& meta, const SafeTensors& in, const std::string& file) = 0;
  const EstimatorConfig& config() const { return config_; }
  nlohmann::json hyperparams() const { return config_.to_json(); }
  /// The unroll states an estimate continues from (positive unrolls for ES / PES).
  virtual std::vector<const InnerState*> unroll_states() const = 0;

 protected:
  /// Perturbations [N, D] = std * N(0, 1), drawn from `seed`.
  torch::Tensor sample_perturbations(const torch::Tensor& theta, int64_t n, uint64_t seed) const;
  /// Seed of inner step j of the estimate drawn from `seed`.
  static uint64_t step_seed(uint64_t seed, int64_t j);
  /// Fresh unroll states of this rank's slots.
  std::vector<InnerState> fresh_states(const torch::Tensor& theta, uint64_t seed) const;
  /// The task slots this rank unrolls (all of them in one process).
  std::vector<int64_t> owned_slots() const;
  /// Sums a partial estimate (grad in float64, flat) over the ranks and gives it theta's dtype and shape.
  void finish_estimate(EstimateOut& res, const torch::Tensor& theta) const;
  static std::vector<const InnerState*> pointers(const std::vector<InnerState>& v) {
    std::vector<const InnerState*> p;
    for (const auto& s : v) p.push_back(&s);
    return p;
  }

  TruncatedStep& step_;
  EstimatorConfig config_;
  ProcessGroup* group_ = nullptr;
};

/// Antithetic truncated ES: both signs start from the shared state, which then follows the
/// positive unroll. grad = mean_i (L+_i - L-_i) eps_i / (2 std^2). Biased over long episodes
/// (it ignores the effect of theta on the state it starts from).
class TruncatedES : public GradientEstimator {
 public:
  using GradientEstimator::GradientEstimator;
  void init(const torch::Tensor& theta, uint64_t seed) override;
  EstimateOut estimate(const torch::Tensor& theta, uint64_t seed) override;
  nlohmann::json save(SafeTensors& out) const override;
  void load(const nlohmann::json& meta, const SafeTensors& in, const std::string& file) override;
  std::vector<const InnerState*> unroll_states() const override { return pointers(states_); }

 private:
  std::vector<InnerState> states_;
};

/// Persistent ES (Vicol et al. 2021): the positive and negative unrolls persist separately and
/// each slot accumulates the perturbations that shaped its current state, reset when its
/// episode ends. Losses before a reset are credited to accumulator + eps, losses after it to
/// eps alone (learned_optimization mixes the two per step; this is the exact split).
class TruncatedPES : public GradientEstimator {
 public:
  using GradientEstimator::GradientEstimator;
  void init(const torch::Tensor& theta, uint64_t seed) override;
  EstimateOut estimate(const torch::Tensor& theta, uint64_t seed) override;
  nlohmann::json save(SafeTensors& out) const override;
  void load(const nlohmann::json& meta, const SafeTensors& in, const std::string& file) override;
  std::vector<const InnerState*> unroll_states() const override { return pointers(pos_); }

 private:
  std::vector<InnerState> pos_, neg_;
  torch::Tensor accum_;  ///< [N, D]
};

/// Truncated backprop: differentiates the truncation's meta-loss through the inner updates
/// (create_graph through the tensor-op learned optimizer); the state is detached afterwards.
class TruncatedBackprop : public GradientEstimator {
 public:
  using GradientEstimator::GradientEstimator;
  void set_process_group(ProcessGroup* group) override;
  void init(const torch::Tensor& theta, uint64_t seed) override;
  EstimateOut estimate(const torch::Tensor& theta, uint64_t seed) override;
  nlohmann::json save(SafeTensors& out) const override;
  void load(const nlohmann::json& meta, const SafeTensors& in, const std::string& file) override;
  std::vector<const InnerState*> unroll_states() const override { return pointers(states_); }

 private:
  std::vector<InnerState> states_;
};

/// Full-horizon antithetic ES: each estimate trains fresh tasks for whole episodes. Unbiased
/// for the smoothed full-episode meta-loss; expensive, used for checks. Keeps no state.
class FullES : public GradientEstimator {
 public:
  using GradientEstimator::GradientEstimator;
  void set_process_group(ProcessGroup* group) override;
  void init(const torch::Tensor&, uint64_t) override {}
  EstimateOut estimate(const torch::Tensor& theta, uint64_t seed) override;
  nlohmann::json save(SafeTensors&) const override { return nlohmann::json::object(); }
  void load(const nlohmann::json&, const SafeTensors&, const std::string&) override {}
  std::vector<const InnerState*> unroll_states() const override { return {}; }
};

/// Builds the estimator named by config.type over `step`.
std::unique_ptr<GradientEstimator> make_gradient_estimator(const EstimatorConfig& config, TruncatedStep& step);

/// How an estimator type is built (the builtins pes, truncated_es, truncated_backprop, full_es are
/// registered in estimators.cpp).
using EstimatorFactory = std::function<std::unique_ptr<GradientEstimator>(TruncatedStep& step, const EstimatorConfig& config)>;
void register_estimator_type(const std::string& type, EstimatorFactory f);
/// Registered estimator types, sorted.
std::vector<std::string> estimator_types();

}  // namespace lopt
