#include "experiments/train.h"

#include <torch/torch.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>

#include "common/config.h"
#include "common/device.h"
#include "common/errors.h"
#include "common/signals.h"
#include "common/rng.h"
#include "experiments/h5_writer.h"
#include "common/distributed.h"
#include "meta/local_sgd.h"
#include "optimizers/global_update.h"
#include "optimizers/kernels/lopt_cpu.h"
#include "optimizers/learned_optimizer.h"
#include "optimizers/optimizer.h"
#include "tasks/task.h"

namespace lopt {

nlohmann::json resolve_relative_schedule(const nlohmann::json& optimizer, int64_t steps) {
  if (!optimizer.is_object() || !optimizer.contains("schedule") || !optimizer["schedule"].is_object()) return optimizer;
  auto out = optimizer;
  auto& s = out["schedule"];
  // Ill-typed values are left for make_optimizer to report with their path.
  if (!s.contains("type") || !s["type"].is_string()) return out;
  const std::string type = s["type"].get<std::string>();
  if (type != "warmup_cosine" && type != "wsd") return out;
  auto frac = [&](const char* key, const char* steps_key) {
    if (!s.contains(key)) return;
    const auto& v = s[key];
    const std::string path = std::string("/optimizer/schedule/") + key;
    config_check(v.is_number() && v.get<double>() >= 0 && v.get<double>() < 1, path, "must be a number in [0, 1)");
    config_check(!s.contains(steps_key), path, std::string("give ") + key + " or " + steps_key + ", not both");
    s[steps_key] = static_cast<int64_t>(std::llround(v.get<double>() * static_cast<double>(steps)));
    s.erase(key);
  };
  frac("warmup_fraction", "warmup_steps");
  frac("decay_fraction", "decay_steps");
  if (!s.contains("total_steps")) s["total_steps"] = steps;
  return out;
}

nlohmann::json resolve_train_config(const nlohmann::json& config) {
  ConfigReader r(config, "");
  nlohmann::json out;
  auto task_cfg = r.object("task");
  auto opt_cfg = r.object("optimizer");
  config_check(!opt_cfg.empty(), "/optimizer", "required (e.g. {\"type\": \"adamw\", \"lr\": 1e-3})");
  out["steps"] = r.get<int64_t>("steps", 1000);
  out["eval_every"] = r.get<int64_t>("eval_every", 100);
  out["eval_examples"] = r.get<int64_t>("eval_examples", 0);
  out["seed"] = r.get<uint64_t>("seed", 0);
  out["output"] = r.get<std::string>("output", "");
  auto local = r.get<nlohmann::json>("local_sgd", nullptr);
  const auto device = r.get<std::string>("device", "cpu");
  const bool diagnostics = r.get<bool>("diagnostics", false);
  r.finish();
  // Absent when off, so that result files written before the key existed are still reused.
  if (diagnostics) out["diagnostics"] = true;
  config_check(!diagnostics || local.is_null(), "/diagnostics",
               "per-tensor diagnostics are recorded for single-optimizer runs only: remove it or \"local_sgd\"");
  parse_device(device, "/device");
  // Absent for the CPU, so that result files written before the key existed are still reused.
  if (device != "cpu") out["device"] = device;
  config_check(device == "cpu" || local.is_null(), "/device", "local-SGD runs are CPU-only for now: remove \"device\"");
  int64_t workers = 0;
  if (!local.is_null()) {
    auto lc = LocalSgdConfig::from_json(local, "/local_sgd");
    out["local_sgd"] = lc.to_json();
    workers = lc.workers;
  }
  config_check(out["steps"].get<int64_t>() >= 1, "/steps", "must be >= 1");
  config_check(out["eval_every"].get<int64_t>() >= 1, "/eval_every", "must be >= 1");
  config_check(out["eval_examples"].get<int64_t>() >= 0, "/eval_examples",
               "must be >= 0 (0 = the whole test split, or validation split for text)");
  opt_cfg = resolve_relative_schedule(opt_cfg, out["steps"].get<int64_t>());
  // With local_sgd, the optimizer is the global update applied to the workers' deltas.
  out["optimizer"] = workers > 0 ? make_global_update(opt_cfg, workers, "/optimizer")->hyperparams()
                                 : make_optimizer(opt_cfg, "/optimizer")->hyperparams();
  out["task"] = resolve_task_config(task_cfg, "/task");
  return out;
}

double TrainResult::final_eval(const std::string& metric) const {
  auto it = eval_metrics.find(metric);
  if (diverged || it == eval_metrics.end() || it->second.empty()) return NAN;
  return it->second.back();
}

double TrainResult::final_train_loss() const {
  if (train_loss.empty()) return NAN;
  size_t n = std::max<size_t>(1, train_loss.size() / 10);
  double s = 0;
  for (size_t i = train_loss.size() - n; i < train_loss.size(); ++i) s += train_loss[i];
  return s / static_cast<double>(n);
}

std::string report_metric_of(const nlohmann::json& task_config) {
  auto task = make_task(task_config);
  return to_string(task->data()->report_split()) + "_" + task->report_metric();
}

void check_output_writable(const std::string& output) {
  if (output.empty()) return;
  namespace fs = std::filesystem;
  config_check(!fs::is_directory(output), "/output", output + " is a folder; give a file name such as " + output + "/run.h5");
  const fs::path p(output);
  std::error_code ec;
  if (p.has_parent_path()) fs::create_directories(p.parent_path(), ec);
  const std::string probe = output + ".tmp";
  {
    std::ofstream f(probe, std::ios::binary | std::ios::trunc);
    if (!f) throw IoError(output, "cannot be written (folder missing or not writable)", "choose another -o / output");
  }
  fs::remove(probe, ec);
}

namespace {
/// One rank's round (a single worker) made into the whole round's: the mean delta and loss summed
/// over the ranks, and every worker's delta gathered when the global update needs them.
void combine_round(ProcessGroup& group, RoundResult& r, bool gather) {
  const double W = static_cast<double>(group.world_size());
  std::vector<torch::Tensor> buf;
  for (const auto& d : r.mean_delta) buf.push_back(d.contiguous().clone());
  buf.push_back(torch::tensor({r.loss, r.global_loss}, torch::kFloat64));
  group.all_reduce_sum_(buf, "local-SGD round (all-reduce of the deltas)");
  r.loss = buf.back()[0].item<double>() / W;
  r.global_loss = buf.back()[1].item<double>() / W;
  for (size_t k = 0; k < r.mean_delta.size(); ++k) {
    r.mean_delta[k] = buf[k].div_(W);
    r.worker_deltas[k] = gather ? group.all_gather(r.worker_deltas[k][0], "local-SGD round (all-gather of the deltas)")
                                : torch::Tensor();
  }
}
}  // namespace

namespace {
double rms_of(const torch::Tensor& t) { return t.to(torch::kFloat64).square().mean().sqrt().item<double>(); }
/// Cosine of two float64 tensors; NaN when either is zero.
double cosine(const torch::Tensor& a, const torch::Tensor& b) {
  const double denom = a.norm().item<double>() * b.norm().item<double>();
  return denom > 0 ? (a * b).sum().item<double>() / denom : NAN;
}

/// Stable rank ‖A‖_F² / σ_max² of a tensor of rank >= 2 seen as a matrix [size(0), rest] (1 for
/// rank one, n for n equal singular values); NaN for a vector or a zero matrix.
double stable_rank(const torch::Tensor& t) {
  if (t.dim() < 2) return NAN;
  const auto s = at::linalg_svdvals(t.reshape({t.size(0), -1}));
  const double top = s.max().item<double>();
  return top > 0 ? s.square().sum().item<double>() / (top * top) : NAN;
}

/// One row of the per-tensor diagnostics (TrainResult::diagnostics): each tensor's RMS, and when
/// `before` is given (the parameters before the step that ended here, with that step's gradients
/// and the optimizer's pre-orthogonalisation directions) the step's figures.
void record_diagnostics(TrainResult& res, const ParamSet& params, const std::vector<torch::Tensor>* before,
                        const std::vector<torch::Tensor>& grads, const std::vector<torch::Tensor>& directions) {
  if (res.diagnostic_tensors.empty())
    for (const auto& info : params.info) res.diagnostic_tensors.push_back(info.name + " (" + to_string(info.role) + ")");
  auto& d = res.diagnostics;
  for (size_t i = 0; i < params.size(); ++i) {
    const auto p = params.tensors[i].detach().to(torch::kFloat64);
    std::map<std::string, double> row;
    for (const char* k : kDiagnostics) row[k] = NAN;
    row["tensor_rms"] = rms_of(p);
    if (before != nullptr) {
      const auto p0 = (*before)[i].to(torch::kFloat64);
      const auto g = grads[i].detach().to(torch::kFloat64);
      const auto step = p0 - p;  // the descent step p_before - p_after
      row["update_rms"] = rms_of(step);
      row["update_grad_cosine"] = cosine(step, g);
      row["update_param_cosine"] = cosine(step, p0);
      row["grad_stable_rank"] = stable_rank(g);
      row["update_stable_rank"] = stable_rank(step);
      if (i < directions.size() && directions[i].defined()) {
        const auto dir = directions[i].detach().to(torch::kFloat64);
        row["direction_grad_cosine"] = cosine(dir, g);
        row["direction_param_cosine"] = cosine(dir, p0);
        row["direction_stable_rank"] = stable_rank(dir);
      }
    }
    for (const auto& [k, v] : row) d[k].push_back(v);
  }
}
}  // namespace

TrainResult run_train(const nlohmann::json& raw_config, ProgressMode progress_mode, ProcessGroup* group) {
  auto config = resolve_train_config(raw_config);
  check_output_writable(config["output"]);
  DeviceScope device(parse_device(config.value("device", "cpu"), "/device"));
  const int64_t steps = config["steps"], eval_every = config["eval_every"], eval_examples = config["eval_examples"];
  const uint64_t seed = config["seed"];
  auto task = make_task(config["task"]);
  auto init_gen = make_generator(derive_seed(seed, "init"));
  const Split eval_split = task->data()->report_split();

  TrainResult res;
  res.eval_split = to_string(eval_split);
  res.report_metric = task->report_metric();
  // One training step: an optimizer step on one batch, or with local_sgd one communication round
  // (steps count rounds). Returns the training loss before the update; no update when non-finite.
  std::function<double()> train_step;
  OptState state;
  std::unique_ptr<Optimizer> opt;
  std::unique_ptr<GlobalUpdate> global;
  std::unique_ptr<BatchStream> batches;
  std::unique_ptr<WorkerStreams> worker_batches;
  LocalSgdConfig local;
  // Diagnostics: the step that ends at an evaluation keeps its gradients and the parameters before it.
  const bool diagnostics = config.value("diagnostics", false);
  bool keep_step = false;
  std::vector<torch::Tensor> kept_grads, kept_before, kept_directions;
  if (config.contains("local_sgd")) {
    local = LocalSgdConfig::from_json(config["local_sgd"]);
    global = make_global_update(config["optimizer"], local.workers);
    state = global->init(task->init(init_gen));
    // One process runs every worker; with a process group each rank runs worker `rank` and the
    // deltas are combined across ranks (all-reduce of the mean, all-gather for LAgg-A).
    config_check(group == nullptr || group->world_size() == local.workers, "/local_sgd/workers",
                 "is " + std::to_string(local.workers) + " but WORLD_SIZE is " +
                     std::to_string(group ? group->world_size() : 1) + ": run one process per worker");
    const int64_t first = group ? group->rank() : 0, count = group ? 1 : local.workers;
    worker_batches = std::make_unique<WorkerStreams>(task->data(), task->batch_size(), derive_seed(seed, "data"), first,
                                                     count, local);
    train_step = [&, count] {
      auto round = local_rounds(*task, {&state.params}, count, worker_batches->next_round(local.local_steps), local);
      auto& r = round.front();
      if (group != nullptr) combine_round(*group, r, global->needs_worker_deltas());
      // Recorded: the global parameters' loss (comparable across global updates and with the
      // data-parallel baselines); the learned update is handed the round's mean loss, as in meta-training.
      if (std::isfinite(r.loss) && std::isfinite(r.global_loss))
        global->apply_(state, r.mean_delta, r.worker_deltas, torch::tensor(r.loss));
      return std::isfinite(r.loss) ? r.global_loss : r.loss;
    };
  } else {
    opt = make_optimizer(config["optimizer"]);
    state = opt->init(task->init(init_gen));
    batches = std::make_unique<BatchStream>(task->data(), Split::train, task->batch_size(), derive_seed(seed, "data"));
    train_step = [&] {
      auto batch = batches->next();
      auto p = state.params.detached_requiring_grad();
      auto loss = task->loss(p, batch);
      const double loss_v = loss.item<double>();
      if (!std::isfinite(loss_v)) return loss_v;
      auto grads = torch::autograd::grad({loss}, p.tensors);
      if (keep_step) {
        kept_grads = grads;
        kept_before.clear();
        for (const auto& t : state.params.tensors) kept_before.push_back(t.detach().clone());
        kept_directions = opt->pre_orthogonal_directions(state, grads, loss.detach());
      }
      opt->update_(state, grads, loss.detach());
      return loss_v;
    };
  }
  auto t0 = std::chrono::steady_clock::now();
  auto now = [&] { return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(); };
  auto evaluate = [&](int64_t step) {
    auto m = task->evaluate(state.params, eval_split, eval_examples);
    res.eval_steps.push_back(step);
    for (const auto& [k, v] : m) res.eval_metrics[k].push_back(v);
    double sq = 0;
    for (const auto& t : state.params.tensors) sq += t.detach().to(torch::kFloat64).square().sum().item<double>();
    res.param_norm.push_back(std::sqrt(sq));
    res.eval_time.push_back(now());
    if (diagnostics) record_diagnostics(res, state.params, step == 0 ? nullptr : &kept_before, kept_grads, kept_directions);
  };
  evaluate(0);
  Progress progress(steps, "train", progress_mode);
  char status[128] = "";
  for (int64_t step = 0; step < steps; ++step) {
    const bool ends_at_eval = (step + 1) % eval_every == 0 || step + 1 == steps;
    keep_step = diagnostics && ends_at_eval;
    const double loss_v = train_step();
    if (!std::isfinite(loss_v)) {
      res.diverged = true;
      res.diverged_step = step + 1;
      res.steps.push_back(step + 1);
      res.train_loss.push_back(loss_v);
      res.train_time.push_back(now());
      break;
    }
    res.steps.push_back(step + 1);
    res.train_loss.push_back(loss_v);
    res.train_time.push_back(now());
    if (ends_at_eval) {
      evaluate(step + 1);
      std::snprintf(status, sizeof status, "loss %.4f %s_%s %.4f", loss_v, res.eval_split.c_str(), res.report_metric.c_str(),
                    res.eval_metrics.at(res.report_metric).back());
    }
    progress.update(step + 1, status);
    if (interrupted())
      throw_if_interrupted("training", "this run's file was not written; finished runs of a sweep or comparison "
                                       "are kept and reused: rerun the same command to continue");
  }
  res.wall_time = now();
  if (!res.diverged) progress.finish(status);
  if (!config["output"].get<std::string>().empty()) write_train_result(config["output"], config, res);
  if (res.diverged) throw DivergenceError(res.diverged_step, res.train_loss.back());
  return res;
}

namespace {
/// FNV-1a 64 over a file's bytes, continuing from `h`.
uint64_t fnv1a_file(const std::string& path, uint64_t h) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw IoError(path, "cannot read the file to fingerprint it");
  std::vector<char> buf(1 << 16);
  while (in) {
    in.read(buf.data(), static_cast<std::streamsize>(buf.size()));
    for (std::streamsize i = 0; i < in.gcount(); ++i) {
      h ^= static_cast<unsigned char>(buf[static_cast<size_t>(i)]);
      h *= 1099511628211ULL;
    }
  }
  return h;
}
}  // namespace

std::string input_fingerprint(const nlohmann::json& config) {
  const auto& opt = config.at("optimizer");
  const std::string checkpoint = opt.value("checkpoint", std::string());
  if (checkpoint.empty()) return "";
  uint64_t h = 14695981039346656037ULL;
  std::vector<std::string> files = {checkpoint_weights_file(checkpoint)};
  if (std::filesystem::is_directory(checkpoint)) {
    const auto cfg = (std::filesystem::path(checkpoint) / "config.json").string();
    if (std::filesystem::exists(cfg)) files.push_back(cfg);
  }
  for (const auto& f : files) h = fnv1a_file(f, h);
  char hex[17];
  std::snprintf(hex, sizeof hex, "%016llx", static_cast<unsigned long long>(h));
  return hex;
}

bool finished_run_matches(const std::string& path, const nlohmann::json& config) {
  if (!std::filesystem::exists(path)) return false;
  const std::string status = h5_read_string_attr(path, "status");
  if (status != "completed" && status != "diverged") return false;
  nlohmann::json stored;
  try {
    stored = nlohmann::json::parse(h5_read_string_attr(path, "config"));
  } catch (const nlohmann::json::exception&) {
    return false;
  }
  return stored == config && h5_read_string_attr(path, "inputs") == input_fingerprint(config);
}

void write_train_result(const std::string& path, const nlohmann::json& config, const TrainResult& r) {
  H5Writer w(path);
  w.attr("config", config.dump(2));
  w.attr("inputs", input_fingerprint(config));
  // Learned-optimizer runs round differently on each SIMD target (about 1% after 1000 steps).
  kernels::apply_target_from_env();
  w.attr("simd_target", kernels::dispatched_target());
  w.attr("machine", machine_description());
  w.attr("kind", std::string("train"));
  w.attr("status", std::string(r.diverged ? "diverged" : "completed"));
  w.attr("diverged_step", r.diverged_step);
  w.attr("steps_completed", static_cast<int64_t>(r.diverged ? r.diverged_step - 1 : static_cast<int64_t>(r.steps.size())));
  w.attr("wall_time_s", r.wall_time);
  w.attr("final_train_loss", r.final_train_loss());
  // Final figures on the evaluation split, e.g. final_test_accuracy (images) or
  // final_validation_bits_per_byte (text). A diverged run has no final evaluation (its last one may be
  // from step 0): NaN, not a stale figure.
  w.attr("eval_split", r.eval_split);
  w.attr("report_metric", r.eval_split + "_" + r.report_metric);
  for (const auto& [k, v] : r.eval_metrics) w.attr("final_" + r.eval_split + "_" + k, r.final_eval(k));
  w.group("train");
  w.dataset("train/step", r.steps);
  w.dataset("train/loss", r.train_loss);
  w.dataset("train/wall_time", r.train_time);
  w.group("eval");
  w.dataset("eval/step", r.eval_steps);
  for (const auto& [k, v] : r.eval_metrics) w.dataset("eval/" + r.eval_split + "_" + k, v);
  w.dataset("eval/wall_time", r.eval_time);
  w.dataset("eval/param_norm", r.param_norm);
  if (!r.diagnostic_tensors.empty()) {
    const std::vector<uint64_t> shape = {r.eval_steps.size(), r.diagnostic_tensors.size()};
    w.group("diagnostics");
    w.attr("tensors", nlohmann::json(r.diagnostic_tensors).dump(), "diagnostics");
    for (const char* k : kDiagnostics) w.dataset(std::string("diagnostics/") + k, r.diagnostics.at(k), shape);
  }
  w.commit();
}

}  // namespace lopt
