#pragma once
/// The functional inner-optimizer interface shared by hand-designed and learned optimizers,
/// after learned_optimization's `optimizers/base.py`: state in, new state out.
#include <nlohmann/json.hpp>
#include <torch/types.h>

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
};

/// Builds an optimizer from {"type": "sgd"|"adam"|"adamw"|"muadam"|"muon"|"mulo"|"small_fc_lopt", ...}; throws ConfigError
/// (naming `path`) for unknown types or bad values.
std::unique_ptr<Optimizer> make_optimizer(const nlohmann::json& config, const std::string& path = "/optimizer");

/// Checks that grads match the parameters in number and shape (throws with the index).
void check_grads(const OptState& state, const std::vector<torch::Tensor>& grads, const char* who);

}  // namespace lopt
