#pragma once
/// The meta-trainer: an outer Adam (decoupled weight decay, i.e. AdamW, when outer.weight_decay > 0;
/// warmup-cosine schedule, global-norm clipping) on theta,
/// fed by a gradient estimator, with atomic checkpoints that resume exactly. After
/// learned_optimization `outer_trainers/gradient_learner.py`.
#include <nlohmann/json.hpp>
#include <torch/types.h>

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "common/device.h"
#include "common/progress.h"
#include "meta/estimators.h"

namespace lopt {


struct OptState;
class ProcessGroup;

/// Validates a meta-train config and fills every default; throws ConfigError naming the bad
/// key before any work is done. Keys: task_family, lopt, truncation, estimator, outer
/// {lr, warmup_steps, final_fraction, weight_decay, beta1, beta2, clip}, outer_steps, seed,
/// checkpoint_every, output_dir.
nlohmann::json resolve_meta_train_config(const nlohmann::json& config);

/// Curves of a meta-training run, one entry per outer step.
struct MetaTrainLog {
  std::vector<int64_t> step;            ///< outer step (1-based)
  std::vector<double> meta_loss;        ///< mean meta-loss of the estimate (NaN if non-finite)
  std::vector<double> grad_norm;        ///< global norm of the estimate before clipping
  std::vector<double> outer_lr;         ///< learning rate applied
  std::vector<double> elapsed;          ///< wall seconds since the run first started (across resumes)
  std::vector<int64_t> inner_steps;     ///< cumulative inner training steps
  int64_t skipped = 0;                  ///< non-finite estimates skipped
  /// Outer steps at which the run was continued from its outputs after losing its resume state
  /// (MetaTrainer::continue_from_outputs): from each, the outer Adam moments and the unrolls restarted.
  std::vector<int64_t> continued_at;
  /// Mean of the last `n` finite meta-losses (NaN when there are none).
  double recent_meta_loss(size_t n = 20) const;
};

class MetaTrainer {
 public:
  /// `config` as accepted by resolve_meta_train_config (resolved again here). With a process group
  /// the estimator's task slots are split over the ranks (ES / PES); every rank holds the same
  /// theta, rank r > 0 checkpoints its own unroll states to checkpoint.rank<r>.safetensors and only
  /// rank 0 writes theta.safetensors and the hub folder.
  explicit MetaTrainer(const nlohmann::json& config, ProcessGroup* group = nullptr);
  ~MetaTrainer();
  /// Restores the checkpoint in output_dir; returns false when there is none. Throws
  /// UsageError when the checkpoint was written by a different configuration. With a process group
  /// it is collective: every rank must call it, and the ranks' checkpoints must all exist at one
  /// outer step, or all be absent (else a UsageError on every rank, naming each rank's step).
  bool resume();
  /// Continues a run whose resume state (checkpoint.safetensors) was lost, from what it committed:
  /// `theta` and `log` as written at the log's last outer step by `saved_config` (the log's config;
  /// it must be this run's, up to checkpoint_every and output_dir). Not exact: the outer Adam moments
  /// and the unrolls (tasks, inner states, PES accumulators) lived only in the resume state, so they
  /// start afresh at that step (drawn from the seed and the step), which is added to
  /// log().continued_at. A fresh Adam restarts its step count, so the outer schedule must be
  /// constant (outer.warmup_steps 0, outer.final_fraction 1); one process only. UsageError when the
  /// configs differ, the log is not 1..N contiguous, theta's size does not match the config's
  /// learned optimizer, or either condition fails. Call instead of resume(), before run().
  void continue_from_outputs(const torch::Tensor& theta, MetaTrainLog log, const nlohmann::json& saved_config);
  /// Runs outer steps until outer_steps (or `stop_after` steps in total, if >= 0),
  /// checkpointing every checkpoint_every steps and at the end.
  void run(ProgressMode mode = ProgressMode::automatic, int64_t stop_after = -1);
  /// Writes checkpoint.safetensors, then (rank 0) the outputs, then calls on_checkpoint. The
  /// resume state goes first so that a folder with outputs but no checkpoint is always a finished
  /// meta-training whose resume state was removed, never one whose first checkpoint failed.
  void save_checkpoint();
  /// Rank 0: theta.safetensors (PyLO format) and hub/ (model.safetensors + config.json) from the
  /// current theta; other ranks write nothing.
  void write_outputs() const;

  const torch::Tensor& theta() const;
  /// Where `saved` (a config this trainer's folder was written with) differs from this run's,
  /// ignoring checkpoint_every and output_dir, which do not change the run; "" when it is the same.
  std::string run_config_difference(nlohmann::json saved) const;
  /// Reads a theta file of this config's learned optimizer (e.g. theta_path()).
  torch::Tensor read_theta(const std::string& path) const;
  int64_t step() const { return step_; }
  const MetaTrainLog& log() const { return log_; }
  const nlohmann::json& config() const { return config_; }
  std::string checkpoint_path() const;
  std::string theta_path() const;
  /// Called after every checkpoint (the CLI writes the HDF5 log there).
  std::function<void(const MetaTrainer&)> on_checkpoint;
  /// Called after each outer step with the number of steps done (tests use it to inject signals).
  std::function<void(int64_t)> on_step;

 private:
  nlohmann::json config_;
  ProcessGroup* group_ = nullptr;
  std::unique_ptr<DeviceScope> device_;  ///< the run's device while the trainer lives (destroyed last)
  std::unique_ptr<LoptTruncatedStep> step_fn_;
  std::unique_ptr<GradientEstimator> estimator_;
  std::unique_ptr<Optimizer> outer_;
  std::unique_ptr<OptState> outer_state_;
  int64_t step_ = 0;
  double elapsed_before_ = 0;  ///< wall time of earlier sessions (from the checkpoint)
  MetaTrainLog log_;
};

}  // namespace lopt
