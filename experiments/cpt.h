#pragma once
/// `lopt cpt`: continual pre-training of a (mixture-of-experts) transformer LM through phases of
/// different data (pre-train on D0, continue on D1, ...), after Ibrahim et al. 2024 (Simple and
/// Scalable Strategies to Continually Pre-train LLMs) and its MoE follow-up on routers under
/// distribution shift.
///
/// {"task": {"type": "transformer_lm", ..., "moe": {...}},        // corpus set per phase
///  "optimizer": {"type": "adamw", "lr": 3e-3, ...},              // peak LR; schedule from "schedule"
///  "schedule": {"type": "rewarm", "warmup_fraction": 0.01, "final_fraction": 0.1}
///            | {"type": "infinite", "warmup_fraction": 0.01, "cooldown_fraction": 0.2,
///               "constant_fraction": 0.5, "anneal_fraction": 0.1, "final_fraction": 0.05}
///            | {"type": "constant"},                                     // e.g. a learned optimizer
///  "phases": [{"corpus": "english", "steps": 2000},
///             {"corpus": "german", "steps": 2000, "replay_fraction": 0.25}],   // replays phase 0's corpus
///  "eval_corpora": ["english", "german"],   // default: the phases' corpora, in order
///  "eval_every": 100, "eval_examples": 64, "seed": 0, "checkpoint_every": 200,
///  "output": "runs/cpt/run.h5"}
///
/// Every phase starts a fresh optimizer state (the parameters carry over). "rewarm": each phase
/// warms up to the peak LR again and decays by cosine to final_fraction (re-warming and re-decaying
/// from the decayed checkpoint). "infinite": phase 0 warms up, cools down to constant_fraction and
/// stays there; every phase ends with a linear anneal over its last anneal_fraction, and the next
/// phase continues (at the constant LR) from the parameters before that anneal (the non-decayed
/// checkpoint). A one-phase run on a corpus with replay_fraction 0.5 of the other is the
/// re-training baseline on D0 u D1.
///
/// Logged (HDF5, `output`): training loss and LR per step; every eval_every steps and at each phase
/// end, per eval corpus its validation loss and, for MoE models, the maximum routing imbalance of
/// every layer; from phase 1 on, per layer the fraction of eval_corpora[0] validation tokens whose
/// top-k expert set differs from the one at the end of phase 0 (routing change); tokens per second
/// per phase. A checkpoint (`output`.ckpt.safetensors, atomic) is written every checkpoint_every
/// steps and at each phase boundary; `--resume` continues from it exactly.
#include <nlohmann/json.hpp>

#include <string>

#include "common/json_diff.h"
#include "common/progress.h"

namespace lopt {

/// Validates a cpt config and fills every default; ConfigError naming the key.
nlohmann::json resolve_cpt_config(const nlohmann::json& config);

/// Refuses (UsageError, exit 2) to run over the finished cpt result `output` unless `overwrite`:
/// with --resume it says whether the file holds this config (nothing to resume) or names the first
/// difference.
void check_cpt_output(const std::string& output, const nlohmann::json& resolved, bool resume, bool overwrite);

/// Runs (or, with `resume`, continues) a resolved or raw cpt config; returns the summary
/// (per eval corpus the final validation loss, forgetting = its rise since the end of phase 0,
/// tokens per second per phase).
/// `stop_after` >= 0 stops with a checkpoint once that many steps are done in total (returns
/// {"stopped_at": step}); --resume continues.
nlohmann::json run_cpt(const nlohmann::json& config, ProgressMode progress = ProgressMode::automatic, bool resume = false,
                       int64_t stop_after = -1);

}  // namespace lopt
