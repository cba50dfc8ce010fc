#pragma once
/// The truncated step: advances many inner-training runs ("members") by one step each,
/// resetting a member whose episode reached its length. After learned_optimization
/// `outer_trainers/truncated_step.py` and `lopt_truncated_step.py`.
///
/// A member trains task slot `tasks[i]` with its own meta-parameters `thetas[i]`: the positive
/// and negative antithetic copies of one task are two members with the same slot, so with the
/// same `seed` they see the same batches and the same resets, and differ only through theta.
#include <nlohmann/json.hpp>
#include <torch/types.h>

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "meta/truncation.h"
#include "optimizers/optimizer.h"
#include "optimizers/safetensors.h"

namespace lopt {

class Task;
class TaskFamily;
class LearnedOptimizer;

/// One inner-training run.
struct InnerState {
  nlohmann::json task = nlohmann::json::object();  ///< task configuration (make_task input)
  /// task.dump(), the task cache's key, set wherever task is (empty: computed on use). Kept because
  /// serialising the configuration twice per member and inner step cost 2.5% of a Celo2 meta-training.
  std::string task_key;
  OptState opt;                                    ///< parameters and inner-optimizer state
  int64_t inner_step = 0;                          ///< steps taken in this episode
  int64_t length = 0;                              ///< episode length (from the truncation schedule)
  /// Deep copy (tensors cloned, autograd history dropped).
  InnerState clone() const;
  /// Drops autograd history from every tensor (after a truncated-backprop truncation).
  void detach_();
};

/// What one step produced for each of the M members.
struct UnrollOut {
  torch::Tensor loss;           ///< [M] normalised training loss before the update (0 where masked)
  torch::Tensor mask;           ///< [M] 1 where the loss counts, 0 on a reset step
  std::vector<bool> done;       ///< the member's episode reached its length with this step
  std::vector<bool> was_reset;  ///< the member was reset (new task) instead of trained
  int64_t nonfinite = 0;        ///< members whose raw training loss was NaN/inf (normalised to the maximum)
};

class TruncatedStep {
 public:
  virtual ~TruncatedStep() = default;
  /// Number of task slots.
  virtual int64_t num_tasks() const = 0;
  /// A fresh run for task slot `task` drawn from `seed`; with `stagger`, the run starts at a
  /// random inner step of its episode so that the slots do not reset together.
  virtual InnerState init_state(const torch::Tensor& theta, int64_t task, uint64_t seed, bool stagger) const = 0;
  /// One inner step for every member (see the file comment). With `differentiable`, the losses
  /// and new states carry autograd history back to `thetas` (truncated backprop).
  virtual UnrollOut step(const std::vector<torch::Tensor>& thetas, const std::vector<InnerState*>& states,
                         const std::vector<int64_t>& tasks, uint64_t seed, bool differentiable) = 0;
  virtual nlohmann::json hyperparams() const = 0;
};

/// Inner training of tasks from a TaskFamily with a learned optimizer (the meta-training
/// problem). The meta-loss of a step is the task's training loss through the task's normaliser
/// (Task::normalizer; classifiers and byte-level LMs: clip to [0, 1.5 log(classes)], NaN/inf -> max).
/// Members whose tasks share a population key (Task::population_key: the same computation, data and
/// reparameterisation scale aside) are stacked into one population computation.
struct LoptTruncatedStepConfig {
  nlohmann::json task_family;
  nlohmann::json lopt;
  nlohmann::json truncation;
  int64_t num_tasks = 8;
  bool stagger = true;       ///< random initial inner step in [0, length)
  bool population = true;    ///< batch members of identical shape (false: one member at a time)
  /// Local SGD (meta/local_sgd.h): when set, an inner step is one communication round of
  /// local_sgd.workers workers, and the learned optimizer is the global update (LOpt-A, or LAgg-A
  /// when its worker_inputs equals workers). The meta-loss of a round is its mean local training
  /// loss, as in lefameuxbeding/learned_aggregation. Not differentiable (ES / PES only).
  nlohmann::json local_sgd = nullptr;
};

class LoptTruncatedStep : public TruncatedStep {
 public:
  explicit LoptTruncatedStep(LoptTruncatedStepConfig config);
  ~LoptTruncatedStep() override;
  int64_t num_tasks() const override { return config_.num_tasks; }
  InnerState init_state(const torch::Tensor& theta, int64_t task, uint64_t seed, bool stagger) const override;
  UnrollOut step(const std::vector<torch::Tensor>& thetas, const std::vector<InnerState*>& states,
                 const std::vector<int64_t>& tasks, uint64_t seed, bool differentiable) override;
  nlohmann::json hyperparams() const override;
  const LearnedOptimizer& learned_optimizer() const { return *lopt_; }
  const TruncationSchedule& truncation() const { return *trunc_; }
  /// The task for a configuration (built once, then cached).
  const Task& task(const nlohmann::json& config) const;

 private:
  LoptTruncatedStepConfig config_;
  std::unique_ptr<TaskFamily> family_;
  std::unique_ptr<LearnedOptimizer> lopt_;
  std::unique_ptr<TruncationSchedule> trunc_;
  /// Built tasks by config, least recently used evicted past kTaskCache entries (a family with
  /// continuous options, e.g. reparam_scale, samples a new config for nearly every task).
  static constexpr size_t kTaskCache = 512;
  struct CachedTask {
    std::unique_ptr<Task> task;
    std::string population_key;  ///< task->population_key().dump()
    uint64_t last_use = 0;
  };
  const CachedTask& cached(const nlohmann::json& config) const;
  const CachedTask& cached(const InnerState& s) const;
  const CachedTask& cached(const std::string& key, const nlohmann::json& config) const;
  mutable std::map<std::string, CachedTask> tasks_;
  mutable uint64_t task_uses_ = 0;
  /// Optimizers bound to the thetas of recent steps (an estimate reuses its thetas for every
  /// step of the truncation). Holding the tensor keeps its identity unique while cached.
  std::vector<std::pair<torch::Tensor, std::unique_ptr<Optimizer>>> bound_;
  const Optimizer& bound(const torch::Tensor& theta);
  /// Resets members whose episode ended (marking them in `out`) and groups the others by task
  /// configuration, or by Task::population_key with `by_population_key` (one group per member
  /// without population batching).
  std::map<std::string, std::vector<size_t>> reset_and_group(const std::vector<torch::Tensor>& thetas,
                                                             const std::vector<InnerState*>& states,
                                                             const std::vector<int64_t>& tasks, uint64_t seed, UnrollOut& out,
                                                             bool by_population_key);
  UnrollOut step_local_sgd(const std::vector<torch::Tensor>& thetas, const std::vector<InnerState*>& states,
                           const std::vector<int64_t>& tasks, uint64_t seed);
};

/// Stores inner states into `out` as tensors "<prefix>.<i>.p<k>" / "<prefix>.<i>.<slot><k>" and
/// returns the JSON needed to restore them (task config, counters, ParamInfo, slot layout).
nlohmann::json save_inner_states(const std::vector<InnerState>& states, const std::string& prefix, SafeTensors& out);
/// Inverse of save_inner_states; throws IoError naming `file` when a tensor is missing.
std::vector<InnerState> load_inner_states(const nlohmann::json& meta, const std::string& prefix,
                                          const SafeTensors& in, const std::string& file);

}  // namespace lopt
