#pragma once
/// `lopt train`: trains one task with one optimizer, evaluating periodically, and writes an
/// HDF5 result file (schema in results/README.md).
#include <nlohmann/json.hpp>

#include <map>
#include <string>
#include <vector>

#include "common/progress.h"

namespace lopt {

/// A warmup_cosine / wsd schedule given relative to the run: "warmup_fraction" / "decay_fraction"
/// become warmup_steps / decay_steps of `steps`, and a missing "total_steps" becomes `steps`, so
/// one optimizer config serves runs of any length (sweeps over the horizon). Other configs unchanged.
nlohmann::json resolve_relative_schedule(const nlohmann::json& optimizer, int64_t steps);

/// Validates a train config, fills every default and returns the resolved config:
/// {"task": {...}, "optimizer": {...}, "steps", "eval_every", "eval_examples", "seed", "output"}, and
/// "local_sgd" ({workers, local_steps, local_lr, mode}; meta/local_sgd.h) when given: then "steps"
/// counts communication rounds and "optimizer" is the global update applied to the workers' deltas
/// (optimizers/global_update.h).
/// Throws ConfigError naming the bad key.
nlohmann::json resolve_train_config(const nlohmann::json& config);

/// The per-tensor diagnostics' datasets (group "diagnostics" of a result file; TrainResult::diagnostics).
inline constexpr const char* kDiagnostics[] = {"tensor_rms",           "update_rms",         "update_grad_cosine",
                                               "update_param_cosine",  "grad_stable_rank",   "update_stable_rank",
                                               "direction_grad_cosine", "direction_param_cosine", "direction_stable_rank"};

struct TrainResult {
  std::vector<int64_t> steps;        ///< 1-based update index of each training loss
  std::vector<double> train_loss;    ///< loss of the batch before that update
  std::vector<double> train_time;    ///< seconds since start at each step
  std::vector<int64_t> eval_steps;   ///< number of updates applied when evaluated (0 = init)
  std::string eval_split;            ///< "test" (images) or "validation" (text)
  std::string report_metric;         ///< the task's summary metric ("accuracy", "bits_per_byte")
  std::map<std::string, std::vector<double>> eval_metrics;  ///< per metric, one value per eval step
  std::vector<double> eval_time;
  std::vector<double> param_norm;    ///< global L2 norm of the parameters at each evaluation
  /// With "diagnostics": true, per evaluation (row) and tensor (column, named "name (role)" in
  /// diagnostic_tensors), row-major, keyed by dataset name (kDiagnostics): the tensor's RMS; of the
  /// step that ended at the evaluation (p_before - p_after) its RMS, its cosine with its gradient and
  /// with p_before (+1: pure shrinkage); the stable ranks ‖A‖_F² / σ_max² of the gradient and the
  /// step; and, for tensors the optimizer orthogonalises, the direction it handed to Newton–Schulz
  /// (Optimizer::pre_orthogonal_directions): its cosine with the gradient and with p_before and its
  /// stable rank. NaN at step 0, for stable ranks of vectors and directions of other tensors.
  std::vector<std::string> diagnostic_tensors;
  std::map<std::string, std::vector<double>> diagnostics;
  bool diverged = false;
  int64_t diverged_step = -1;
  double wall_time = 0;
  /// Mean training loss over the last 10% of steps (the sweep's figure of merit).
  double final_train_loss() const;
  /// Last evaluated value of `metric` (NaN when diverged or never evaluated).
  double final_eval(const std::string& metric) const;
};

/// The summary figure a train run of this task config reports besides the training loss, as
/// "<split>_<metric>" ("test_accuracy" for image classifiers, "validation_bits_per_byte" for text).
/// Builds the task (loads its data).
std::string report_metric_of(const nlohmann::json& task_config);

/// Checks, before any training, that `output` (a result file path; empty = none) is not a folder
/// and can be created; ConfigError / IoError naming it otherwise.
void check_output_writable(const std::string& output);

class ProcessGroup;

/// Runs a resolved (or raw) train config. Writes config["output"] unless it is empty.
/// Throws DivergenceError after writing the file when the loss became NaN or inf.
/// With "local_sgd", a step is one communication round; with a process group (lopt local-sgd under
/// WORLD_SIZE = workers), this process runs worker `rank` only and the ranks combine their deltas.
TrainResult run_train(const nlohmann::json& config, ProgressMode progress = ProgressMode::automatic,
                      ProcessGroup* group = nullptr);

/// Content fingerprint (FNV-1a 64, hex) of the files a resolved train config reads besides the data:
/// the learned-optimizer checkpoint (a file, or a hub folder's model.safetensors and config.json).
/// Empty when there are none.
std::string input_fingerprint(const nlohmann::json& config);

/// Whether `path` holds a finished run (completed or diverged) of exactly this resolved config with
/// the same input fingerprint, so that a sweep or comparison may reuse it instead of re-running.
bool finished_run_matches(const std::string& path, const nlohmann::json& config);

/// Writes `result` with its config (attr "config") and input fingerprint (attr "inputs") to an HDF5
/// file atomically.
void write_train_result(const std::string& path, const nlohmann::json& config, const TrainResult& result);

}  // namespace lopt
