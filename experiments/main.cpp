// lopt command-line interface: `lopt <command> [options]`; `lopt --help` lists the commands.
#include <ATen/Parallel.h>
#include <torch/torch.h>

#include <boost/program_options.hpp>
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <tuple>
#include <filesystem>
#include <cstdlib>
#include <iostream>
#include <thread>

#include "common/config.h"
#include "common/distributed.h"
#include "common/lock.h"
#include "common/parallel.h"
#include "common/signals.h"
#include "common/errors.h"
#include "experiments/cli.h"
#include "experiments/compare.h"
#include "experiments/coord_check.h"
#include "experiments/cpt.h"
#include "experiments/meta_train.h"
#include "experiments/sweep.h"
#include "experiments/train.h"
#include "meta/meta_trainer.h"
#include "common/registry.h"
#include "meta/estimators.h"
#include "optimizers/learned_optimizer.h"
#include "tasks/task.h"

namespace po = boost::program_options;
using lopt::json;

namespace {

const char* kUsage =
    "lopt - meta-learning learned optimizers (C++/LibTorch)\n\n"
    "usage: lopt <command> [options]     (lopt <command> --help for its options)\n\n"
    "commands:\n"
    "  train         train one task with one optimizer; writes an HDF5 result file\n"
    "  local-sgd     local SGD with a global update (local SGD, SlowMo, LOpt-A, LAgg-A), one process\n"
    "                or one process per worker (torchrun --no-python, c10d/Gloo)\n"
    "  coord-check   muP coordinate check: activation RMS vs width under SP and muP\n"
    "  sweep         run a grid of train configs (JSON sweep definition), resumable\n"
    "  compare       optimizers on one task over held-out seeds, baselines at their best LR\n"
    "  meta-train    meta-train a learned optimizer (PES / ES / truncated backprop), resumable\n"
    "  cpt           continual pre-training of a (MoE) transformer LM through data phases, resumable\n"
    "  export-hub    write a learned-optimizer checkpoint in the hub layout PyLO loads\n";

/// The registered types (generated from the registries, so it never goes stale).
std::string registered_types() {
  return "\nregistered types:\n"
         "  optimizers          " + lopt::join_names(lopt::optimizer_types()) + "\n"
         "  learned optimizers  " + lopt::join_names(lopt::learned_optimizer_types()) + "\n"
         "  estimators          " + lopt::join_names(lopt::estimator_types()) + "\n"
         "  tasks               " + lopt::join_names(lopt::task_types()) + "\n"
         "  task families       " + lopt::join_names(lopt::task_family_types()) + "\n";
}

struct Common {
  int threads = 0;
  bool quiet = false;
  std::string config;
  std::vector<std::string> sets;
};

po::options_description common_options(Common& c) {
  po::options_description d("common options");
  d.add_options()("help,h", "show this help")(
      "config,c", po::value(&c.config), "JSON config file")(
      "set", po::value(&c.sets)->composing(), "override one config key: --set optimizer.lr=3e-4 (repeatable)")(
      "threads", po::value(&c.threads)->default_value(0), "intra-op threads (0 = all cores)")(
      "quiet,q", po::bool_switch(&c.quiet), "no progress output");
  return d;
}

/// --device for the commands that train (train, compare, sweep, meta-train): sets `key`.
void add_device_option(po::options_description& d, std::string& device) {
  d.add_options()("device", po::value(&device), "compute device: cpu, cuda, cuda:N (sets \"device\"; compare/sweep: base.device)");
}
void apply_device(json& cfg, const std::string& device, const std::string& key) {
  if (!device.empty()) lopt::set_dotted(cfg, key, device);
}

/// Parses argv for a subcommand; returns false when --help was printed.
bool parse(int argc, char** argv, const po::options_description& desc, const char* usage, po::variables_map& vm) {
  po::store(po::command_line_parser(argc, argv).options(desc).run(), vm);
  if (vm.count("help")) {
    std::cout << usage << "\n" << desc << "\n";
    return false;
  }
  po::notify(vm);
  return true;
}

int machine_cores() { return static_cast<int>(std::max(1u, std::thread::hardware_concurrency())); }

/// A per-machine count (--threads, --jobs): `lowest`..4 x cores, else UsageError naming the range.
void check_per_core_count(const char* flag, int value, int lowest, const char* zero_means = "") {
  const int cores = machine_cores();
  if (value < lowest || value > 4 * cores)
    throw lopt::UsageError("--" + std::string(flag) + " " + std::to_string(value) + " is out of range: give 1.." +
                           std::to_string(4 * cores) + " (this machine has " + std::to_string(cores) + " cores)" + zero_means);
}

void set_threads(int threads) {
  check_per_core_count("threads", threads, 0, ", or 0 for all cores");
  at::set_num_threads(threads > 0 ? threads : machine_cores());  // Debian's LibTorch starts with 1 intra-op thread
}

/// A count given on the command line: must be >= `min` when given.
void check_count(const po::variables_map& vm, const char* flag, long long value, long long min) {
  if (vm.count(flag) && value < min)
    throw lopt::UsageError("--" + std::string(flag) + " " + std::to_string(value) + " must be >= " + std::to_string(min));
}

json load_config(const Common& c, json fallback) {
  if (!c.config.empty() && std::filesystem::is_directory(c.config))
    throw lopt::UsageError("--config " + c.config + " is a folder; pass a JSON file such as experiments/configs/quickstart.json");
  json cfg = c.config.empty() ? std::move(fallback) : lopt::load_json_file(c.config);
  for (const auto& s : c.sets) lopt::apply_override(cfg, s);
  return cfg;
}

lopt::ProgressMode mode(const Common& c) { return c.quiet ? lopt::ProgressMode::quiet : lopt::ProgressMode::automatic; }

/// `lopt train`, or with `local` `lopt local-sgd`: the same options; the config must have a
/// "local_sgd" block, and under WORLD_SIZE > 1 each process runs one worker (rank 0 writes the file).
int cmd_train(int argc, char** argv, bool local = false) {
  Common c;
  std::string output, data_dir, optimizer, lo_checkpoint, device;
  long long steps = -1, seed = -1;
  bool overwrite = false;
  auto desc = common_options(c);
  add_device_option(desc, device);
  desc.add_options()("output,o", po::value(&output), "HDF5 result file (sets \"output\")")(
      "overwrite", po::bool_switch(&overwrite), "replace an existing result file")(
      "steps", po::value(&steps), "number of training steps (sets \"steps\")")(
      "seed", po::value(&seed), "random seed (sets \"seed\")")(
      "optimizer", po::value(&optimizer), ("optimizer type: " + lopt::join_names(lopt::optimizer_types()) + " (sets optimizer.type)").c_str())(
      "lo-checkpoint", po::value(&lo_checkpoint), "learned-optimizer weights, safetensors with PyLO names (sets optimizer.checkpoint)")(
      "data-dir", po::value(&data_dir), "Fashion-MNIST folder (sets task.data_dir; default $LOPT_DATA_DIR or the Debian package's)");
  po::variables_map vm;
  const char* usage = local ? "usage: lopt local-sgd --config FILE [--set key=value ...] [options]\n"
                              "  one process: simulates local_sgd.workers workers; under torchrun (or RANK, WORLD_SIZE,\n"
                              "  MASTER_ADDR, MASTER_PORT set by hand) one process per worker, deltas combined over c10d/Gloo"
                            : "usage: lopt train --config FILE [--set key=value ...] [options]";
  if (!parse(argc, argv, desc, usage, vm)) return 0;
  set_threads(c.threads);
  if (c.config.empty() && c.sets.empty())
    throw lopt::UsageError(std::string("lopt ") + (local ? "local-sgd" : "train") + " needs --config FILE (see experiments/configs/)");
  json cfg = c.config.empty() ? json::object() : lopt::load_json_file(c.config);
  if (!optimizer.empty() && cfg.value("optimizer", json::object()).value("type", "") != optimizer)
    cfg["optimizer"] = {{"type", optimizer}};  // a different optimizer: its own defaults, not the file's keys
  for (const auto& s : c.sets) lopt::apply_override(cfg, s);
  if (!output.empty()) cfg["output"] = output;
  check_count(vm, "steps", steps, 1);
  check_count(vm, "seed", seed, 0);
  if (vm.count("steps")) cfg["steps"] = steps;
  if (vm.count("seed")) cfg["seed"] = seed;
  if (!data_dir.empty()) lopt::set_dotted(cfg, "task.data_dir", data_dir);
  if (!lo_checkpoint.empty()) lopt::set_dotted(cfg, "optimizer.checkpoint", lo_checkpoint);
  apply_device(cfg, device, "device");
  auto resolved = lopt::resolve_train_config(cfg);
  std::unique_ptr<lopt::ProcessGroup> group;
  if (local) {
    if (!resolved.contains("local_sgd"))
      throw lopt::UsageError("lopt local-sgd needs a \"local_sgd\" block in the config, e.g. {\"workers\": 8, \"local_steps\": 4, "
                             "\"local_lr\": 0.1} (see experiments/configs/local_sgd_quick.json)");
    if (auto env = lopt::distributed_env_from_environment()) {
      if (env->world_size != resolved["local_sgd"]["workers"].get<int64_t>())
        throw lopt::ConfigError("/local_sgd/workers", "is " + resolved["local_sgd"]["workers"].dump() + " but WORLD_SIZE is " +
                                                          std::to_string(env->world_size) + ": run one process per worker");
      group = std::make_unique<lopt::ProcessGroup>(*env);
      group->check_same_config(resolved);
      if (group->rank() != 0) {  // rank 0 writes the result file and shows progress
        resolved["output"] = "";
        c.quiet = true;
      }
    }
  }
  const std::string out_path = resolved["output"];
  std::unique_ptr<lopt::OutputLock> lock;
  if (!out_path.empty()) {  // run_train checks that the path is writable (and not a folder) before training
    lock = std::make_unique<lopt::OutputLock>(out_path + ".lock", "the result file " + out_path);
    if (std::filesystem::is_regular_file(out_path) && !overwrite)
      throw lopt::UsageError(out_path + " exists (a finished run): pass --overwrite to replace it, or choose another -o");
  }
  auto res = lopt::run_train(resolved, mode(c), group.get());
  if (group && group->rank() != 0) return 0;
  const std::string& sp = res.eval_split;
  std::printf("final: train_loss %.5f %s_loss %.5f %s_%s %.4f wall_time %.1fs%s%s\n", res.final_train_loss(), sp.c_str(),
              res.final_eval("loss"), sp.c_str(), res.report_metric.c_str(), res.final_eval(res.report_metric), res.wall_time,
              resolved["output"].get<std::string>().empty() ? "" : " -> ",
              resolved["output"].get<std::string>().c_str());
  return 0;
}

int cmd_coord_check(int argc, char** argv) {
  Common c;
  std::string output = "runs/coord_check.h5", png, data_dir;
  auto desc = common_options(c);
  desc.add_options()("output,o", po::value(&output)->default_value(output), "HDF5 output file")(
      "png", po::value(&png), "also draw the curves to this PNG (needs python3-matplotlib)")(
      "data-dir", po::value(&data_dir), "Fashion-MNIST folder");
  po::variables_map vm;
  if (!parse(argc, argv, desc, "usage: lopt coord-check [--config FILE] [--set widths=[64,256]] [options]", vm)) return 0;
  set_threads(c.threads);
  json cfg = load_config(c, json::object());
  if (!data_dir.empty()) cfg["data_dir"] = data_dir;
  auto cc = lopt::CoordCheckConfig::from_json(cfg);
  auto res = lopt::run_coord_check(cc, mode(c));
  lopt::write_coord_check(output, res);
  for (size_t p = 0; p < cc.parametrizations.size(); ++p) {
    std::printf("%s: logits RMS after %lld steps:", cc.parametrizations[p].c_str(), static_cast<long long>(cc.steps));
    for (size_t w = 0; w < cc.widths.size(); ++w)
      std::printf(" %lld:%.3g", static_cast<long long>(cc.widths[w]), res.at(p, w, cc.steps, res.layers.size() - 1));
    std::printf("\n");
  }
  std::printf("wrote %s\n", output.c_str());
  if (!png.empty()) lopt::run_plot({output}, png);
  return 0;
}

/// Options shared by sweep and compare: where runs go, and whether finished ones are reused.
struct RunFolderOptions {
  std::string output_dir, summary;
  bool fresh = false;
  int jobs = 1;
  void add(po::options_description& d) {
    d.add_options()("output-dir,o", po::value(&output_dir), "folder for the run files (sets \"output_dir\")")(
        "summary", po::value(&summary), "summary HDF5 file (sets \"summary\"; default <output_dir>.h5)")(
        "fresh", po::bool_switch(&fresh), "re-run every run instead of reusing finished files of the same config")(
        "jobs,j", po::value(&jobs)->default_value(1),
        "train up to N runs at a time, each in a child process with --threads / N intra-op threads (at least 1); "
        "the same files as one at a time");
  }
  /// After set_threads: --jobs as TrainJobs (the children share this process's intra-op threads).
  lopt::TrainJobs train_jobs() const {
    check_per_core_count("jobs", jobs, 1);
    lopt::TrainJobs t;
    t.jobs = jobs;
    t.threads_per_job = std::max(1, at::get_num_threads() / jobs);
    if (jobs > 1) t.executable = lopt::current_executable();
    return t;
  }
  void apply(json& cfg) const {
    if (!output_dir.empty()) {
      cfg["output_dir"] = output_dir;
      if (summary.empty()) cfg.erase("summary");
      // A sweep's tuning comparison moves with it (-o never writes beside the committed results).
      if (cfg.contains("tune") && cfg["tune"].is_object()) {
        cfg["tune"]["output_dir"] = output_dir + "/tune";
        cfg["tune"]["summary"] = output_dir + "/tune.h5";
      }
    }
    if (!summary.empty()) cfg["summary"] = summary;
  }
};

int cmd_sweep(int argc, char** argv) {
  Common c;
  RunFolderOptions f;
  std::string png, shard, device;
  bool dry_run = false, merge = false, tune_only = false;
  auto desc = common_options(c);
  f.add(desc);
  add_device_option(desc, device);
  desc.add_options()("png", po::value(&png), "draw the sweep to this PNG (by its \"plot\" spec; else loss vs LR)")(
      "dry-run", po::bool_switch(&dry_run), "validate and list the runs without training")(
      "shard", po::value(&shard), "run only shard i of n (i/n, e.g. 0/4; runs are split by a hash of their grid point); each shard writes "
                                  "<summary>.shard<i>of<n>.h5; run the tuning (--tune-only) first")(
      "merge", po::bool_switch(&merge), "train nothing: write the summary from every finished run file (after the shards)")(
      "tune-only", po::bool_switch(&tune_only), "run the sweep's tuning comparison and stop");
  po::variables_map vm;
  if (!parse(argc, argv, desc, "usage: lopt sweep --config FILE [--set base.steps=100 ...] [--shard i/n | --merge] [options]", vm))
    return 0;
  set_threads(c.threads);
  if (c.config.empty()) throw lopt::UsageError("lopt sweep needs --config FILE (see experiments/sweeps/ and experiments/configs/)");
  json cfg = load_config(c, json::object());
  f.apply(cfg);
  apply_device(cfg, device, "base.device");
  lopt::SweepOptions o;
  o.fresh = f.fresh;
  o.jobs = f.train_jobs();
  o.merge = merge;
  o.tune_only = tune_only;
  if (!shard.empty()) std::tie(o.shard, o.shards) = lopt::parse_shard(shard);
  if (merge && (o.shards > 1 || tune_only || f.fresh || f.jobs > 1))
    throw lopt::UsageError("--merge trains nothing: give it without --shard, --tune-only, --fresh or --jobs");
  auto runs = lopt::expand_sweep(cfg, true);
  std::printf("sweep: %zu runs\n", runs.size());
  if (dry_run) {
    for (const auto& r : runs) std::printf("  %s -> %s\n", r.point.dump().c_str(), r.config["output"].get<std::string>().c_str());
    return 0;
  }
  const std::string out_dir = cfg["output_dir"];
  // The folder: shared by the shards of one sweep, exclusive otherwise (a plain sweep or --merge must
  // not run beside a shard); each shard and each summary file: exclusive.
  lopt::OutputLock folder_lock(out_dir + "/.lopt.lock", "the sweep folder " + out_dir, /*shared=*/o.shards > 1);
  std::unique_ptr<lopt::OutputLock> shard_lock;
  if (o.shards > 1)
    shard_lock = std::make_unique<lopt::OutputLock>(out_dir + "/.lopt.shard" + std::to_string(o.shard) + ".lock",
                                                    "shard " + std::to_string(o.shard) + " of the sweep folder " + out_dir);
  const std::string summary_path = lopt::sweep_summary_path(cfg, o);
  lopt::OutputLock summary_lock(summary_path + ".lock", "the sweep summary " + summary_path);
  auto rows = lopt::run_sweep(cfg, mode(c), o);
  if (tune_only) return 0;
  const std::string table = lopt::sweep_table(cfg, rows);
  if (!table.empty()) std::printf("\n%s\n", table.c_str());
  const std::string summary = lopt::sweep_summary_path(cfg, o);
  std::printf("wrote %s (%zu runs)\n", summary.c_str(), rows.size());
  if (!png.empty()) lopt::run_plot({summary}, png);
  return 0;
}

int cmd_compare(int argc, char** argv) {
  Common c;
  RunFolderOptions f;
  std::string png, device;
  std::vector<std::string> only, leave_out;
  bool dry_run = false;
  auto desc = common_options(c);
  f.add(desc);
  add_device_option(desc, device);
  desc.add_options()("png", po::value(&png), "draw the comparison to this PNG")(
      "only", po::value(&only)->composing(),
      "run only this contender (repeat for more) and keep the others' rows from the existing summary, which is "
      "rewritten with all of them: adds a contender to a finished comparison")(
      "leave-out", po::value(&leave_out)->composing(),
      "drop this contender from the config for this command (repeat for more): it runs nothing and the summary "
      "has no row for it, e.g. one not yet run beside --only")(
      "dry-run", po::bool_switch(&dry_run), "validate and list the runs known before tuning, without training");
  po::variables_map vm;
  if (!parse(argc, argv, desc, "usage: lopt compare --config FILE [--set base.steps=100 ...] [options]", vm)) return 0;
  set_threads(c.threads);
  const auto jobs = f.train_jobs();
  if (c.config.empty()) throw lopt::UsageError("lopt compare needs --config FILE (see experiments/configs/eval_*.json)");
  json cfg = lopt::leave_out_contenders(load_config(c, json::object()), leave_out);
  f.apply(cfg);
  apply_device(cfg, device, "base.device");
  auto runs = lopt::expand_compare(cfg);
  if (!only.empty())  // the kept contenders run nothing
    runs.erase(std::remove_if(runs.begin(), runs.end(),
                              [&](const lopt::CompareRun& r) {
                                const std::string name = cfg["contenders"][r.contender]["name"];
                                return std::find(only.begin(), only.end(), name) == only.end();
                              }),
               runs.end());
  std::printf("compare: %zu runs before any grid extension (tuning runs, then the report runs of the chosen configs)\n",
              runs.size());
  if (dry_run) {
    for (const auto& r : runs) std::printf("  %s\n", r.config["output"].get<std::string>().c_str());
    for (const auto& name : lopt::compare_carry_over(cfg, only))  // every --only check, as a real run makes it
      std::printf("  %s: row kept from the summary\n", name.c_str());
    return 0;
  }
  lopt::OutputLock lock(cfg["output_dir"].get<std::string>() + "/.lopt.lock",
                        "the comparison folder " + cfg["output_dir"].get<std::string>());
  // The summary file may be shared by comparisons with different folders: it is locked too.
  std::unique_ptr<lopt::OutputLock> summary_lock;
  if (const std::string summary = cfg.value("summary", cfg["output_dir"].get<std::string>() + ".h5"); !summary.empty())
    summary_lock = std::make_unique<lopt::OutputLock>(summary + ".lock", "the comparison summary " + summary);
  auto rows = lopt::run_compare(cfg, mode(c), f.fresh, only, jobs);
  auto num = [](const json& v, const char* fmt) {
    if (v.is_null()) return std::string("-");
    char buf[64];
    std::snprintf(buf, sizeof buf, fmt, v.get<double>());
    return std::string(buf);
  };
  const std::string metric = rows.empty() ? std::string("test_accuracy") : rows.front()["report_metric"].get<std::string>();
  std::string metric_title = metric;
  for (auto& ch : metric_title) ch = ch == '_' ? ' ' : ch;
  std::printf("| optimizer | tuning runs | chosen on the tuning seeds | final train loss, mean ± std | per report seed | %s |\n"
              "|---|---|---|---|---|---|\n", metric_title.c_str());
  for (const auto& r : rows) {
    std::string chosen = "— (untuned, as shipped)";
    if (r["tuned"].get<bool>() && r["tuning_failed"].get<bool>()) {
      chosen = "none: every candidate diverged on the tuning seeds";
    } else if (r["tuned"].get<bool>()) {
      chosen = (r.contains("lr_key") ? r["lr_key"].get<std::string>() : std::string("lr")) + " " + num(r["best_lr"], "%g") + ", " +
               r["schedule"].get<std::string>();
      if (r.contains("weight_decay")) chosen += ", wd " + num(r["weight_decay"], "%g");
      if (r.contains("grid_choice"))
        for (auto it = r["grid_choice"].begin(); it != r["grid_choice"].end(); ++it) chosen += ", " + it.key() + " " + num(it.value(), "%g");
      if (r["grid_extensions"].get<int>() > 0) chosen += " (grid extended " + r["grid_extensions"].dump() + "×)";
      if (r["best_at_grid_edge"].get<bool>()) chosen += " (still at the grid edge)";
    }
    std::string per_seed;
    for (const auto& v : r["final_train_loss"]) per_seed += (per_seed.empty() ? "" : " / ") + (v.is_null() ? std::string("diverged") : num(v, "%.4f"));
    const std::string loss = r["status"] == "diverged" ? "diverged (every seed)"
                                                       : num(r["mean_final_train_loss"], "%.4f") + " ± " + num(r["std_final_train_loss"], "%.4f");
    std::printf("| %s | %s | %s | %s | %s | %s ± %s |\n", r["name"].get<std::string>().c_str(), r["tuning_runs"].dump().c_str(),
                chosen.c_str(), loss.c_str(),
                per_seed.c_str(), num(r["mean_final_" + metric], "%.4f").c_str(), num(r["std_final_" + metric], "%.4f").c_str());
  }
  for (const auto& u : lopt::tuning_inequalities(cfg)) std::printf("note: unequal tuning: %s\n", u.c_str());
  std::string summary = cfg.value("summary", cfg["output_dir"].get<std::string>() + ".h5");
  std::printf("wrote %s\n", summary.c_str());
  if (!png.empty()) lopt::run_plot({summary}, png);
  return 0;
}

int cmd_cpt(int argc, char** argv) {
  Common c;
  std::string output;
  bool resume = false, overwrite = false;
  long long stop_after = -1;
  auto desc = common_options(c);
  desc.add_options()("output,o", po::value(&output), "HDF5 result file (sets \"output\"; the checkpoint is <output>.ckpt.safetensors)")(
      "resume", po::bool_switch(&resume), "continue from the checkpoint of an interrupted run")(
      "overwrite", po::bool_switch(&overwrite), "replace a finished result file")(
      "stop-after", po::value(&stop_after), "stop (with a checkpoint) once this many steps are done in total; --resume continues");
  po::variables_map vm;
  if (!parse(argc, argv, desc, "usage: lopt cpt --config FILE [--set key=value ...] [--resume] [options]", vm)) return 0;
  set_threads(c.threads);
  if (c.config.empty()) throw lopt::UsageError("lopt cpt needs --config FILE (see experiments/configs/cpt_*.json)");
  json cfg = load_config(c, json::object());
  if (!output.empty()) cfg["output"] = output;
  check_count(vm, "stop-after", stop_after, 0);
  auto resolved = lopt::resolve_cpt_config(cfg);
  const std::string out = resolved["output"];
  lopt::OutputLock lock(out + ".lock", "the cpt result " + out);
  lopt::check_cpt_output(out, resolved, resume, overwrite);
  auto summary = lopt::run_cpt(resolved, mode(c), resume, stop_after);
  if (summary.contains("stopped_at")) {
    std::printf("cpt: stopped at step %lld with a checkpoint; rerun with --resume to continue\n",
                static_cast<long long>(summary["stopped_at"].get<int64_t>()));
    return 0;
  }
  std::printf("%s\n", summary.dump(2).c_str());
  return 0;
}

int cmd_meta_train(int argc, char** argv) {
  Common c;
  std::string output_dir, data_dir, device;
  bool resume = false, continue_outputs = false;
  long long outer_steps = -1, stop_after = -1, seed = -1;
  bool overwrite = false;
  auto desc = common_options(c);
  add_device_option(desc, device);
  desc.add_options()("output-dir,o", po::value(&output_dir), "folder for checkpoints and the HDF5 log (sets \"output_dir\")")(
      "resume", po::bool_switch(&resume), "continue from <output_dir>/checkpoint.safetensors if it exists")(
      "overwrite", po::bool_switch(&overwrite), "replace the results of an earlier meta-training in the folder")(
      "continue-from-outputs", po::bool_switch(&continue_outputs),
      "the folder's resume state is lost: continue from its theta.safetensors and meta_train.h5 at their last step, with "
      "fresh outer Adam moments and unrolls (not exact; the step is recorded in the log)")(
      "outer-steps", po::value(&outer_steps), "number of outer (meta) steps (sets \"outer_steps\")")(
      "stop-after", po::value(&stop_after), "stop (with a checkpoint) once this many outer steps are done in total (not this many more); --resume continues")(
      "seed", po::value(&seed), "random seed (sets \"seed\")")(
      "data-dir", po::value(&data_dir), "Fashion-MNIST folder (sets task_family.data_dir)");
  po::variables_map vm;
  if (!parse(argc, argv, desc, "usage: lopt meta-train --config FILE [--set key=value ...] [--resume] [options]", vm)) return 0;
  set_threads(c.threads);
  if (c.config.empty()) throw lopt::UsageError("lopt meta-train needs --config FILE (see experiments/configs/meta_*.json)");
  json cfg = load_config(c, json::object());
  if (!output_dir.empty()) cfg["output_dir"] = output_dir;
  apply_device(cfg, device, "device");
  check_count(vm, "outer-steps", outer_steps, 1);
  check_count(vm, "stop-after", stop_after, 0);
  check_count(vm, "seed", seed, 0);
  if (vm.count("outer-steps")) cfg["outer_steps"] = outer_steps;
  if (vm.count("seed")) cfg["seed"] = seed;
  if (!data_dir.empty()) lopt::set_dotted(cfg, "task_family.data_dir", data_dir);
  lopt::resolve_meta_train_config(cfg);  // the whole config is valid before any rendezvous
  // Under torchrun (or RANK / WORLD_SIZE / MASTER_ADDR / MASTER_PORT set by hand) the ranks split the
  // estimator's task slots; rank 0 writes theta, the hub folder and the log.
  std::unique_ptr<lopt::ProcessGroup> group;
  if (auto env = lopt::distributed_env_from_environment()) group = std::make_unique<lopt::ProcessGroup>(*env);
  const bool writer = !group || group->rank() == 0;
  if (!writer) c.quiet = true;
  lopt::MetaTrainer trainer(cfg, group.get());
  if (group) group->check_same_config(trainer.config());
  const std::string log_path = trainer.config()["output_dir"].get<std::string>() + "/meta_train.h5";
  if (writer) trainer.on_checkpoint = [&](const lopt::MetaTrainer& t) { lopt::write_meta_train_log(log_path, t); };
  const std::string out_dir = trainer.config()["output_dir"];
  lopt::OutputLock lock(out_dir + (writer ? std::string("/.lopt.lock") : "/.lopt.rank" + std::to_string(group->rank()) + ".lock"),
                        "the meta-training folder " + out_dir);
  if (continue_outputs && (resume || overwrite))
    throw lopt::UsageError("--continue-from-outputs goes alone: --resume continues exactly from a checkpoint, --overwrite starts afresh");
  if (writer && !std::filesystem::exists(trainer.checkpoint_path()) && !overwrite && !continue_outputs &&
      (std::filesystem::exists(trainer.theta_path()) || std::filesystem::exists(log_path)))
    throw lopt::UsageError(out_dir + " holds the results of an earlier meta-training (theta.safetensors / meta_train.h5) "
                           "without a checkpoint to resume: pass --continue-from-outputs to continue from them (fresh outer "
                           "moments and unrolls), --overwrite to replace them, or choose another --output-dir");
  if (std::filesystem::exists(trainer.checkpoint_path()) && !resume)
    throw lopt::UsageError(trainer.checkpoint_path() + " exists: pass --resume to continue it" +
                           (continue_outputs ? " exactly (--continue-from-outputs is for a lost checkpoint)" : "") +
                           ", or choose another --output-dir");
  // Collective under a process group: the ranks continue from one outer step or not at all.
  if (resume && trainer.resume())
    std::printf("resumed %s at outer step %lld\n", trainer.checkpoint_path().c_str(), static_cast<long long>(trainer.step()));
  if (continue_outputs) {
    for (const auto& f : {trainer.theta_path(), log_path})
      if (!std::filesystem::exists(f))
        throw lopt::UsageError("--continue-from-outputs needs " + f + ", which is missing: start afresh in another --output-dir");
    json saved;
    auto log = lopt::read_meta_train_log(log_path, &saved);
    trainer.continue_from_outputs(trainer.read_theta(trainer.theta_path()), std::move(log), saved);
    std::printf("continued %s from its outputs at outer step %lld: fresh outer Adam moments and unrolls (not an exact resume)\n",
                out_dir.c_str(), static_cast<long long>(trainer.step()));
  }
  if (stop_after >= 0 && trainer.step() > 0 && stop_after <= trainer.step() && trainer.step() < trainer.config()["outer_steps"].get<int64_t>())
    std::fprintf(stderr,
                 "meta-train: --stop-after %lld counts outer steps in total, and this run is already at outer step %lld: "
                 "no outer step run (to run K more, pass --stop-after %lld+K)\n",
                 stop_after, static_cast<long long>(trainer.step()), static_cast<long long>(trainer.step()));
  trainer.run(mode(c), stop_after);
  if (!writer) return 0;
  const auto& log = trainer.log();
  std::printf("meta-train: %lld/%lld outer steps, meta-loss (last 20) %.4f, skipped %lld, %.0f inner steps/s, wall %.1fs\n",
              static_cast<long long>(trainer.step()), static_cast<long long>(trainer.config()["outer_steps"].get<int64_t>()),
              log.recent_meta_loss(), static_cast<long long>(log.skipped),
              log.elapsed.empty() ? 0.0 : static_cast<double>(log.inner_steps.back()) / log.elapsed.back(),
              log.elapsed.empty() ? 0.0 : log.elapsed.back());
  if (trainer.step() == 0) {
    std::printf("meta-train: no outer step run (--stop-after 0), no files written\n");
    return 0;
  }
  // Rewritten even when nothing was left to run: a run killed (or out of disk) while writing its
  // final outputs resumes here with the checkpoint at the last step and stale (or missing) outputs.
  // Continued from outputs with no step left to run (--stop-after at or below the step): the
  // checkpoint is written here, so the next command is --resume, as the message says.
  if (continue_outputs && !std::filesystem::exists(trainer.checkpoint_path())) trainer.save_checkpoint();
  trainer.write_outputs();
  lopt::write_meta_train_log(log_path, trainer);
  std::printf("wrote %s, %s, %s\n", trainer.theta_path().c_str(), trainer.checkpoint_path().c_str(), log_path.c_str());
  return 0;
}

}  // namespace

/// lopt export-hub CHECKPOINT DIR: the checkpoint's theta as DIR/model.safetensors + DIR/config.json,
/// which PyLO's MetaMLP.from_pretrained(DIR) reads.
int cmd_export_hub(int argc, char** argv) {
  std::string checkpoint, dir;
  po::options_description desc("export-hub options");
  desc.add_options()("help,h", "show this help")("checkpoint", po::value(&checkpoint)->required(),
                                                   "learned-optimizer checkpoint (safetensors file or hub folder)")(
      "output,o", po::value(&dir)->required(), "folder to write model.safetensors and config.json into");
  po::positional_options_description pos;
  pos.add("checkpoint", 1).add("output", 1);
  po::variables_map vm;
  po::store(po::command_line_parser(argc, argv).options(desc).positional(pos).run(), vm);
  if (vm.count("help")) {
    std::cout << "usage: lopt export-hub CHECKPOINT DIR\n\n" << desc << "\n";
    return 0;
  }
  po::notify(vm);
  // The checkpoint's own type (lopt records it); a foreign file is read as PyLO's MetaMLP (muLO).
  json cfg = lopt::checkpoint_learned_config(checkpoint);
  cfg.erase("impl");
  auto lo = lopt::make_learned_optimizer(cfg, "/checkpoint");
  lo->save_hub(dir, lo->load(checkpoint));
  std::printf("wrote %s/model.safetensors, %s/config.json\n", dir.c_str(), dir.c_str());
  return 0;
}

int main(int argc, char** argv) {
  if (argc < 2 || std::string(argv[1]) == "--help" || std::string(argv[1]) == "-h") {
    std::cout << kUsage << registered_types();
    return argc < 2 ? 2 : 0;
  }
  std::string cmd = argv[1];
  lopt::install_interrupt_handlers();
  lopt::tune_allocator();
  try {
    // Multi-process runs (torchrun sets WORLD_SIZE / RANK) exist for local-sgd and meta-train; the
    // other commands refuse rather than run N copies that write the same files.
    if (cmd != "local-sgd" && cmd != "meta-train" && lopt::distributed_env_from_environment())
      throw lopt::UsageError("WORLD_SIZE=" + std::string(std::getenv("WORLD_SIZE")) + ": lopt " + cmd +
                             " runs in one process (multi-process runs: lopt local-sgd, lopt meta-train); unset WORLD_SIZE");
    if (cmd == "train") return cmd_train(argc - 1, argv + 1);
    if (cmd == "local-sgd") return cmd_train(argc - 1, argv + 1, true);
    if (cmd == "coord-check") return cmd_coord_check(argc - 1, argv + 1);
    if (cmd == "sweep") return cmd_sweep(argc - 1, argv + 1);
    if (cmd == "compare") return cmd_compare(argc - 1, argv + 1);
    if (cmd == "meta-train") return cmd_meta_train(argc - 1, argv + 1);
    if (cmd == "cpt") return cmd_cpt(argc - 1, argv + 1);
    if (cmd == "export-hub") return cmd_export_hub(argc - 1, argv + 1);
    std::cerr << "lopt: unknown command '" << cmd << "'\n\n" << kUsage;
    return 2;
  } catch (const lopt::Interrupted& e) {
    std::cerr << "\nlopt " << cmd << ": " << e.what() << "\n";
    return 128 + e.signal();
  } catch (const po::error& e) {
    std::cerr << "lopt " << cmd << ": " << e.what() << " (see lopt " << cmd << " --help)\n";
    return 2;
  } catch (const lopt::ConfigError& e) {
    std::cerr << "lopt " << cmd << ": " << e.what() << "\n";
    return 2;
  } catch (const lopt::UsageError& e) {
    std::cerr << "lopt " << cmd << ": " << e.what() << "\n";
    return 2;
  } catch (const lopt::DistributedError& e) {
    std::cerr << "lopt " << cmd << ": error: " << e.what() << "\n";
    return 3;
  } catch (const c10::Error& e) {
    // LibTorch's own checks (an allocation too large for memory, a shape LibTorch rejects): the
    // message without its C++ backtrace.
    std::string msg = e.what_without_backtrace();
    if (auto nl = msg.find('\n'); nl != std::string::npos) msg = msg.substr(0, nl);
    std::cerr << "lopt " << cmd << ": error: " << msg << "\n";
    return 1;
  } catch (const std::exception& e) {
    std::string msg = e.what();
    if (auto nl = msg.find('\n'); nl != std::string::npos) msg = msg.substr(0, nl);
    std::cerr << "lopt " << cmd << ": error: " << msg << "\n";
    return 1;
  }
}
