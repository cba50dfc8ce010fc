#include "meta/meta_trainer.h"

#include <torch/torch.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <algorithm>
#include <filesystem>

#include "common/config.h"
#include "common/distributed.h"
#include "common/errors.h"
#include "common/json_diff.h"
#include "common/signals.h"
#include "common/rng.h"
#include "meta/local_sgd.h"
#include "optimizers/learned_optimizer.h"
#include "tasks/task.h"

namespace lopt {

nlohmann::json resolve_meta_train_config(const nlohmann::json& config) {
  config_check(config.is_object(), "", "a meta-train config must be a JSON object");
  ConfigReader r(config, "");
  nlohmann::json out;
  auto family = r.object("task_family");
  config_check(!family.empty(), "/task_family", "required (e.g. {\"type\": \"mlp_family\", \"widths\": [64]})");
  out["task_family"] = make_task_family(family, "/task_family")->hyperparams();
  auto lopt_cfg = r.object("lopt");
  if (lopt_cfg.empty()) lopt_cfg = {{"type", kDefaultLearnedOptimizer}};
  const auto lopt = make_learned_optimizer(lopt_cfg, "/lopt");
  out["lopt"] = lopt->hyperparams();
  out["truncation"] = make_truncation_schedule(r.object("truncation"), "/truncation")->hyperparams();
  out["estimator"] = EstimatorConfig::from_json(r.object("estimator"), "/estimator").to_json();
  {
    // A horizon shorter than one truncation would end every task inside its first unroll.
    const auto& t = out["truncation"];
    const int64_t shortest = t.contains("min_length") ? t["min_length"].get<int64_t>() : t.value("length", int64_t(0));
    const int64_t trunc = out["estimator"].value("trunc_length", int64_t(0));
    if (trunc > 0 && shortest > 0)
      config_check(shortest >= trunc, t.contains("min_length") ? "/truncation/min_length" : "/truncation/length",
                   "the shortest inner horizon (" + std::to_string(shortest) + ") must be >= estimator.trunc_length (" +
                       std::to_string(trunc) + "): lengthen the horizon or shorten the truncation");
  }
  if (auto local = r.get<nlohmann::json>("local_sgd", nullptr); !local.is_null()) {
    const auto lc = LocalSgdConfig::from_json(local, "/local_sgd");
    out["local_sgd"] = lc.to_json();
    config_check(out["estimator"]["type"] != "truncated_backprop", "/estimator/type",
                 "local-SGD meta-training needs an ES estimator (pes, truncated_es, full_es), not truncated_backprop");
    const int64_t k = lopt->worker_inputs();
    config_check(k == 0 || k == lc.workers, "/lopt/worker_inputs",
                 "LAgg-A sees every worker's delta: worker_inputs must equal local_sgd.workers (" + std::to_string(lc.workers) +
                     "), or be 0 for LOpt-A");
  } else {
    config_check(lopt->worker_inputs() == 0, "/lopt/worker_inputs",
                 "a learned aggregator (worker_inputs > 0) is meta-trained on local SGD: add \"local_sgd\": {\"workers\": K, ...}");
  }
  {
    ConfigReader o(r.object("outer"), "/outer");
    nlohmann::json oc;
    oc["lr"] = o.get<double>("lr", 3e-3);
    oc["warmup_steps"] = o.get<int64_t>("warmup_steps", 0);
    oc["final_fraction"] = o.get<double>("final_fraction", 0.1);
    oc["weight_decay"] = o.get<double>("weight_decay", 0.0);
    oc["beta1"] = o.get<double>("beta1", 0.9);
    oc["beta2"] = o.get<double>("beta2", 0.999);
    oc["clip"] = o.get<double>("clip", 1.0);
    o.finish();
    config_check(oc["lr"].get<double>() > 0, "/outer/lr", "must be > 0");
    config_check(oc["warmup_steps"].get<int64_t>() >= 0, "/outer/warmup_steps", "must be >= 0");
    config_check(oc["clip"].get<double>() >= 0, "/outer/clip", "must be >= 0 (0 = no clipping)");
    config_check(oc["weight_decay"].get<double>() >= 0, "/outer/weight_decay", "must be >= 0");
    config_check(oc["final_fraction"].get<double>() >= 0 && oc["final_fraction"].get<double>() <= 1, "/outer/final_fraction",
                 "must be in [0, 1] (the end of the cosine decay as a fraction of the peak LR)");
    for (const char* b : {"beta1", "beta2"})
      config_check(oc[b].get<double>() >= 0 && oc[b].get<double>() < 1, std::string("/outer/") + b, "must be in [0, 1)");
    out["outer"] = oc;
  }
  out["outer_steps"] = r.get<int64_t>("outer_steps", 1000);
  out["seed"] = r.get<uint64_t>("seed", 0);
  out["checkpoint_every"] = r.get<int64_t>("checkpoint_every", 50);
  {
    // theta kept at these outer steps (snapshots/theta_step<N>.safetensors) for a meta-compute curve;
    // default 10, 30, 100, 300, ... up to outer_steps, and outer_steps itself (the curve's last point).
    std::vector<int64_t> snaps;
    if (r.has("snapshot_steps")) {
      snaps = r.get<std::vector<int64_t>>("snapshot_steps", {});
      for (auto s : snaps) config_check(s >= 1, "/snapshot_steps", "outer steps must be >= 1, got " + std::to_string(s));
    } else {
      for (int64_t decade = 10; decade <= out["outer_steps"].get<int64_t>(); decade *= 10)
        for (int64_t k : {int64_t(1), int64_t(3)})
          if (decade * k <= out["outer_steps"].get<int64_t>()) snaps.push_back(decade * k);
      snaps.push_back(out["outer_steps"].get<int64_t>());
    }
    std::sort(snaps.begin(), snaps.end());
    snaps.erase(std::unique(snaps.begin(), snaps.end()), snaps.end());
    out["snapshot_steps"] = snaps;
  }
  out["output_dir"] = r.get<std::string>("output_dir", "runs/meta/meta_train");
  const auto device = r.get<std::string>("device", "cpu");
  r.finish();
  parse_device(device, "/device");
  if (device != "cpu") out["device"] = device;  // absent for the CPU: older checkpoints resume
  config_check(out["outer_steps"].get<int64_t>() >= 1, "/outer_steps", "must be >= 1");
  config_check(out["checkpoint_every"].get<int64_t>() >= 1, "/checkpoint_every", "must be >= 1");
  config_check(!out["output_dir"].get<std::string>().empty(), "/output_dir", "must name a folder");
  config_check(out["outer"]["warmup_steps"].get<int64_t>() < out["outer_steps"].get<int64_t>(), "/outer/warmup_steps",
               "must be < outer_steps");
  return out;
}

double MetaTrainLog::recent_meta_loss(size_t n) const {
  double s = 0;
  size_t k = 0;
  for (size_t i = meta_loss.size(); i > 0 && k < n; --i)
    if (std::isfinite(meta_loss[i - 1])) s += meta_loss[i - 1], ++k;
  return k ? s / static_cast<double>(k) : NAN;
}

MetaTrainer::MetaTrainer(const nlohmann::json& config, ProcessGroup* group)
    : config_(resolve_meta_train_config(config)), group_(group),
      device_(std::make_unique<DeviceScope>(parse_device(config_.value("device", "cpu"), "/device"))) {
  auto est_cfg = EstimatorConfig::from_json(config_["estimator"]);
  LoptTruncatedStepConfig sc;
  sc.task_family = config_["task_family"];
  sc.lopt = config_["lopt"];
  sc.truncation = config_["truncation"];
  sc.local_sgd = config_.value("local_sgd", nlohmann::json());
  sc.num_tasks = est_cfg.num_tasks;
  sc.stagger = est_cfg.stagger;
  sc.population = est_cfg.population;
  step_fn_ = std::make_unique<LoptTruncatedStep>(sc);
  estimator_ = make_gradient_estimator(est_cfg, *step_fn_);
  estimator_->set_process_group(group_);

  const auto& oc = config_["outer"];
  outer_ = make_optimizer({{"type", "adamw"},
                            {"lr", oc["lr"]},
                            {"beta1", oc["beta1"]},
                            {"beta2", oc["beta2"]},
                            {"weight_decay", oc["weight_decay"]},
                            {"schedule",
                             {{"type", "warmup_cosine"},
                              {"warmup_steps", oc["warmup_steps"]},
                              {"total_steps", config_["outer_steps"]},
                              {"final_fraction", oc["final_fraction"]}}}},
                           "/outer");

  const uint64_t seed = config_["seed"];
  auto gen = make_generator(derive_seed(seed, "theta"));
  ParamSet p;
  p.tensors = {step_fn_->learned_optimizer().init_theta(gen)};
  p.info = {ParamInfo{"theta", ParamRole::bias, 1, p.tensors[0].numel(), 1.0}};
  outer_state_ = std::make_unique<OptState>(outer_->init(p));
  estimator_->init(theta(), derive_seed(seed, "unroll"));
}

MetaTrainer::~MetaTrainer() = default;

const torch::Tensor& MetaTrainer::theta() const { return outer_state_->params.tensors[0]; }

torch::Tensor MetaTrainer::read_theta(const std::string& path) const { return step_fn_->learned_optimizer().load(path); }

std::string MetaTrainer::checkpoint_path() const {
  const std::string name = group_ && group_->rank() > 0 ? "checkpoint.rank" + std::to_string(group_->rank()) + ".safetensors"
                                                       : "checkpoint.safetensors";
  return (std::filesystem::path(config_["output_dir"].get<std::string>()) / name).string();
}
std::string MetaTrainer::theta_path() const {
  return (std::filesystem::path(config_["output_dir"].get<std::string>()) / "theta.safetensors").string();
}

void MetaTrainer::save_checkpoint() {
  std::filesystem::create_directories(config_["output_dir"].get<std::string>());
  SafeTensors st;
  st.tensors["theta"] = theta();
  nlohmann::json outer_slots = nlohmann::json::object();
  for (const auto& [name, v] : outer_state_->slots) {
    outer_slots[name] = v.size();
    for (size_t k = 0; k < v.size(); ++k) st.tensors["outer." + name + "." + std::to_string(k)] = v[k];
  }
  auto elapsed = log_.elapsed.empty() ? elapsed_before_ : log_.elapsed.back();
  nlohmann::json meta = {{"config", config_},
                         {"step", step_},
                         {"outer_step", outer_state_->step},
                         {"outer_slots", outer_slots},
                         {"estimator", estimator_->save(st)},
                         {"elapsed", elapsed},
                         {"world_size", group_ ? group_->world_size() : 1},
                         {"log",
                          {{"step", log_.step},
                           {"meta_loss", log_.meta_loss},
                           {"grad_norm", log_.grad_norm},
                           {"outer_lr", log_.outer_lr},
                           {"elapsed", log_.elapsed},
                           {"inner_steps", log_.inner_steps},
                           {"skipped", log_.skipped},
                           {"continued_at", log_.continued_at}}}};
  // NaN is not JSON: the log stores non-finite losses as null.
  st.metadata["lopt_meta_train"] = meta.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  write_safetensors(checkpoint_path(), st);
  write_outputs();
  if (on_checkpoint) on_checkpoint(*this);
}

void MetaTrainer::write_outputs() const {
  if (group_ && group_->rank() != 0) return;
  step_fn_->learned_optimizer().save(theta_path(), theta());
  // The same theta as PyLO's MetaMLP.from_pretrained reads it (model.safetensors + config.json).
  step_fn_->learned_optimizer().save_hub((std::filesystem::path(theta_path()).parent_path() / "hub").string(), theta());
}

std::string MetaTrainer::run_config_difference(nlohmann::json saved) const {
  auto now = config_;
  // How often to checkpoint, which theta snapshots to keep and where the folder lives do not change
  // the run.
  for (auto* c : {&saved, &now}) {
    c->erase("checkpoint_every");
    c->erase("snapshot_steps");
    c->erase("output_dir");
  }
  return config_difference(saved, now);
}

bool MetaTrainer::resume() {
  const auto path = checkpoint_path();
  const bool found = std::filesystem::exists(path);
  SafeTensors st;
  nlohmann::json meta;
  if (found) {
    st = read_safetensors(path);
    auto it = st.metadata.find("lopt_meta_train");
    if (it == st.metadata.end()) throw IoError(path, "not a meta-training checkpoint (no lopt_meta_train metadata)");
    meta = nlohmann::json::parse(it->second);
  }
  if (group_ && group_->world_size() > 1) {
    // Every rank continues from the same outer step, or none continues: a rank resuming alone (or
    // from another step) would silently mix unroll states of different outer steps.
    const int64_t mine = found ? meta.value("step", int64_t(-1)) : -1;
    const auto steps = group_->all_gather(torch::tensor({mine}, torch::kInt64), "checkpoint step check");
    std::string list;
    bool same = true;
    for (int64_t r = 0; r < group_->world_size(); ++r) {
      const int64_t s = steps[r][0].item<int64_t>();
      same = same && s == steps[0][0].item<int64_t>();
      list += (r ? ", rank " : "rank ") + std::to_string(r) + ": " + (s < 0 ? std::string("none") : "step " + std::to_string(s));
    }
    if (!same)
      throw UsageError("the ranks' checkpoints in " + config_["output_dir"].get<std::string>() +
                       " are not from one outer step (" + list +
                       "): they were not written together, so the run cannot continue exactly; start afresh in "
                       "another --output-dir (or remove every checkpoint*.safetensors there)");
  }
  if (!found) return false;
  const int64_t world = group_ ? group_->world_size() : 1;
  if (meta.value("world_size", int64_t(1)) != world)
    throw UsageError("checkpoint " + path + " was written by " + std::to_string(meta.value("world_size", int64_t(1))) +
                     " process(es), this run has " + std::to_string(world) +
                     " (each rank holds its own task slots): resume with the same WORLD_SIZE");
  if (const auto d = run_config_difference(meta["config"]); !d.empty())
    throw UsageError("checkpoint " + path + " was written with a different config (" + d +
                     "); use the same config to resume, or another output_dir to start afresh");
  auto get = [&](const std::string& name) {
    auto t = st.tensors.find(name);
    if (t == st.tensors.end()) throw IoError(path, "checkpoint lacks tensor '" + name + "'");
    return t->second;
  };
  outer_state_->params.tensors[0] = get("theta");
  outer_state_->step = meta["outer_step"];
  outer_state_->slots.clear();
  for (auto s = meta["outer_slots"].begin(); s != meta["outer_slots"].end(); ++s)
    for (size_t k = 0; k < s.value().get<size_t>(); ++k)
      outer_state_->slots[s.key()].push_back(get("outer." + s.key() + "." + std::to_string(k)));
  estimator_->load(meta["estimator"], st, path);
  step_ = meta["step"];
  elapsed_before_ = meta["elapsed"];
  const auto& l = meta["log"];
  auto doubles = [](const nlohmann::json& a) {
    std::vector<double> v;
    for (const auto& x : a) v.push_back(x.is_null() ? NAN : x.get<double>());
    return v;
  };
  log_.step = l["step"].get<std::vector<int64_t>>();
  log_.meta_loss = doubles(l["meta_loss"]);
  log_.grad_norm = doubles(l["grad_norm"]);
  log_.outer_lr = doubles(l["outer_lr"]);
  log_.elapsed = doubles(l["elapsed"]);
  log_.inner_steps = l["inner_steps"].get<std::vector<int64_t>>();
  log_.skipped = l["skipped"];
  log_.continued_at = l.value("continued_at", std::vector<int64_t>{});  // absent before continuations existed
  return true;
}

void MetaTrainer::continue_from_outputs(const torch::Tensor& theta, MetaTrainLog log, const nlohmann::json& saved_config) {
  const auto dir = config_["output_dir"].get<std::string>();
  if (const auto d = run_config_difference(saved_config); !d.empty())
    throw UsageError("the meta-training log in " + dir + " was written by a different config (" + d +
                     "): continue with the config that wrote it, or start afresh in another --output-dir");
  if (group_ && group_->world_size() > 1)
    throw UsageError("continuing " + dir + " from its outputs runs in one process (the ranks' unrolls are lost with their "
                     "resume states): run it without torchrun, or start afresh in another --output-dir");
  const auto& oc = config_["outer"];
  if (oc["warmup_steps"].get<int64_t>() != 0 || oc["final_fraction"].get<double>() != 1.0)
    throw UsageError("continuing " + dir + " from its outputs restarts the outer Adam (its moments were in the lost resume "
                     "state), which keeps the outer schedule only when it is constant; this config has outer.warmup_steps " +
                     oc["warmup_steps"].dump() + " and outer.final_fraction " + oc["final_fraction"].dump() +
                     ": start afresh (--overwrite) or in another --output-dir");
  const size_t n = log.step.size();
  bool contiguous = n > 0 && log.meta_loss.size() == n && log.grad_norm.size() == n && log.outer_lr.size() == n &&
                    log.elapsed.size() == n && log.inner_steps.size() == n;
  for (size_t i = 0; contiguous && i < n; ++i) contiguous = log.step[i] == static_cast<int64_t>(i + 1);
  if (!contiguous)
    throw UsageError("the meta-training log in " + dir + " does not hold outer steps 1..N with every curve of one length (" +
                     std::to_string(n) + " steps): it cannot be continued; start afresh (--overwrite)");
  if (log.step.back() >= config_["outer_steps"].get<int64_t>())
    throw UsageError(dir + " already holds all " + config_["outer_steps"].dump() + " outer steps: nothing to continue");
  if (theta.numel() != this->theta().numel())
    throw UsageError("theta in " + dir + " has " + std::to_string(theta.numel()) + " numbers, the config's learned optimizer " +
                     std::to_string(this->theta().numel()) + ": it was written by another \"lopt\" config");
  ParamSet p = outer_state_->params;
  p.tensors = {theta.detach().to(this->theta().options()).reshape(this->theta().sizes()).clone()};
  outer_state_ = std::make_unique<OptState>(outer_->init(p));
  step_ = log.step.back();
  elapsed_before_ = log.elapsed.back();
  if (log.continued_at.empty() || log.continued_at.back() != step_) log.continued_at.push_back(step_);
  log_ = std::move(log);
  // Fresh unrolls from the seed and the step: not the tasks the run started with at step 0.
  estimator_->init(this->theta(), derive_seed(config_["seed"].get<uint64_t>(), "unroll") ^ mix_seed(static_cast<uint64_t>(step_)));
}

namespace {
/// Non-finite estimates in a row after which meta-training stops instead of idling.
constexpr int64_t kMaxConsecutiveSkips = 10;
}  // namespace

void MetaTrainer::run(ProgressMode mode, int64_t stop_after) {
  const int64_t total = config_["outer_steps"], every = config_["checkpoint_every"];
  const int64_t end = stop_after >= 0 ? std::min(total, stop_after) : total;
  const double clip = config_["outer"]["clip"];
  const uint64_t seed = config_["seed"];
  Progress progress(end, "meta-train", mode, step_);
  const int64_t first_step = step_;
  const auto t0 = std::chrono::steady_clock::now();
  int64_t inner_total = log_.inner_steps.empty() ? 0 : log_.inner_steps.back();
  int64_t consecutive_skips = 0;
  while (step_ < end) {
    auto out = estimator_->estimate(theta(), mix_seed(derive_seed(seed, "outer") ^ mix_seed(static_cast<uint64_t>(step_))));
    inner_total += out.inner_steps;
    const double gnorm = out.grad.norm().item<double>();
    // Most inner losses non-finite: the normaliser clipped them to its maximum, so the estimate is
    // (close to) an exact zero that says nothing — theta makes inner training diverge. Not applied.
    const bool all_nonfinite = out.inner_steps > 0 && 2 * out.nonfinite >= out.inner_steps;
    const bool finite = std::isfinite(out.loss) && std::isfinite(gnorm) && !all_nonfinite;
    double lr = NAN;
    if (finite) {
      auto g = out.grad;
      if (clip > 0 && gnorm > clip) g = g * (clip / gnorm);
      lr = outer_->lr_at(outer_state_->step, outer_state_->params.info[0]);
      torch::NoGradGuard no_grad;
      outer_->update_(*outer_state_, {g}, torch::tensor(out.loss));
      if (!torch::isfinite(theta()).all().item<bool>())
        throw NumericalError("meta-training stopped at outer step " + std::to_string(step_ + 1) +
                             ": theta became non-finite (lower outer.lr or outer.clip); the last checkpoint, step " +
                             std::to_string(step_ - step_ % config_["checkpoint_every"].get<int64_t>()) +
                             ", is intact and finite");
      consecutive_skips = 0;
    } else {
      if (++consecutive_skips >= kMaxConsecutiveSkips)
        throw NumericalError("meta-training stopped at outer step " + std::to_string(step_ + 1) + ": " +
                             std::to_string(consecutive_skips) + " estimates in a row were non-finite" +
                             (all_nonfinite ? " (most inner training losses were NaN/inf: theta makes the tasks diverge)" : "") +
                             "; lower outer.lr or estimator.std. The last checkpoint is intact.");
      // An outer step without an update: the outer step count (which drives the LR schedule and
      // Adam's bias correction) still advances, so the schedule stays on the logged step.
      ++log_.skipped;
      outer_state_->step += 1;
    }
    ++step_;
    const double elapsed = elapsed_before_ + std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    log_.step.push_back(step_);
    log_.meta_loss.push_back(finite ? out.loss : NAN);
    log_.grad_norm.push_back(gnorm);
    log_.outer_lr.push_back(lr);
    log_.elapsed.push_back(elapsed);
    log_.inner_steps.push_back(inner_total);
    char status[160];
    std::snprintf(status, sizeof status, "meta-loss %.4f  %.0f inner steps/s%s", log_.recent_meta_loss(),
                  static_cast<double>(inner_total) / std::max(1e-9, elapsed),
                  log_.skipped ? (" skipped " + std::to_string(log_.skipped)).c_str() : "");
    progress.update(step_, status);
    if (on_step) on_step(step_);
    int signal = interrupted();
    int64_t signalled_rank = -1;
    if (group_ && group_->world_size() > 1) {
      // A signal to any rank stops every rank after this same step, so their checkpoints agree.
      const auto all = group_->all_gather(torch::tensor({static_cast<int64_t>(signal)}, torch::kInt64), "interrupt check");
      for (int64_t r = 0; r < group_->world_size() && signalled_rank < 0; ++r)
        if (all[r][0].item<int64_t>() != 0) signalled_rank = r, signal = static_cast<int>(all[r][0].item<int64_t>());
    }
    const bool stop = signal != 0;
    const auto& snaps = config_["snapshot_steps"];
    if ((!group_ || group_->rank() == 0) && std::find(snaps.begin(), snaps.end(), step_) != snaps.end()) {
      const auto dir = std::filesystem::path(theta_path()).parent_path() / "snapshots";
      std::filesystem::create_directories(dir);
      step_fn_->learned_optimizer().save((dir / ("theta_step" + std::to_string(step_) + ".safetensors")).string(), theta());
    }
    if (step_ % every == 0 || step_ == end || stop) save_checkpoint();
    if (stop) {
      const std::string next = "checkpoint written at outer step " + std::to_string(step_) + " in " +
                               config_["output_dir"].get<std::string>() +
                               ": continue with the same config and --resume (in place of --continue-from-outputs, if "
                               "this run was started with it)";
      throw_if_interrupted("meta-training", next);
      throw Interrupted(signal, "meta-training stopped because rank " + std::to_string(signalled_rank) + " received " +
                                    signal_name(signal) + "; " + next);
    }
  }
  if (!log_.elapsed.empty()) elapsed_before_ = log_.elapsed.back();
  if (step_ > first_step) progress.finish();  // nothing run (already at the end or past --stop-after): no line
}

}  // namespace lopt
