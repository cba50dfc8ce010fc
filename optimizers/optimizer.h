#pragma once
/// The functional inner-optimizer interface shared by hand-designed and learned optimizers,
/// after learned_optimization's `optimizers/base.py`: state in, new state out.
#include <nlohmann/json.hpp>
#include <torch/types.h>

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "parametrization/param_set.h"

namespace lopt {

/// Optimizer state: the parameters, the step count (number of updates applied), and named
/// per-parameter slots (e.g. "exp_avg"[i] belongs to params.tensors[i]).
struct OptState {
  ParamSet params;
  int64_t step = 0;
  std::map<std::string, std::vector<torch::Tensor>> slots;
};

class Optimizer;

/// One independent run of a population step: its optimizer (e.g. bound to this member's theta),
/// its state (updated in place) and its gradients.
struct PopulationMember {
  const Optimizer* opt;
  OptState* state;
  std::vector<torch::Tensor> grads;
  torch::Tensor loss;
};

class Optimizer {
 public:
  virtual ~Optimizer() = default;
  /// Initial state for `params` (the tensors are referenced, not copied).
  virtual OptState init(const ParamSet& params) const = 0;
  /// One step: returns the new state and leaves `state` untouched. Differentiable when the
  /// inputs carry autograd history. grads[i] has the shape of state.params.tensors[i];
  /// `loss` is the scalar training loss (learned optimizers may use it).
  virtual OptState update(const OptState& state, const std::vector<torch::Tensor>& grads,
                          const torch::Tensor& loss) const = 0;
  /// No-autograd fast path: updates `state` in place. Default: state = update(state, ...).
  virtual void update_(OptState& state, const std::vector<torch::Tensor>& grads, const torch::Tensor& loss) const;
  /// No-autograd steps of several independent runs, in place, each with its member's optimizer.
  /// Call it on any member's optimizer; the default runs each member's update_, learned
  /// optimizers batch the members they can into one kernel call.
  virtual void update_many_(std::vector<PopulationMember>& members) const;
  /// The learning rate applied to a tensor described by `info` at update `step` (schedule and
  /// muP multiplier included); NaN for optimizers without one (learned optimizers).
  virtual double lr_at(int64_t step, const ParamInfo& info) const;
  /// Full resolved configuration including "type"; make_optimizer(hyperparams()) rebuilds it.
  virtual nlohmann::json hyperparams() const = 0;
  /// Diagnostics (nothing is applied, `state` is left as it is): per tensor, the direction an
  /// orthogonalising optimizer would hand to Newton–Schulz at the step update() takes from `state`
  /// with `grads` (Muon: its momentum or Nesterov blend; Celo2: its network's output), signed as a
  /// descent direction; an undefined tensor for tensors it does not orthogonalise. Default: all undefined.
  virtual std::vector<torch::Tensor> pre_orthogonal_directions(const OptState& state,
                                                               const std::vector<torch::Tensor>& grads,
                                                               const torch::Tensor& loss) const;
  /// Local SGD: how many workers' deltas this optimizer takes besides their mean (a learned
  /// aggregator such as LAgg-A); 0 for a per-parameter optimizer (optimizers/global_update.h).
  virtual int64_t worker_inputs() const { return 0; }
  /// One no-grad global step from the mean delta and every worker's delta ([K, *shape] per tensor),
  /// in place; only for worker_inputs() > 0 (the default throws).
  virtual void aggregate_(OptState& state, const std::vector<torch::Tensor>& mean_delta,
                          const std::vector<torch::Tensor>& worker_deltas, const torch::Tensor& loss) const;
};

/// Builds an optimizer from {"type": ..., ...}: a registered optimizer type, or a registered
/// learned-optimizer type bound to a theta (its "checkpoint", else an untrained theta from
/// "theta_seed"). ConfigError naming `path` for unknown types (listing the registered ones) or bad values.
std::unique_ptr<Optimizer> make_optimizer(const nlohmann::json& config, const std::string& path = "/optimizer");

/// How an optimizer type is built from its config ({"type": name, ...} at JSON path `path`); it
/// checks every key (ConfigError naming the key) and rejects unknown ones.
using OptimizerFactory = std::function<std::unique_ptr<Optimizer>(const nlohmann::json& config, const std::string& path)>;
/// Adds a hand-designed optimizer type (the builtins: optimizers/builtin_optimizers.cpp). Learned
/// optimizers register with register_learned_optimizer_type (optimizers/learned_optimizer.h) and are
/// optimizer types too.
void register_optimizer_type(const std::string& type, OptimizerFactory f);
/// Every type make_optimizer accepts, sorted: hand-designed and learned.
std::vector<std::string> optimizer_types();

/// Checks that grads match the parameters in number and shape (throws with the index).
void check_grads(const OptState& state, const std::vector<torch::Tensor>& grads, const char* who);

}  // namespace lopt
