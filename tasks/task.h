#pragma once
/// Task and TaskFamily: what a learned optimizer is trained and evaluated on.
///
/// Tasks are pure functions over a ParamSet (no hidden module state), after
/// learned_optimization's `tasks/base.py`, so that an unroll can be differentiated
/// (truncated backprop) or run without autograd (ES, evaluation).
#include <ATen/core/Generator.h>
#include <nlohmann/json.hpp>
#include <torch/types.h>

#include <map>
#include <memory>
#include <string>

#include "parametrization/param_set.h"
#include "tasks/image_dataset.h"

namespace lopt {

class Task {
 public:
  virtual ~Task() = default;
  /// Freshly initialised parameters, drawn from `gen`.
  virtual ParamSet init(at::Generator& gen) const = 0;
  /// Scalar training loss of `params` on `batch` (differentiable w.r.t. params).
  virtual torch::Tensor loss(const ParamSet& params, const Batch& batch) const = 0;
  /// Training losses [P] of P parameter sets with identical shapes stacked along a leading
  /// population dimension (stacked.tensors[i] is [P, *shape_i]) on batches x [P, B, ...],
  /// y [P, B]. Differentiable w.r.t. the stacked tensors. The default loops over members;
  /// tasks override it with one batched computation (the MLP uses bmm), which is what makes
  /// the N tasks and antithetic pairs of a meta-gradient estimate cheap at small widths.
  virtual torch::Tensor population_loss(const ParamSet& stacked, const torch::Tensor& x, const torch::Tensor& y) const;
  /// population_loss [P] and its gradients w.r.t. each stacked tensor (member p's loss only reaches
  /// member p's slice), without keeping an autograd graph. Default: autograd through
  /// population_loss; tasks with a closed-form backward override it (fewer ops for small models).
  virtual torch::Tensor population_loss_and_grads(const ParamSet& stacked, const torch::Tensor& x, const torch::Tensor& y,
                                                  std::vector<torch::Tensor>* grads) const;
  /// A batch of the configured size from `split`.
  virtual Batch sample_batch(Split split, at::Generator& gen) const = 0;
  /// Metrics ("loss", "accuracy", ...) over the first `max_examples` of `split` (all if <= 0), no grad.
  virtual std::map<std::string, double> evaluate(const ParamSet& params, Split split,
                                                 int64_t max_examples = 0) const = 0;
  /// Full resolved configuration including "type"; make_task(hyperparams()) rebuilds the task.
  virtual nlohmann::json hyperparams() const = 0;
};

class TaskFamily {
 public:
  virtual ~TaskFamily() = default;
  /// A task configuration (JSON accepted by make_task) drawn from `gen`.
  virtual nlohmann::json sample(at::Generator& gen) const = 0;
  virtual std::unique_ptr<Task> make_task(const nlohmann::json& config) const;
  virtual nlohmann::json hyperparams() const = 0;
};

/// Builds a task from {"type": "mlp", ...}; `path` is the JSON path used in errors.
std::unique_ptr<Task> make_task(const nlohmann::json& config, const std::string& path = "/task");
/// Validates a task config and returns it with every default filled in, without loading data.
nlohmann::json resolve_task_config(const nlohmann::json& config, const std::string& path = "/task");
/// Builds a family from {"type": "mlp_family", ...}.
std::unique_ptr<TaskFamily> make_task_family(const nlohmann::json& config, const std::string& path = "/task_family");

}  // namespace lopt
