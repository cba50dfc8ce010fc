#pragma once
/// Sweeps: a base train config and a grid of dotted keys, expanded to the Cartesian product.
/// {"base": {...train config...}, "grid": {"optimizer.lr": [1e-3, 3e-3], "task.width": [128, 512]},
///  "output_dir": "results/mup_transfer", "summary": "results/mup_transfer.h5"}
/// A grid key naming several comma-separated keys varies them together:
/// "task.parametrization.type,optimizer.type": [["sp", "adam"], ["mup", "muadam"]].
/// Each run writes output_dir/run_NNNN.h5; finished runs are skipped, so an interrupted sweep resumes.
#include <nlohmann/json.hpp>

#include <string>
#include <vector>

#include "common/progress.h"

namespace lopt {

struct SweepRun {
  nlohmann::json point;   ///< {"optimizer.lr": 1e-3, ...}
  nlohmann::json config;  ///< resolved train config, with "output" set
};

/// Expands and validates every run of the sweep (ConfigError names the bad key) before any work.
std::vector<SweepRun> expand_sweep(const nlohmann::json& sweep);

/// Runs (or resumes) the sweep and writes the summary file; returns the summary rows.
/// A finished run file is reused only when its resolved config and input fingerprint match
/// (finished_run_matches); `fresh` re-runs every run.
nlohmann::json run_sweep(const nlohmann::json& sweep, ProgressMode progress = ProgressMode::automatic, bool fresh = false);

}  // namespace lopt
