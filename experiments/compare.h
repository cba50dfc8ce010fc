#pragma once
/// `lopt compare`: optimizers compared on one task over held-out seeds, each hand-designed
/// optimizer at its best learning rate from a grid (chosen by the mean final training loss
/// over the seeds), learned optimizers as they are.
/// {"base": {train config without "optimizer": task, steps, eval_every, ...},
///  "seeds": [100, 101, 102],
///  "contenders": [{"name": "AdamW", "optimizer": {"type": "adamw"}, "lr_grid": [1e-4, ...]},
///                 {"name": "muLO_S", "optimizer": {"type": "mulo", "checkpoint": "..."}}],
///  "output_dir": "results/eval/mulo_s", "summary": "results/eval_mulo_s.h5"}
/// Each run writes output_dir/<name>_lr<i>_seed<s>.h5 and is skipped when already finished.
#include <nlohmann/json.hpp>

#include <string>
#include <vector>

#include "common/progress.h"

namespace lopt {

struct CompareRun {
  size_t contender = 0;
  int64_t lr_index = -1;  ///< index into lr_grid, -1 without a grid
  uint64_t seed = 0;
  nlohmann::json config;  ///< resolved train config with "output"
};

/// Validates the comparison and every run config (ConfigError names the key) before any work.
std::vector<CompareRun> expand_compare(const nlohmann::json& spec);

/// Runs (or resumes) every run, picks each contender's best LR and writes the summary HDF5
/// (kind "compare"); returns one JSON object per contender (name, best_lr, final losses).
nlohmann::json run_compare(const nlohmann::json& spec, ProgressMode progress = ProgressMode::automatic);

}  // namespace lopt
