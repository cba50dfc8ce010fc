#pragma once
/// Task and TaskFamily: what an optimizer is trained and evaluated on, and their registries.
///
/// Tasks are pure functions over a ParamSet (no hidden module state), after
/// learned_optimization's `tasks/base.py`, so that an unroll can be differentiated
/// (truncated backprop) or run without autograd (ES, evaluation). A task reads its batches from
/// a DataSource it is handed (tasks/data/); it does not load data itself.
///
/// Adding a task type: implement Task (and a TaskFamily to meta-train on it), then register a
/// resolver and a factory in tasks/builtin_tasks.cpp. Every command (train, compare, sweep,
/// meta-train, coord-check) then accepts {"type": "<name>", ...}.
#include <ATen/core/Generator.h>
#include <nlohmann/json.hpp>
#include <torch/types.h>

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "parametrization/param_set.h"
#include "tasks/data/data_source.h"

namespace lopt {

/// What a task computes on one batch.
struct LossAndMetrics {
  /// Scalar training loss, auxiliary terms included (differentiable w.r.t. the parameters).
  torch::Tensor loss;
  /// Detached scalar means over the batch: "loss" (the data loss) always, then task-specific ones
  /// ("accuracy" for classifiers, "bits_per_byte" for byte-level LMs, auxiliary terms, ...).
  std::map<std::string, torch::Tensor> metrics;
};

class Task {
 public:
  virtual ~Task() = default;
  /// Freshly initialised parameters, drawn from `gen`.
  virtual ParamSet init(at::Generator& gen) const = 0;
  /// The task's data and its training batch size.
  virtual std::shared_ptr<const DataSource> data() const = 0;
  virtual int64_t batch_size() const = 0;
  /// Loss and metrics of `params` on `batch`. With `activations`, appends the output of every
  /// layer named by activation_names() (for coordinate checks).
  virtual LossAndMetrics loss_and_metrics(const ParamSet& params, const Batch& batch,
                                          std::vector<torch::Tensor>* activations = nullptr) const = 0;
  /// The training loss alone.
  torch::Tensor loss(const ParamSet& params, const Batch& batch) const { return loss_and_metrics(params, batch).loss; }
  virtual std::vector<std::string> activation_names() const = 0;
  /// The meta-training loss of a training loss (learned_optimization's `task.normalizer`): maps
  /// losses of every task of a family to a common range, NaN/inf to the maximum.
  virtual torch::Tensor normalizer(const torch::Tensor& loss) const = 0;
  /// Training losses [P] of P parameter sets with identical shapes stacked along a leading
  /// population dimension (stacked.tensors[i] is [P, *shape_i]) on a stacked batch (each tensor
  /// [P, B, ...]). Differentiable w.r.t. the stacked tensors. The default loops over members;
  /// tasks override it with one batched computation (the MLP uses bmm), which is what makes the N
  /// tasks and antithetic pairs of a meta-gradient estimate cheap at small widths.
  virtual torch::Tensor population_loss(const ParamSet& stacked, const Batch& batch) const;
  /// population_loss [P] and its gradients w.r.t. each stacked tensor (member p's loss only reaches
  /// member p's slice), without keeping an autograd graph. Default: autograd through
  /// population_loss; tasks with a closed-form backward override it (fewer ops for small models).
  virtual torch::Tensor population_loss_and_grads(const ParamSet& stacked, const Batch& batch,
                                                  std::vector<torch::Tensor>* grads) const;
  /// A training batch of the configured size from `split` (and `shard`) of the task's data.
  Batch sample_batch(Split split, at::Generator& gen, Shard shard = {}) const {
    return data()->sample(split, batch_size(), gen, shard);
  }
  /// The metric that summarises a run besides the training loss ("accuracy", "bits_per_byte"),
  /// reported on the data's report_split().
  virtual std::string report_metric() const { return "loss"; }
  /// Metrics averaged over the first `max_examples` of `split` (all if <= 0), no grad.
  virtual std::map<std::string, double> evaluate(const ParamSet& params, Split split, int64_t max_examples = 0) const;
  /// Full resolved configuration including "type"; make_task(hyperparams()) rebuilds the task.
  virtual nlohmann::json hyperparams() const = 0;
  /// What the population computations (population_loss*, normalizer) depend on: tasks with equal
  /// keys compute the same losses and normalised losses from the same stacked parameters and
  /// batch, so a meta-training step stacks their members into one computation (on the unscaled()
  /// task, each member's parameters times its reparam_scale()). Default: hyperparams(). The MLP
  /// leaves out its dataset (keeping input size and classes): the batch carries the data.
  virtual nlohmann::json population_key() const { return hyperparams(); }
  /// The global reparameterisation of a task built with "reparam_scale" (its loss is the
  /// unscaled() task's at w * scale); 1 and the task itself otherwise.
  virtual double reparam_scale() const { return 1.0; }
  virtual const Task& unscaled() const { return *this; }

 protected:
  /// Examples per evaluation chunk (memory bound of evaluate()).
  virtual int64_t eval_chunk() const { return 2048; }
};

class TaskFamily {
 public:
  virtual ~TaskFamily() = default;
  /// A task configuration (JSON accepted by make_task) drawn from `gen`.
  virtual nlohmann::json sample(at::Generator& gen) const = 0;
  /// The configuration for task slot `slot` of a meta-gradient estimate (0 .. num_tasks-1); by
  /// default sample(gen). A family may tie an option to the slot (mlp_family's dataset_per_slot).
  virtual nlohmann::json sample_for_slot(at::Generator& gen, int64_t slot) const {
    (void)slot;
    return sample(gen);
  }
  virtual nlohmann::json hyperparams() const = 0;
};

/// Task::population_loss_and_grads of `stacked` (P members, each tensor [P, *shape], parameter
/// metadata from `like`) with the members split into one slice per intra-op thread, each slice on
/// its own thread: at small widths the cost is LibTorch's per-op overhead, which one batched
/// computation runs serially. The result equals one call (members are independent).
torch::Tensor parallel_population_loss_and_grads(const Task& t, const ParamSet& like, const std::vector<torch::Tensor>& stacked,
                                                 const Batch& batch, std::vector<torch::Tensor>* grads);

/// learned_optimization's classifier normaliser: clip(loss, 0, 1.5 log(num_classes)), NaN/inf -> the
/// maximum. Byte-level LMs use it with 256 classes.
torch::Tensor normalize_classifier_loss(const torch::Tensor& loss, int64_t num_classes);

// ------------------------------------------------------------------ registries

/// How a task type is validated and built. `resolve` checks a config (ConfigError at `path`) and
/// returns it with every default filled in, without loading data; `make` builds the task from a
/// resolved config.
struct TaskType {
  std::function<nlohmann::json(const nlohmann::json& config, const std::string& path)> resolve;
  std::function<std::unique_ptr<Task>(const nlohmann::json& resolved)> make;
};
using TaskFamilyFactory = std::function<std::unique_ptr<TaskFamily>(const nlohmann::json& config, const std::string& path)>;

void register_task_type(const std::string& type, TaskType t);
void register_task_family_type(const std::string& type, TaskFamilyFactory f);
/// Registered names, sorted (for error messages and --help).
std::vector<std::string> task_types();
std::vector<std::string> task_family_types();

/// Builds a task from {"type": "mlp" | "transformer_lm", ...} ("mlp" when "type" is absent); `path`
/// is the JSON path used in errors.
std::unique_ptr<Task> make_task(const nlohmann::json& config, const std::string& path = "/task");
/// Validates a task config and returns it with every default filled in, without loading data.
nlohmann::json resolve_task_config(const nlohmann::json& config, const std::string& path = "/task");
/// Builds a family from {"type": "mlp_family" | "transformer_lm_family", ...}.
std::unique_ptr<TaskFamily> make_task_family(const nlohmann::json& config, const std::string& path = "/task_family");

}  // namespace lopt
