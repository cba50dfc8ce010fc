#include "meta/truncated_step.h"

#include <ATen/Parallel.h>
#include <ATen/ThreadLocalState.h>
#include <torch/torch.h>

#include <algorithm>
#include <cmath>

#include "common/config.h"
#include "common/errors.h"
#include "common/parallel.h"
#include "common/rng.h"
#include "meta/local_sgd.h"
#include "optimizers/learned_optimizer.h"
#include "optimizers/global_update.h"
#include "tasks/task.h"

namespace lopt {

InnerState InnerState::clone() const {
  InnerState s;
  s.task = task;
  s.task_key = task_key;
  s.inner_step = inner_step;
  s.length = length;
  s.opt.params = opt.params.clone();
  s.opt.step = opt.step;
  for (const auto& [name, v] : opt.slots) {
    auto& out = s.opt.slots[name];
    for (const auto& t : v) out.push_back(t.defined() ? t.detach().clone() : t);
  }
  return s;
}

void InnerState::detach_() {
  for (auto& t : opt.params.tensors) t = t.detach();
  for (auto& [name, v] : opt.slots)
    for (auto& t : v)
      if (t.defined()) t = t.detach();
}

LoptTruncatedStep::LoptTruncatedStep(LoptTruncatedStepConfig config) : config_(std::move(config)) {
  family_ = make_task_family(config_.task_family, "/task_family");
  lopt_ = make_learned_optimizer(config_.lopt, "/lopt");
  trunc_ = make_truncation_schedule(config_.truncation, "/truncation");
  config_check(config_.num_tasks >= 1, "/estimator/num_tasks", "must be >= 1");
}

LoptTruncatedStep::~LoptTruncatedStep() = default;

const Task& LoptTruncatedStep::task(const nlohmann::json& config) const { return *cached(config).task; }

const LoptTruncatedStep::CachedTask& LoptTruncatedStep::cached(const nlohmann::json& config) const {
  return cached(config.dump(), config);
}

const LoptTruncatedStep::CachedTask& LoptTruncatedStep::cached(const InnerState& s) const {
  return s.task_key.empty() ? cached(s.task) : cached(s.task_key, s.task);
}

const LoptTruncatedStep::CachedTask& LoptTruncatedStep::cached(const std::string& key, const nlohmann::json& config) const {
  auto it = tasks_.find(key);
  if (it == tasks_.end()) {
    // References are used within one call of this class's methods, which touches at most
    // num_tasks tasks, far fewer than kTaskCache: the evicted task is not in use.
    if (tasks_.size() >= kTaskCache) {
      auto oldest = tasks_.begin();
      for (auto j = tasks_.begin(); j != tasks_.end(); ++j)
        if (j->second.last_use < oldest->second.last_use) oldest = j;
      tasks_.erase(oldest);
    }
    auto t = make_task(config);
    auto pkey = t->population_key().dump();
    it = tasks_.emplace(key, CachedTask{std::move(t), std::move(pkey), 0}).first;
  }
  it->second.last_use = ++task_uses_;
  return it->second;
}

nlohmann::json LoptTruncatedStep::hyperparams() const {
  nlohmann::json j = {{"type", "lopt_truncated_step"},
          {"task_family", family_->hyperparams()},
          {"lopt", lopt_->hyperparams()},
          {"truncation", trunc_->hyperparams()},
          {"num_tasks", config_.num_tasks},
          {"stagger", config_.stagger},
          {"population", config_.population}};
  if (!config_.local_sgd.is_null()) j["local_sgd"] = config_.local_sgd;
  return j;
}

const Optimizer& LoptTruncatedStep::bound(const torch::Tensor& theta) {
  for (const auto& [t, opt] : bound_)
    if (t.unsafeGetTensorImpl() == theta.unsafeGetTensorImpl() && t._version() == theta._version()) return *opt;
  bound_.emplace_back(theta, lopt_->bind(theta));
  return *bound_.back().second;
}

InnerState LoptTruncatedStep::init_state(const torch::Tensor& theta, int64_t slot, uint64_t seed, bool stagger) const {
  torch::NoGradGuard no_grad;
  auto gen = make_generator(seed);
  InnerState s;
  s.task = family_->sample_for_slot(gen, slot);
  s.task_key = s.task.dump();
  s.opt = lopt_->bind(theta.detach())->init(cached(s).task->init(gen));
  s.length = trunc_->sample_length(gen);
  if (stagger && config_.stagger)
    s.inner_step = torch::randint(0, s.length, {1}, gen, torch::kInt64).item<int64_t>();
  return s;
}

namespace {
uint64_t member_seed(uint64_t seed, const char* what, int64_t task) {
  return mix_seed(derive_seed(seed, what) ^ mix_seed(static_cast<uint64_t>(task) + 1));
}
}  // namespace

std::map<std::string, std::vector<size_t>> LoptTruncatedStep::reset_and_group(const std::vector<torch::Tensor>& thetas,
                                                                              const std::vector<InnerState*>& states,
                                                                              const std::vector<int64_t>& tasks, uint64_t seed,
                                                                              UnrollOut& out, bool by_population_key) {
  const size_t M = states.size();
  TORCH_CHECK(thetas.size() == M && tasks.size() == M, "LoptTruncatedStep::step: thetas, states and tasks differ in size");
  out.done.assign(M, false);
  out.was_reset.assign(M, false);
  // The bound-optimizer cache is pruned only here, before this step takes pointers into it (the
  // population step holds them until every member is bound).
  // Room for two estimates' thetas: pruned when a step's members could not all stay bound, which
  // with a limit below M rebound every member at every step (a 64-member PES estimate spent a
  // quarter of its time binding).
  if (bound_.size() + M > std::max<size_t>(64, 2 * M)) bound_.clear();
  // Resets first: the member skips training this step (masked), as learned_optimization does.
  std::map<std::string, std::vector<size_t>> groups;
  for (size_t m = 0; m < M; ++m) {
    InnerState& s = *states[m];
    if (s.inner_step >= s.length) {
      s = init_state(thetas[m], tasks[m], member_seed(seed, "reset", tasks[m]), false);
      out.was_reset[m] = true;
      continue;
    }
    std::string key = !config_.population ? std::to_string(m)
                      : by_population_key    ? cached(s).population_key
                      : s.task_key.empty()   ? s.task.dump()
                                             : s.task_key;
    groups[key].push_back(m);
  }
  return groups;
}

UnrollOut LoptTruncatedStep::step_local_sgd(const std::vector<torch::Tensor>& thetas, const std::vector<InnerState*>& states,
                                            const std::vector<int64_t>& tasks, uint64_t seed) {
  torch::NoGradGuard no_grad;
  const auto lc = LocalSgdConfig::from_json(config_.local_sgd);
  const size_t M = states.size();
  UnrollOut out;
  const auto groups = reset_and_group(thetas, states, tasks, seed, out, false);
  std::vector<double> loss_value(M, 0.0), mask(M, 0.0);
  std::vector<PopulationMember> population;
  for (const auto& [key, members] : groups) {
    const Task& t = task(states[members.front()]->task);
    config_check(lc.dirichlet_alpha == 0 || t.data()->has_labels(), "/local_sgd/dirichlet_alpha",
                 "label-skewed shards need a labelled (image) dataset");
    // Each task slot's workers draw their batches from the slot's stream (antithetic copies share
    // them); worker w reads shard w of the training split.
    std::map<int64_t, std::vector<std::vector<Batch>>> slot_batches;  // slot -> [H][W]
    std::vector<std::vector<Batch>> per_step(static_cast<size_t>(lc.local_steps));
    std::vector<const ParamSet*> globals;
    for (size_t m : members) {
      auto it = slot_batches.find(tasks[m]);
      if (it == slot_batches.end()) {
        auto gen = make_generator(member_seed(seed, "data", tasks[m]));
        std::vector<std::vector<Batch>> b(static_cast<size_t>(lc.local_steps));
        for (int64_t w = 0; w < lc.workers; ++w)
          for (int64_t h = 0; h < lc.local_steps; ++h)
            b[static_cast<size_t>(h)].push_back(t.sample_batch(Split::train, gen, lc.shard(w)));
        it = slot_batches.emplace(tasks[m], std::move(b)).first;
      }
      for (int64_t h = 0; h < lc.local_steps; ++h)
        for (const auto& b : it->second[static_cast<size_t>(h)]) per_step[static_cast<size_t>(h)].push_back(b);
      globals.push_back(&states[m]->opt.params);
    }
    std::vector<Batch> batches;
    for (const auto& b : per_step) batches.push_back(Batch::stack(b));
    const auto rounds = local_rounds(t, globals, lc.workers, batches, lc);
    std::vector<double> raw;
    for (const auto& r : rounds) raw.push_back(r.loss);
    auto raw_t = torch::tensor(raw, torch::kFloat64);
    out.nonfinite += (~torch::isfinite(raw_t)).sum().item<int64_t>();
    auto norm = t.normalizer(raw_t.to(torch::kFloat32)).to(torch::kFloat64).contiguous();
    for (size_t j = 0; j < members.size(); ++j) {
      const size_t m = members[j];
      InnerState& s = *states[m];
      const Optimizer* opt = &bound(thetas[m]);
      const auto& r = rounds[j];
      // A learned aggregator (LAgg-A) goes through its GlobalUpdate; every other update is a
      // mean-delta step, batched below.
      const auto update = make_global_update(std::shared_ptr<const Optimizer>(opt, [](const Optimizer*) {}));
      if (update->needs_worker_deltas()) {
        TORCH_CHECK(update->workers() == lc.workers, "LAgg-A worker_inputs differs from local_sgd.workers");
        update->apply_(s.opt, r.mean_delta, r.worker_deltas, torch::tensor(r.loss));
      } else {
        population.push_back({opt, &s.opt, r.mean_delta, torch::tensor(r.loss)});
      }
      loss_value[m] = norm.data_ptr<double>()[j];
      mask[m] = 1.0;
      s.inner_step += 1;
      out.done[m] = s.inner_step >= s.length;
    }
  }
  if (!population.empty()) population.front().opt->update_many_(population);
  out.loss = torch::tensor(loss_value, torch::kFloat64);
  out.mask = torch::tensor(mask, torch::kFloat64);
  return out;
}

namespace {
/// The members of one population group split into at most `parts` chunks of whole task slots (an
/// antithetic pair stays together and shares its batch), each chunk in the group's member order.
std::vector<std::vector<size_t>> chunk_by_slot(const std::vector<size_t>& members, const std::vector<int64_t>& tasks,
                                               int64_t parts) {
  std::vector<int64_t> slots;
  for (size_t m : members) slots.push_back(tasks[m]);
  std::sort(slots.begin(), slots.end());
  slots.erase(std::unique(slots.begin(), slots.end()), slots.end());
  const int64_t S = static_cast<int64_t>(slots.size()), n = std::min<int64_t>(parts, S);
  std::vector<std::vector<size_t>> chunks(static_cast<size_t>(std::max<int64_t>(n, 1)));
  for (size_t m : members) {
    const int64_t rank = std::lower_bound(slots.begin(), slots.end(), tasks[m]) - slots.begin();
    chunks[static_cast<size_t>(rank * n / S)].push_back(m);
  }
  return chunks;
}
}  // namespace

UnrollOut LoptTruncatedStep::step(const std::vector<torch::Tensor>& thetas, const std::vector<InnerState*>& states,
                                  const std::vector<int64_t>& tasks, uint64_t seed, bool differentiable) {
  if (!config_.local_sgd.is_null()) {
    TORCH_CHECK(!differentiable, "local-SGD meta-training supports ES / PES estimators, not truncated backprop");
    return step_local_sgd(thetas, states, tasks, seed);
  }
  const size_t M = states.size();
  UnrollOut out;
  std::vector<torch::Tensor> losses(M);  // differentiable path
  std::vector<double> loss_value(M, 0.0), mask(M, 0.0);
  std::vector<uint8_t> done(M, 0);  // written per member from worker threads (vector<bool> is not)
  const auto groups = reset_and_group(thetas, states, tasks, seed, out, true);
  // Every member's task and bound optimizer, looked up here: both caches change on lookup, so the
  // members' work below (possibly on several threads) only reads these.
  std::vector<const Task*> task_of(M, nullptr);
  std::vector<const Optimizer*> opt_of(M, nullptr);
  for (const auto& [key, members] : groups)
    for (size_t m : members) {
      task_of[m] = cached(*states[m]).task.get();
      opt_of[m] = &bound(thetas[m]);
    }

  // One inner step for `members` (all of one population group): their loss and gradients as one
  // stacked computation, then their updates — made here when differentiable, otherwise appended
  // to `population` for one population step.
  const auto run_members = [&](const std::vector<size_t>& members, std::vector<PopulationMember>& population,
                               int64_t& nonfinite) {
    // The group's members share a population key (Task::population_key): they may differ in their
    // data (each draws its batch from its own task) and in a global reparameterisation scale (the
    // loss is the unscaled task's at w * s, the gradient s times that), not in the computation.
    // One member at a time (no population batching) takes its own task, reparameterisation included.
    const Task& first_task = *task_of[members.front()];
    const Task& t = config_.population ? first_task.unscaled() : first_task;
    // One batch per task slot: antithetic copies share it.
    std::map<std::pair<int64_t, const Task*>, Batch> batches;
    std::vector<Batch> member_batches;
    std::vector<double> scales;
    bool rescale = false;
    for (size_t m : members) {
      const Task& tm = *task_of[m];
      scales.push_back(config_.population ? tm.reparam_scale() : 1.0);
      rescale = rescale || scales.back() != 1.0;
      const std::pair<int64_t, const Task*> slot{tasks[m], &tm};
      auto it = batches.find(slot);
      if (it == batches.end()) {
        auto gen = make_generator(member_seed(seed, "data", tasks[m]));
        it = batches.emplace(slot, tm.sample_batch(Split::train, gen)).first;
      }
      member_batches.push_back(it->second);
    }
    const Batch stacked_batch = Batch::stack(member_batches);
    const ParamSet& first = states[members.front()]->opt.params;
    std::vector<torch::Tensor> stacked;
    for (size_t k = 0; k < first.size(); ++k) {
      std::vector<torch::Tensor> parts;
      for (size_t m : members) parts.push_back(states[m]->opt.params.tensors[k]);
      auto st = torch::stack(parts);
      // Truncated backprop: a state without autograd history (fresh, or after detach) becomes a
      // leaf, as the inner gradient needs one. Otherwise plain tensors (the task computes grads).
      if (differentiable) stacked.push_back(st.requires_grad() ? st : st.detach().requires_grad_(true));
      else stacked.push_back(st.detach());
    }
    // Each member's scale as a float tensor [P, 1, ...] per parameter tensor (float32 times a
    // double scalar rounds the scalar to float32 too: the same products as one member at a time).
    std::vector<torch::Tensor> scale_views;
    if (rescale) {
      const auto sv = torch::tensor(scales, torch::kFloat64);
      for (const auto& st : stacked) {
        std::vector<int64_t> shape(static_cast<size_t>(st.dim()), 1);
        shape[0] = st.size(0);
        scale_views.push_back(sv.to(st.options().requires_grad(false)).view(shape));
      }
    }
    // The parameters the loss is evaluated at (w * s); called under the grad mode of its branch.
    const auto scaled_params = [&] {
      std::vector<torch::Tensor> at = stacked;
      for (size_t k = 0; k < scale_views.size(); ++k) at[k] = stacked[k] * scale_views[k];
      return at;
    };
    torch::Tensor group_loss;
    std::vector<torch::Tensor> grads;
    if (differentiable) {
      torch::AutoGradMode enable_grad(true);  // estimators run under NoGradGuard; the inner gradient needs autograd
      group_loss = t.population_loss(first.with_tensors(scaled_params()), stacked_batch);
      grads = torch::autograd::grad({group_loss.sum()}, stacked, {}, true, true);
    } else {
      group_loss = parallel_population_loss_and_grads(t, first, scaled_params(), stacked_batch, &grads);
      for (size_t k = 0; k < scale_views.size(); ++k) grads[k].mul_(scale_views[k]);
    }
    nonfinite += (~torch::isfinite(group_loss.detach())).sum().item<int64_t>();
    auto norm_loss = t.normalizer(differentiable ? group_loss : group_loss.detach());
    std::vector<double> norm_value;
    if (!differentiable) {
      auto nv = norm_loss.to(torch::kFloat64).contiguous();
      norm_value.assign(nv.data_ptr<double>(), nv.data_ptr<double>() + nv.numel());
    }
    for (size_t j = 0; j < members.size(); ++j) {
      const size_t m = members[j];
      InnerState& s = *states[m];
      std::vector<torch::Tensor> g;
      for (auto& gk : grads) g.push_back(gk[static_cast<int64_t>(j)]);
      const Optimizer* opt = opt_of[m];
      if (differentiable) {
        s.opt = opt->update(s.opt, g, group_loss[static_cast<int64_t>(j)]);
      } else {
        for (auto& gk : g) gk = gk.detach();
        population.push_back({opt, &s.opt, std::move(g), group_loss[static_cast<int64_t>(j)].detach()});
      }
      losses[m] = differentiable ? norm_loss[static_cast<int64_t>(j)] : torch::Tensor();
      if (!differentiable) loss_value[m] = norm_value[j];
      mask[m] = 1.0;
      s.inner_step += 1;
      done[m] = s.inner_step >= s.length;
    }
  };

  const int64_t threads = at::get_num_threads();
  // CPU only: on a GPU the kernels of one stream run in turn whatever the number of host threads.
  const bool on_cpu = M > 0 && !states.front()->opt.params.tensors.empty() && states.front()->opt.params.tensors.front().is_cpu();
  if (!differentiable && config_.population && on_cpu && threads > 1 && !at::in_parallel_region()) {
    // Several threads: each takes whole task slots of a group and runs their step end to end —
    // loss, gradients and the population update — so the bookkeeping around the arithmetic runs
    // in parallel too. Every member's arithmetic is the one it gets on one thread.
    std::vector<std::vector<size_t>> chunks;
    for (const auto& [key, members] : groups)
      for (auto& c : chunk_by_slot(members, tasks, threads))
        if (!c.empty()) chunks.push_back(std::move(c));
    std::vector<int64_t> chunk_nonfinite(chunks.size(), 0);
    const at::ThreadLocalState tls;  // grad mode and the rest of this thread's state, for the workers
    parallel_items(static_cast<int64_t>(chunks.size()), [&](int64_t c) {
      at::ThreadLocalStateGuard guard(tls);
      std::vector<PopulationMember> population;
      run_members(chunks[static_cast<size_t>(c)], population, chunk_nonfinite[static_cast<size_t>(c)]);
      torch::NoGradGuard no_grad;
      population.front().opt->update_many_(population);
    });
    for (int64_t n : chunk_nonfinite) out.nonfinite += n;
  } else {
    // The inner updates: differentiable one member at a time, otherwise collected so that every
    // member of every group (each with its own theta) takes one population step below.
    std::vector<PopulationMember> population;
    for (const auto& [key, members] : groups) run_members(members, population, out.nonfinite);
    if (!population.empty()) {
      torch::NoGradGuard no_grad;
      population.front().opt->update_many_(population);
    }
  }
  for (size_t m = 0; m < M; ++m) out.done[m] = done[m] != 0;
  if (differentiable) {
    auto zero = torch::zeros({}, torch::kFloat32);
    for (auto& l : losses)
      if (!l.defined()) l = zero;
    out.loss = torch::stack(losses).to(torch::kFloat64);
  } else {
    out.loss = torch::tensor(loss_value, torch::kFloat64);
  }
  out.mask = torch::tensor(mask, torch::kFloat64);
  return out;
}

nlohmann::json save_inner_states(const std::vector<InnerState>& states, const std::string& prefix, SafeTensors& out) {
  nlohmann::json all = nlohmann::json::array();
  for (size_t i = 0; i < states.size(); ++i) {
    const InnerState& s = states[i];
    const std::string base = prefix + "." + std::to_string(i) + ".";
    nlohmann::json j = {{"task", s.task}, {"inner_step", s.inner_step}, {"length", s.length}, {"opt_step", s.opt.step}};
    nlohmann::json info = nlohmann::json::array();
    for (size_t k = 0; k < s.opt.params.size(); ++k) {
      const auto& pi = s.opt.params.info[k];
      info.push_back({{"name", pi.name}, {"role", to_string(pi.role)}, {"fan_in", pi.fan_in}, {"fan_out", pi.fan_out},
                      {"width_mult", pi.width_mult}});
      out.tensors[base + "p" + std::to_string(k)] = s.opt.params.tensors[k];
    }
    j["info"] = info;
    nlohmann::json slots = nlohmann::json::object();
    for (const auto& [name, v] : s.opt.slots) {
      std::vector<bool> defined;
      for (size_t k = 0; k < v.size(); ++k) {
        defined.push_back(v[k].defined());
        if (v[k].defined()) out.tensors[base + "s." + name + "." + std::to_string(k)] = v[k];
      }
      slots[name] = defined;
    }
    j["slots"] = slots;
    all.push_back(j);
  }
  return all;
}

std::vector<InnerState> load_inner_states(const nlohmann::json& meta, const std::string& prefix, const SafeTensors& in,
                                          const std::string& file) {
  auto get = [&](const std::string& name) {
    auto it = in.tensors.find(name);
    if (it == in.tensors.end()) throw IoError(file, "checkpoint lacks tensor '" + name + "'", "the file is not a complete lopt meta-training checkpoint");
    return it->second;
  };
  std::vector<InnerState> states;
  for (size_t i = 0; i < meta.size(); ++i) {
    const auto& j = meta[i];
    const std::string base = prefix + "." + std::to_string(i) + ".";
    InnerState s;
    s.task = j["task"];
    s.task_key = s.task.dump();
    s.inner_step = j["inner_step"];
    s.length = j["length"];
    s.opt.step = j["opt_step"];
    for (size_t k = 0; k < j["info"].size(); ++k) {
      const auto& pj = j["info"][k];
      ParamInfo pi;
      pi.name = pj["name"];
      pi.role = param_role_from_string(pj["role"]);
      pi.fan_in = pj["fan_in"];
      pi.fan_out = pj["fan_out"];
      pi.width_mult = pj["width_mult"];
      s.opt.params.info.push_back(pi);
      s.opt.params.tensors.push_back(get(base + "p" + std::to_string(k)));
    }
    for (auto it = j["slots"].begin(); it != j["slots"].end(); ++it) {
      auto& v = s.opt.slots[it.key()];
      for (size_t k = 0; k < it.value().size(); ++k)
        v.push_back(it.value()[k].get<bool>() ? get(base + "s." + it.key() + "." + std::to_string(k)) : torch::Tensor());
    }
    states.push_back(std::move(s));
  }
  return states;
}

}  // namespace lopt
