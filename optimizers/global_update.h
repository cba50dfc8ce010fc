#pragma once
/// Global updates for local SGD: after a round in which K workers each trained a copy of the
/// global parameters for H local steps, a GlobalUpdate turns their deltas into the next global
/// parameters.
///
/// Convention: worker k's delta is Delta_k = theta_global - theta_k (a pseudo-gradient: it points
/// uphill like a gradient), and mean_delta = mean_k Delta_k. Then
///   local SGD (FedAvg)   = SGD with lr 1 on mean_delta         (theta <- mean_k theta_k)
///   SlowMo               = SGD with lr alpha, momentum beta     (Wang et al. 2020, with the 1/gamma
///                          of its momentum buffer folded into alpha)
///   data-parallel SGD/Adam = that optimizer on mean_delta when the workers return gradients
///   LOpt-A               = small_fc_lopt on mean_delta          (features of the mean delta)
///   LAgg-A               = small_fc_lopt with worker_inputs = K (each Delta_k is one more input)
/// LOpt-A / LAgg-A follow lefameuxbeding/learned_aggregation `fed_adafac_mlp_lopt.py` (adafactor
/// MLP features on the mean, plus every worker's delta for LAgg). That code's delta is
/// theta_k - theta_global; the sign flip is absorbed by the learned MLP's weights.
#include <nlohmann/json.hpp>
#include <torch/types.h>

#include <memory>
#include <string>
#include <vector>

#include "optimizers/optimizer.h"

namespace lopt {

class GlobalUpdate {
 public:
  virtual ~GlobalUpdate() = default;
  /// State of the global parameters (the wrapped optimizer's state).
  virtual OptState init(const ParamSet& params) const = 0;
  /// Whether apply_ needs every worker's delta (all-gather) or only their mean (all-reduce).
  virtual bool needs_worker_deltas() const { return false; }
  /// Workers this update is built for (0 = any number).
  virtual int64_t workers() const { return 0; }
  /// One global step in place. mean_delta[i] has tensor i's shape; worker_deltas[i] is [K, *shape]
  /// (given only when needs_worker_deltas()). `loss` is the round's mean training loss.
  virtual void apply_(OptState& state, const std::vector<torch::Tensor>& mean_delta,
                      const std::vector<torch::Tensor>& worker_deltas, const torch::Tensor& loss) const = 0;
  /// The optimizer this update applies to the mean delta, or to the mean delta and the workers'
  /// deltas (LAgg-A).
  virtual const Optimizer& optimizer() const = 0;
  virtual nlohmann::json hyperparams() const { return optimizer().hyperparams(); }
};

/// An Optimizer applied to the mean delta (local SGD, SlowMo, data-parallel baselines, LOpt-A).
class MeanDeltaUpdate : public GlobalUpdate {
 public:
  explicit MeanDeltaUpdate(std::shared_ptr<const Optimizer> opt) : opt_(std::move(opt)) {}
  OptState init(const ParamSet& params) const override { return opt_->init(params); }
  void apply_(OptState& state, const std::vector<torch::Tensor>& mean_delta, const std::vector<torch::Tensor>&,
              const torch::Tensor& loss) const override {
    opt_->update_(state, mean_delta, loss);
  }
  const Optimizer& optimizer() const override { return *opt_; }

 private:
  std::shared_ptr<const Optimizer> opt_;
};

/// LAgg-A: an optimizer with worker_inputs() = K > 0 (a learned aggregator) that also sees each
/// worker's delta (Optimizer::aggregate_).
class LearnedAggregation : public GlobalUpdate {
 public:
  explicit LearnedAggregation(std::shared_ptr<const Optimizer> opt);
  OptState init(const ParamSet& params) const override;
  bool needs_worker_deltas() const override { return true; }
  int64_t workers() const override;
  void apply_(OptState& state, const std::vector<torch::Tensor>& mean_delta, const std::vector<torch::Tensor>& worker_deltas,
              const torch::Tensor& loss) const override;
  const Optimizer& optimizer() const override;

 private:
  std::shared_ptr<const Optimizer> opt_;
};

/// The global update for an already built optimizer: LearnedAggregation when it is a learned
/// optimizer with worker_inputs > 0, else MeanDeltaUpdate.
std::unique_ptr<GlobalUpdate> make_global_update(std::shared_ptr<const Optimizer> opt);
/// From an optimizer config (make_optimizer); ConfigError at `path` when a learned aggregator's
/// worker_inputs differs from `workers`.
std::unique_ptr<GlobalUpdate> make_global_update(const nlohmann::json& config, int64_t workers,
                                                 const std::string& path = "/optimizer");

}  // namespace lopt
