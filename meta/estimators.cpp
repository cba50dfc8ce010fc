#include "meta/estimators.h"

#include <torch/torch.h>

#include "common/config.h"
#include "common/distributed.h"
#include "common/errors.h"
#include "common/registry.h"
#include "common/rng.h"

namespace lopt {

NamedRegistry<EstimatorFactory>& estimator_registry();

EstimatorConfig EstimatorConfig::from_json(const nlohmann::json& j, const std::string& path) {
  config_check(j.is_object(), path, "must be an object like {\"type\": \"pes\", \"std\": 0.01, \"trunc_length\": 50}");
  ConfigReader r(j, path);
  EstimatorConfig c;
  c.type = r.get<std::string>("type", c.type);
  c.std = r.get<double>("std", c.std);
  c.trunc_length = r.get<int64_t>("trunc_length", c.trunc_length);
  c.num_tasks = r.get<int64_t>("num_tasks", c.num_tasks);
  c.stagger = r.get<bool>("stagger", c.stagger);
  c.population = r.get<bool>("population", c.population);
  r.finish();
  estimator_registry().get(c.type, r.path_of("type"));  // a registered type
  config_check(c.std > 0, r.path_of("std"), "must be > 0 (perturbation standard deviation, e.g. 0.01)");
  config_check(c.trunc_length >= 1, r.path_of("trunc_length"), "must be >= 1");
  config_check(c.num_tasks >= 1, r.path_of("num_tasks"), "must be >= 1");
  return c;
}

nlohmann::json EstimatorConfig::to_json() const {
  return {{"type", type}, {"std", std}, {"trunc_length", trunc_length}, {"num_tasks", num_tasks},
          {"stagger", stagger}, {"population", population}};
}

torch::Tensor GradientEstimator::sample_perturbations(const torch::Tensor& theta, int64_t n, uint64_t seed) const {
  auto gen = make_generator(derive_seed(seed, "perturb"));
  return torch::randn({n, theta.numel()}, gen, theta.options().requires_grad(false)).mul_(config_.std);
}

uint64_t GradientEstimator::step_seed(uint64_t seed, int64_t j) {
  return mix_seed(derive_seed(seed, "step") ^ mix_seed(static_cast<uint64_t>(j)));
}

void GradientEstimator::set_process_group(ProcessGroup* group) {
  if (group != nullptr && group->world_size() > step_.num_tasks())
    throw UsageError("WORLD_SIZE " + std::to_string(group->world_size()) + " exceeds estimator.num_tasks " +
                     std::to_string(step_.num_tasks()) + ": every rank needs at least one task slot");
  group_ = group;
}

std::vector<int64_t> GradientEstimator::owned_slots() const {
  const int64_t rank = group_ ? group_->rank() : 0, world = group_ ? group_->world_size() : 1;
  std::vector<int64_t> slots;
  for (int64_t i = rank; i < step_.num_tasks(); i += world) slots.push_back(i);
  return slots;
}

std::vector<InnerState> GradientEstimator::fresh_states(const torch::Tensor& theta, uint64_t seed) const {
  std::vector<InnerState> s;
  for (int64_t i : owned_slots())
    s.push_back(step_.init_state(theta, i, mix_seed(derive_seed(seed, "init") ^ mix_seed(static_cast<uint64_t>(i))), config_.stagger));
  return s;
}

void GradientEstimator::finish_estimate(EstimateOut& res, const torch::Tensor& theta) const {
  if (group_ != nullptr) {
    std::vector<torch::Tensor> buf = {res.grad.to(torch::kFloat64).reshape({-1}).contiguous(),
                                      torch::tensor({res.loss, static_cast<double>(res.inner_steps),
                                                     static_cast<double>(res.resets), static_cast<double>(res.nonfinite)},
                                                    torch::kFloat64)};
    group_->all_reduce_sum_(buf, "meta-gradient estimate (all-reduce)");
    res.grad = buf[0];
    auto c = buf[1].contiguous();
    res.loss = c.data_ptr<double>()[0];
    res.inner_steps = std::llround(c.data_ptr<double>()[1]);
    res.resets = std::llround(c.data_ptr<double>()[2]);
    res.nonfinite = std::llround(c.data_ptr<double>()[3]);
  }
  res.grad = res.grad.to(theta.scalar_type()).view(theta.sizes());
}

void TruncatedBackprop::set_process_group(ProcessGroup* group) {
  if (group != nullptr) throw UsageError("estimator truncated_backprop runs in one process; multi-process meta-training supports pes and truncated_es");
}
void FullES::set_process_group(ProcessGroup* group) {
  if (group != nullptr) throw UsageError("estimator full_es runs in one process; multi-process meta-training supports pes and truncated_es");
}

namespace {

/// Per-member running sums of the masked loss over a truncation.
struct Sums {
  std::vector<double> loss, count;
  explicit Sums(size_t m) : loss(m, 0.0), count(m, 0.0) {}
  /// Adds one step's output; row r of `out` belongs to member members[r] (or r without a map).
  void add(const UnrollOut& out, const std::vector<size_t>* members = nullptr) {
    auto l = out.loss.detach().to(torch::kFloat64).contiguous(), k = out.mask.to(torch::kFloat64).contiguous();
    for (int64_t r = 0; r < l.numel(); ++r) {
      const size_t i = members ? (*members)[r] : static_cast<size_t>(r);
      loss[i] += l.data_ptr<double>()[r] * k.data_ptr<double>()[r];
      count[i] += k.data_ptr<double>()[r];
    }
  }
  double mean(size_t i) const { return count[i] > 0 ? loss[i] / count[i] : 0.0; }
};

/// Counts a step's resets and trained members (resets excluded) into `res`.
void count_step(const UnrollOut& out, EstimateOut& res) {
  int64_t resets = 0;
  for (bool r : out.was_reset) resets += r ? 1 : 0;
  res.resets += resets;
  res.inner_steps += static_cast<int64_t>(out.was_reset.size()) - resets;
  res.nonfinite += out.nonfinite;
}

/// Antithetic thetas: rows 0..N-1 positive, N..2N-1 negative.
std::vector<torch::Tensor> antithetic(const torch::Tensor& theta, const torch::Tensor& eps) {
  std::vector<torch::Tensor> out;
  auto flat = theta.detach().reshape({-1});
  for (int64_t i = 0; i < eps.size(0); ++i) out.push_back((flat + eps[i]).view(theta.sizes()));
  for (int64_t i = 0; i < eps.size(0); ++i) out.push_back((flat - eps[i]).view(theta.sizes()));
  return out;
}

/// Antithetic ES from the mean losses of members 0..n-1 (theta + eps_i) and n..2n-1 (theta - eps_i),
/// the n slots of this rank out of `total`: grad = sum_i (L+_i - L-_i) eps_i / (2 std^2 total) (flat,
/// float64), loss = sum of both signs' means / (2 total). Summed over the ranks, the means over all slots.
void antithetic_estimate(const Sums& sums, const torch::Tensor& eps, int64_t total, double std, EstimateOut& res) {
  const int64_t n = eps.size(0);
  std::vector<double> c(n);
  for (int64_t i = 0; i < n; ++i) {
    c[i] = (sums.mean(i) - sums.mean(n + i)) / (2 * std * std * static_cast<double>(total));
    res.loss += 0.5 * (sums.mean(i) + sums.mean(n + i)) / static_cast<double>(total);
  }
  res.grad = (torch::tensor(c, torch::kFloat64).unsqueeze(1) * eps.to(torch::kFloat64)).sum(0);
}

/// Rows `slots` of the perturbations drawn for all `total` slots (so every rank sees the same eps_i).
torch::Tensor slot_rows(const torch::Tensor& eps, const std::vector<int64_t>& slots) {
  return eps.index_select(0, torch::tensor(slots, torch::kInt64));
}

std::vector<int64_t> twice(const std::vector<int64_t>& slots) {
  std::vector<int64_t> t = slots;
  t.insert(t.end(), slots.begin(), slots.end());
  return t;
}

void require_states(bool ok, const char* who) {
  if (!ok) throw std::logic_error(std::string(who) + ": estimate() called before init() or load()");
}

}  // namespace

// ---- truncated ES ---------------------------------------------------------------------------

void TruncatedES::init(const torch::Tensor& theta, uint64_t seed) { states_ = fresh_states(theta, seed); }

EstimateOut TruncatedES::estimate(const torch::Tensor& theta, uint64_t seed) {
  require_states(!states_.empty(), "TruncatedES");
  const auto slots = owned_slots();
  const int64_t N = static_cast<int64_t>(states_.size());
  torch::NoGradGuard no_grad;
  auto eps = slot_rows(sample_perturbations(theta, step_.num_tasks(), seed), slots);
  std::vector<InnerState> neg;
  for (const auto& s : states_) neg.push_back(s.clone());
  std::vector<InnerState*> ptrs;
  for (auto& s : states_) ptrs.push_back(&s);
  for (auto& s : neg) ptrs.push_back(&s);
  auto thetas = antithetic(theta, eps);
  auto tasks = twice(slots);
  Sums sums(2 * N);
  EstimateOut res;
  for (int64_t j = 0; j < config_.trunc_length; ++j) {
    auto out = step_.step(thetas, ptrs, tasks, step_seed(seed, j), false);
    sums.add(out);
    count_step(out, res);
  }
  antithetic_estimate(sums, eps, step_.num_tasks(), config_.std, res);
  finish_estimate(res, theta);
  return res;
}

nlohmann::json TruncatedES::save(SafeTensors& out) const { return {{"states", save_inner_states(states_, "es", out)}}; }
void TruncatedES::load(const nlohmann::json& meta, const SafeTensors& in, const std::string& file) {
  states_ = load_inner_states(meta.at("states"), "es", in, file);
}

// ---- PES ------------------------------------------------------------------------------------

void TruncatedPES::init(const torch::Tensor& theta, uint64_t seed) {
  pos_ = fresh_states(theta, seed);
  neg_.clear();
  for (const auto& s : pos_) neg_.push_back(s.clone());
  accum_ = torch::zeros({static_cast<int64_t>(pos_.size()), theta.numel()}, theta.options().requires_grad(false));
}

EstimateOut TruncatedPES::estimate(const torch::Tensor& theta, uint64_t seed) {
  require_states(!pos_.empty(), "TruncatedPES");
  const auto slots = owned_slots();
  const int64_t N = static_cast<int64_t>(pos_.size()), total = step_.num_tasks();
  torch::NoGradGuard no_grad;
  auto eps = slot_rows(sample_perturbations(theta, total, seed), slots);
  std::vector<InnerState*> ptrs;
  for (auto& s : pos_) ptrs.push_back(&s);
  for (auto& s : neg_) ptrs.push_back(&s);
  auto thetas = antithetic(theta, eps);
  auto tasks = twice(slots);
  std::vector<double> before(N, 0.0), after(N, 0.0), count(N, 0.0), pos_sum(N, 0.0), neg_sum(N, 0.0);
  std::vector<bool> reset(N, false);
  EstimateOut res;
  for (int64_t j = 0; j < config_.trunc_length; ++j) {
    auto out = step_.step(thetas, ptrs, tasks, step_seed(seed, j), false);
    count_step(out, res);
    auto l = out.loss.detach().to(torch::kFloat64).contiguous(), k = out.mask.to(torch::kFloat64).contiguous();
    const double* lp = l.data_ptr<double>();
    const double* kp = k.data_ptr<double>();
    for (int64_t i = 0; i < N; ++i) {
      if (out.was_reset[i]) reset[i] = true;
      const double d = (lp[i] - lp[N + i]) * kp[i];
      (reset[i] ? after[i] : before[i]) += d;
      count[i] += kp[i];
      pos_sum[i] += lp[i] * kp[i];
      neg_sum[i] += lp[N + i] * kp[N + i];
    }
  }
  auto e64 = eps.to(torch::kFloat64), a64 = accum_.to(torch::kFloat64);
  auto grad = torch::zeros({theta.numel()}, torch::kFloat64);
  for (int64_t i = 0; i < N; ++i) {
    if (count[i] > 0) {
      const double s = 1.0 / (count[i] * 2 * config_.std * config_.std * static_cast<double>(total));
      grad += (a64[i] + e64[i]) * (before[i] * s) + e64[i] * (after[i] * s);
      res.loss += 0.5 * (pos_sum[i] + neg_sum[i]) / count[i] / static_cast<double>(total);
    }
    accum_[i].copy_(reset[i] ? eps[i] : accum_[i] + eps[i]);
  }
  res.grad = grad;
  finish_estimate(res, theta);
  return res;
}

nlohmann::json TruncatedPES::save(SafeTensors& out) const {
  out.tensors["pes.accumulator"] = accum_;
  return {{"pos", save_inner_states(pos_, "pes_pos", out)}, {"neg", save_inner_states(neg_, "pes_neg", out)}};
}
void TruncatedPES::load(const nlohmann::json& meta, const SafeTensors& in, const std::string& file) {
  pos_ = load_inner_states(meta.at("pos"), "pes_pos", in, file);
  neg_ = load_inner_states(meta.at("neg"), "pes_neg", in, file);
  auto it = in.tensors.find("pes.accumulator");
  if (it == in.tensors.end()) throw IoError(file, "checkpoint lacks tensor 'pes.accumulator'", "the file is not a complete PES checkpoint");
  accum_ = it->second;
}

// ---- truncated backprop ---------------------------------------------------------------------

void TruncatedBackprop::init(const torch::Tensor& theta, uint64_t seed) { states_ = fresh_states(theta, seed); }

EstimateOut TruncatedBackprop::estimate(const torch::Tensor& theta, uint64_t seed) {
  require_states(!states_.empty(), "TruncatedBackprop");
  const int64_t N = static_cast<int64_t>(states_.size());
  auto th = theta.detach().clone().requires_grad_(true);
  std::vector<torch::Tensor> thetas(N, th);
  std::vector<InnerState*> ptrs;
  for (auto& s : states_) ptrs.push_back(&s);
  std::vector<int64_t> tasks;
  for (int64_t i = 0; i < N; ++i) tasks.push_back(i);
  auto loss_sum = torch::zeros({N}, torch::kFloat64);
  auto count = torch::zeros({N}, torch::kFloat64);
  EstimateOut res;
  for (int64_t j = 0; j < config_.trunc_length; ++j) {
    auto out = step_.step(thetas, ptrs, tasks, step_seed(seed, j), true);
    loss_sum = loss_sum + out.loss * out.mask;
    count = count + out.mask;
    count_step(out, res);
  }
  auto meta = (loss_sum / count.clamp_min(1.0)).mean();
  res.loss = meta.item<double>();
  if (meta.requires_grad())
    res.grad = torch::autograd::grad({meta}, {th}, {}, false, false, true)[0];
  if (!res.grad.defined()) res.grad = torch::zeros_like(theta);
  res.grad = res.grad.detach().to(theta.scalar_type());
  for (auto& s : states_) s.detach_();
  return res;
}

nlohmann::json TruncatedBackprop::save(SafeTensors& out) const { return {{"states", save_inner_states(states_, "tbptt", out)}}; }
void TruncatedBackprop::load(const nlohmann::json& meta, const SafeTensors& in, const std::string& file) {
  states_ = load_inner_states(meta.at("states"), "tbptt", in, file);
}

// ---- full-horizon ES ------------------------------------------------------------------------

EstimateOut FullES::estimate(const torch::Tensor& theta, uint64_t seed) {
  torch::NoGradGuard no_grad;
  const int64_t N = step_.num_tasks();
  auto eps = sample_perturbations(theta, N, seed);
  std::vector<InnerState> members;
  for (int64_t i = 0; i < N; ++i)
    members.push_back(step_.init_state(theta, i, mix_seed(derive_seed(seed, "task") ^ mix_seed(static_cast<uint64_t>(i))), false));
  for (int64_t i = 0; i < N; ++i) members.push_back(members[i].clone());
  auto all_thetas = antithetic(theta, eps);
  auto all_tasks = twice(owned_slots());  // every slot: full ES runs in one process
  std::vector<size_t> running;
  for (size_t m = 0; m < members.size(); ++m) running.push_back(m);
  Sums sums(2 * N);
  EstimateOut res;
  for (int64_t j = 0; !running.empty(); ++j) {
    std::vector<torch::Tensor> thetas;
    std::vector<InnerState*> ptrs;
    std::vector<int64_t> tasks;
    for (size_t m : running) {
      thetas.push_back(all_thetas[m]);
      ptrs.push_back(&members[m]);
      tasks.push_back(all_tasks[m]);
    }
    auto out = step_.step(thetas, ptrs, tasks, step_seed(seed, j), false);
    count_step(out, res);
    sums.add(out, &running);
    std::vector<size_t> still;
    for (size_t r = 0; r < running.size(); ++r)
      if (!out.done[r]) still.push_back(running[r]);
    running = still;
  }
  antithetic_estimate(sums, eps, N, config_.std, res);
  finish_estimate(res, theta);
  return res;
}

std::unique_ptr<GradientEstimator> make_gradient_estimator(const EstimatorConfig& config, TruncatedStep& step) {
  return estimator_registry().get(config.type, "/estimator/type")(step, config);
}

void register_estimator_type(const std::string& type, EstimatorFactory f) { estimator_registry().add(type, std::move(f)); }

std::vector<std::string> estimator_types() { return estimator_registry().names(); }

namespace {
template <class E>
EstimatorFactory factory() {
  return [](TruncatedStep& step, const EstimatorConfig& config) -> std::unique_ptr<GradientEstimator> {
    return std::make_unique<E>(step, config);
  };
}
}  // namespace

NamedRegistry<EstimatorFactory>& estimator_registry() {
  static NamedRegistry<EstimatorFactory> r("estimator", [] {
    register_estimator_type("pes", factory<TruncatedPES>());
    register_estimator_type("truncated_es", factory<TruncatedES>());
    register_estimator_type("truncated_backprop", factory<TruncatedBackprop>());
    register_estimator_type("full_es", factory<FullES>());
  });
  return r;
}

}  // namespace lopt
