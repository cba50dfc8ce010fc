#pragma once
/// Local SGD rounds (communication-efficient data parallelism), after Stich 2019 / Lin et al. 2020
/// and lefameuxbeding/learned_aggregation `fed_truncated_step.py`.
///
/// A round: each of K workers starts from the global parameters and takes H local SGD steps
/// (learning rate gamma) on batches of its own shard of the training data; its delta is
/// Delta_k = theta_global - theta_k. A GlobalUpdate (optimizers/global_update.h) turns the deltas
/// into the next global parameters. In "data_parallel" mode a worker instead returns its mean
/// gradient over the same H batches at the global parameters (no local step), so a GlobalUpdate of
/// SGD or Adam is the data-parallel baseline that sees the same K*H*b examples per round.
///
/// The K workers of a round (and the rounds of many meta-training members) are one population
/// computation (Task::population_loss_and_grads over stacked parameters).
#include <nlohmann/json.hpp>
#include <torch/types.h>

#include <memory>
#include <string>
#include <vector>

#include "parametrization/param_set.h"
#include "tasks/data/data_source.h"

namespace lopt {

class Task;

struct LocalSgdConfig {
  int64_t workers = 8;      ///< K
  int64_t local_steps = 4;  ///< H
  double local_lr = 0.1;    ///< gamma (plain SGD on each worker)
  std::string mode = "local_sgd";  ///< "local_sgd" or "data_parallel"
  /// 0: IID shards; > 0: label-skewed (non-IID) shards, each class split over the workers in
  /// Dirichlet(alpha) proportions fixed by partition_seed (labelled data only).
  double dirichlet_alpha = 0;
  uint64_t partition_seed = 0;

  /// Worker w's shard of the training split.
  Shard shard(int64_t w) const { return Shard{w, workers, dirichlet_alpha, partition_seed}; }

  static LocalSgdConfig from_json(const nlohmann::json& j, const std::string& path = "/local_sgd");
  nlohmann::json to_json() const;
};

/// What one round gives the global update for one set of global parameters.
struct RoundResult {
  std::vector<torch::Tensor> mean_delta;     ///< per parameter tensor, its shape
  std::vector<torch::Tensor> worker_deltas;  ///< per parameter tensor, [workers, *shape]
  double loss = 0;                           ///< mean training loss over workers and local steps (the meta-loss)
  /// Training loss of the global parameters: the workers' mean loss before their first local step
  /// (data_parallel: over all H batches, all at the global parameters). What `train` records.
  double global_loss = 0;
};

/// Rounds of `globals.size()` independent runs, each with `workers` workers, as one population.
/// batches[h] is local step h's batch stacked over the runs' workers, run-major ([runs * workers,
/// B, ...]). Parameters are not modified.
std::vector<RoundResult> local_rounds(const Task& task, const std::vector<const ParamSet*>& globals, int64_t workers,
                                      const std::vector<Batch>& batches, const LocalSgdConfig& config);

/// The training batches of workers [first_worker, first_worker + workers): worker w reads
/// config.shard(w) of the training split through its own stream seeded from (seed, w), so one
/// process of a multi-process run can hold only its own worker: worker w of a single-process run
/// and rank w of a multi-process run read the same batches.
class WorkerStreams {
 public:
  WorkerStreams(std::shared_ptr<const DataSource> source, int64_t batch_size, uint64_t seed, int64_t first_worker,
                int64_t workers, const LocalSgdConfig& config);
  /// Local step h's batches for every local step of one round: [H] batches stacked over workers.
  std::vector<Batch> next_round(int64_t local_steps);
  nlohmann::json state();
  void restore(const nlohmann::json& state);

 private:
  std::vector<BatchStream> streams_;
};

}  // namespace lopt
