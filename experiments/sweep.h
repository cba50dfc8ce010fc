#pragma once
/// Sweeps: a base train config and a grid of dotted keys, expanded to the Cartesian product.
/// {"base": {...train config...}, "grid": {"optimizer.lr": [1e-3, 3e-3], "task.width": [128, 512]},
///  "output_dir": "runs/mup_transfer", "summary": "runs/mup_transfer.h5"}
///
/// * A grid key naming several comma-separated keys varies them together:
///   "task.parametrization.type,optimizer.type": [["sp", "adam"], ["mup", "muadam"]].
/// * A key starting with "@" is a label: recorded in each run's point (and used by the figure and
///   the table), not set in the config: "@name,optimizer": [["AdamW", {...}], ["muLO_M", {...}]].
/// * "tune": a comparison (experiments/compare.h) run before the sweep, usually on the base-size
///   task only; an optimizer value {"tuned": "AdamW"} stands for the configuration that comparison
///   chose for its contender "AdamW" (learning rate, weight decay, and the schedule relative to the
///   run length, so that it stretches over longer runs). The contender may be a learned optimizer
///   with an lr_grid ({"tuned": "muLO_M"}: its checkpoint with the chosen step multiplier and
///   schedule) or use another lr_key or a "grid" (local SGD: local_sgd.local_lr): every key of the
///   choice is set, not only the optimizer's. {"tuned": "AdamW", "per_point": true} instead
///   tunes that contender at each run's own point (everything but the seed), by the same rule in a
///   comparison of its own (<tune output_dir>_per_point/...): the per-width upper bound.
/// * "plot": {"x": "task.width", "group": "@name", "logx": true, "curves": false}: the figure
///   (final training loss against x, one line per group, mean ± std over the other keys, e.g. seeds;
///   with "curves", the mean training-loss curves instead) and the table printed at the end.
///
/// Each run writes output_dir/run_NNNN.h5; finished runs of the same resolved config are reused, so
/// an interrupted sweep resumes. `--shard i/n` runs the runs whose point hashes to shard i of n
/// (shard_of: a pseudo-random, balanced split that does not change when the grid is edited; several
/// processes or machines; each writes its own summary); `--merge` (no training) writes the full summary from
/// every run file and fails naming the runs that are missing.
#include <nlohmann/json.hpp>

#include <string>
#include <vector>

#include "common/progress.h"
#include "experiments/train_jobs.h"

namespace lopt {

struct SweepRun {
  nlohmann::json point;   ///< {"optimizer.lr": 1e-3, "@name": "AdamW", ...}
  nlohmann::json config;  ///< resolved train config, with "output" set
};

/// Expands and validates every run of the sweep (ConfigError names the bad key) before any work.
/// With `placeholder_tuned`, {"tuned": name} values whose comparison has not run yet resolve to the
/// contender's optimizer at its first grid learning rate (for validation and --dry-run only).
/// With `per_point`, also collects the per-point tuning comparisons the runs need.
std::vector<SweepRun> expand_sweep(const nlohmann::json& sweep, bool placeholder_tuned = false,
                                   std::vector<nlohmann::json>* per_point = nullptr);

struct SweepOptions {
  bool fresh = false;     ///< re-run finished runs instead of reusing them
  int64_t shard = 0;      ///< this process runs the runs with shard_of(point, shards) == shard
  int64_t shards = 1;
  bool merge = false;     ///< train nothing: summarise every run file, failing when one is missing
  bool tune_only = false; ///< run the "tune" comparison and stop
  TrainJobs jobs;         ///< runs at a time (child processes; train_jobs.h), the tuning comparisons' too
};

/// The shard (0..shards-1) that runs the run at `point`: a hash of the point.
int64_t shard_of(const nlohmann::json& point, int64_t shards);

/// "i/n" -> (i, n) with 0 <= i < n; UsageError otherwise.
std::pair<int64_t, int64_t> parse_shard(const std::string& s);

/// The summary file a run of these options writes: the sweep's "summary", or for shard i of n
/// "<summary without .h5>.shard<i>of<n>.h5".
std::string sweep_summary_path(const nlohmann::json& sweep, const SweepOptions& options);

/// Runs the tuning comparison (if any), then this shard's runs, and writes the summary file;
/// returns the summary rows.
nlohmann::json run_sweep(const nlohmann::json& sweep, ProgressMode progress = ProgressMode::automatic,
                         const SweepOptions& options = {});

/// The markdown table of a sweep's rows by its "plot" spec: one row per group, one column per x,
/// cells "mean ± std (diverged k/n)" of the final training loss.
std::string sweep_table(const nlohmann::json& sweep, const nlohmann::json& rows);

}  // namespace lopt
