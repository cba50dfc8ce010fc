#pragma once
/// `lopt compare`: optimizers compared on one task, reported over held-out seeds.
///
/// The tuning rule for hand-designed baselines (a contender with an "lr_grid"): every candidate
/// (learning rate x schedule [x weight decay]) is trained on the *tuning* seeds and scored by its
/// mean final training loss (a diverged run scores +inf); when the best learning rate lies on an
/// edge of the grid, the grid is extended by one step beyond that edge and the new candidates are
/// run, up to 4 times. The chosen candidate alone is then trained on the *report* seeds, which
/// must differ from the tuning seeds. A learned optimizer with an "lr_grid" is tuned exactly the
/// same way (its "lr" multiplies its step; learned global updates of local SGD likewise); one
/// without runs on the report seeds as shipped ("untuned").
///
/// The equal-tuning rule: every contender whose step has a learning rate or multiplier, hand-designed
/// or learned, is tuned over the same schedules and the same number of initial candidates on the
/// same tuning seeds. A comparison that breaks it still runs, but says so on stderr and records it
/// in the summary (attributes equal_tuning, tuning_inequalities); every row records how many tuning
/// runs its contender got (tuning_runs, after any grid extension).
///
/// {"base": {train config without "optimizer": task, steps, eval_every, ...},
///  "seeds": [100, 101, 102],            // report seeds (held out)
///  "tuning_seeds": [1, 2],              // default [1, 2]
///  "contenders": [{"name": "AdamW", "optimizer": {"type": "adamw"}, "lr_grid": [1e-4, ...],
///                  "schedules": [{"type": "constant"},
///                                {"type": "warmup_cosine", "warmup_fraction": 0.05, "final_fraction": 0}],
///                  "weight_decay_grid": [0.0, 0.1]},          // optional
///                 {"name": "muLO_S", "optimizer": {"type": "mulo", "checkpoint": "..."}},
///                 {"name": "LO_S", "optimizer": {...}, "set": {"task.parametrization.type": "sp"}}],
///  "output_dir": "runs/eval/mulo_s", "summary": "runs/eval_mulo_s.h5"}
/// A contender's "set" changes dotted keys of the base config for its runs (e.g. an SP learned
/// optimizer on the SP version of the task). "lr_key" names the dotted key lr_grid tunes (default
/// optimizer.lr; local SGD tunes local_sgd.local_lr), and "grid": {"optimizer.momentum": [0.5, 0.9]}
/// adds tuned dimensions without grid extension (e.g. SlowMo's momentum). "schedules" defaults to the two shown (constant, and 5% linear warmup + cosine decay to 0).
/// Run files: output_dir/<name>_tune<k>_seed<s>.h5 (candidate k) and <name>_seed<s>.h5 (report);
/// a finished file is reused only when its resolved config and input fingerprint match.
#include <nlohmann/json.hpp>

#include <string>
#include <utility>
#include <vector>

#include "common/progress.h"
#include "experiments/train_jobs.h"

namespace lopt {

struct CompareRun {
  size_t contender = 0;
  int64_t candidate = -1;  ///< tuning candidate index, -1 for a report run
  uint64_t seed = 0;
  nlohmann::json config;   ///< resolved train config with "output"
};

/// A comparison's schedule spec ({"type": "constant"} or {"type": "warmup_cosine", "warmup_fraction",
/// "final_fraction"}) as an optimizer "schedule" relative to the run length, which
/// resolve_train_config turns into steps (resolve_relative_schedule): the form a tuned choice is
/// reused in at any number of steps.
nlohmann::json relative_schedule_config(const nlohmann::json& spec_schedule);

/// Mean and sample standard deviation (n - 1; 0 for one value); +inf mean when any value is +inf.
std::pair<double, double> mean_std(const std::vector<double>& v);

/// Validates the comparison and every tuning-run config (ConfigError names the key) before any
/// work; returns the runs known before tuning (tuning runs of the initial grids, report runs of the
/// learned contenders).
std::vector<CompareRun> expand_compare(const nlohmann::json& spec);

/// How the tuned contenders' initial grids differ (candidate counts, schedule sets), one line each,
/// against the first tuned contender; empty when the comparison follows the equal-tuning rule.
std::vector<std::string> tuning_inequalities(const nlohmann::json& spec);

/// Tunes, runs (or reuses) every run and writes the summary HDF5 (kind "compare"); returns one JSON
/// object per contender: name, chosen optimizer config, best_lr, schedule, per-seed and mean / std
/// final training loss and test accuracy ("diverged" status when every report run diverged).
/// `fresh` re-runs finished runs instead of reusing them.
///
/// `only` (the CLI's --only NAME): run only these contenders and keep every other contender's row
/// and group from the existing summary, which is rewritten with all of them (attribute
/// carried_over lists the kept ones; their rows say "carried_over": true). This adds a contender to
/// a finished comparison without its run files. Refused (UsageError, before any work) when the
/// summary is missing, was written with another base or other seeds, or a kept contender is absent
/// from it, ran with another entry, or its checkpoint's content changed since (every group records
/// its checkpoint's fingerprint, attribute "inputs"; groups written before that are kept with a
/// warning that their checkpoint is not checked).
///
/// `jobs` (the CLI's --jobs N): the runs of each batch — a contender's tuning candidates on every
/// tuning seed, a grid extension, its report seeds — train up to N at a time in child processes;
/// the files, and so the summary, are the ones this process would have written itself.
nlohmann::json run_compare(const nlohmann::json& spec, ProgressMode progress = ProgressMode::automatic,
                           bool fresh = false, const std::vector<std::string>& only = {}, const TrainJobs& jobs = {});

/// The spec without the named contenders (the CLI's --leave-out NAME): they run nothing and get no
/// row, as if the config did not list them — to add one contender to a finished comparison with
/// --only while another listed contender has not run yet. UsageError naming the contenders when a
/// name is not one of them, or when nothing would be left.
nlohmann::json leave_out_contenders(nlohmann::json spec, const std::vector<std::string>& names);

/// The contenders whose rows run_compare(spec, ..., only) keeps from the existing summary, after
/// every check it makes (UsageError otherwise); empty when `only` is empty or names them all.
std::vector<std::string> compare_carry_over(const nlohmann::json& spec, const std::vector<std::string>& only);

}  // namespace lopt
