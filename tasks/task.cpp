#include "tasks/task.h"

#include <torch/torch.h>

#include <ATen/Parallel.h>

#include <cmath>
#include <mutex>

#include "common/config.h"
#include "common/errors.h"
#include "common/parallel.h"
#include "common/registry.h"

namespace lopt {

void register_builtin_tasks();  // tasks/builtin_tasks.cpp

torch::Tensor parallel_population_loss_and_grads(const Task& t, const ParamSet& like, const std::vector<torch::Tensor>& stacked,
                                                 const Batch& batch, std::vector<torch::Tensor>* grads) {
  const int64_t P = stacked.front().size(0);
  // Inside a parallel region (e.g. one thread's share of a population step) the work stays whole.
  const int64_t T = at::in_parallel_region() ? 1 : std::min<int64_t>(at::get_num_threads(), P);
  if (T <= 1) return t.population_loss_and_grads(like.with_tensors(stacked), batch, grads);
  std::vector<torch::Tensor> losses(static_cast<size_t>(T));
  std::vector<std::vector<torch::Tensor>> parts(static_cast<size_t>(T));
  parallel_items(T, [&](int64_t c) {
    const int64_t b = c * P / T, n = (c + 1) * P / T - b;
    std::vector<torch::Tensor> slice;
    for (const auto& s : stacked) slice.push_back(s.narrow(0, b, n));
    losses[static_cast<size_t>(c)] =
        t.population_loss_and_grads(like.with_tensors(slice), batch.slice(b, b + n), &parts[static_cast<size_t>(c)]);
  });
  grads->clear();
  for (size_t k = 0; k < stacked.size(); ++k) {
    std::vector<torch::Tensor> g;
    for (const auto& p : parts) g.push_back(p[k]);
    grads->push_back(torch::cat(g));
  }
  return torch::cat(losses);
}


torch::Tensor Task::population_loss(const ParamSet& stacked, const Batch& batch) const {
  std::vector<torch::Tensor> losses;
  const int64_t P = batch.tensors.begin()->second.size(0);
  for (int64_t p = 0; p < P; ++p) {
    std::vector<torch::Tensor> member;
    for (const auto& t : stacked.tensors) member.push_back(t[p]);
    losses.push_back(loss(stacked.with_tensors(member), batch.member(p)));
  }
  return torch::stack(losses);
}

torch::Tensor Task::population_loss_and_grads(const ParamSet& stacked, const Batch& batch,
                                              std::vector<torch::Tensor>* grads) const {
  torch::AutoGradMode enable_grad(true);
  std::vector<torch::Tensor> leaves;
  for (const auto& t : stacked.tensors) leaves.push_back(t.detach().requires_grad_(true));
  auto loss = population_loss(stacked.with_tensors(leaves), batch);
  *grads = torch::autograd::grad({loss.sum()}, leaves);
  return loss.detach();
}

std::map<std::string, double> Task::evaluate(const ParamSet& params, Split split, int64_t max_examples) const {
  torch::NoGradGuard no_grad;
  const auto source = data();
  const int64_t total = source->num_examples(split);
  const int64_t n = max_examples > 0 ? std::min<int64_t>(max_examples, total) : total;
  TORCH_CHECK(n > 0, "Task::evaluate: the ", to_string(split), " split is empty");
  std::map<std::string, double> sums;
  for (int64_t i = 0; i < n; i += eval_chunk()) {
    const int64_t e = std::min(n, i + eval_chunk());
    auto out = loss_and_metrics(params, source->examples(split, i, e));
    for (const auto& [k, v] : out.metrics) sums[k] += v.item<double>() * static_cast<double>(e - i);
  }
  for (auto& [k, v] : sums) v /= static_cast<double>(n);
  return sums;
}

torch::Tensor normalize_classifier_loss(const torch::Tensor& loss, int64_t num_classes) {
  const double max = 1.5 * std::log(static_cast<double>(num_classes));
  return torch::nan_to_num(loss, max, max, max).clamp(0.0, max);
}

// ------------------------------------------------------------------ registries

namespace {
NamedRegistry<TaskType>& task_registry() {
  static NamedRegistry<TaskType> r("task type", [] { register_builtin_tasks(); });
  return r;
}
NamedRegistry<TaskFamilyFactory>& family_registry() {
  // The builtins file registers both tables; whichever is used first runs it (add() never waits).
  static NamedRegistry<TaskFamilyFactory> r("task family type", [] { task_registry().names(); });
  return r;
}

std::string type_of(const nlohmann::json& config, const std::string& path, const std::string& fallback) {
  if (!config.is_object() || !config.contains("type")) return fallback;
  if (!config.at("type").is_string()) throw ConfigError(path + "/type", "must be a string");
  return config.at("type").get<std::string>();
}

TaskType task_type(const nlohmann::json& config, const std::string& path) {
  return task_registry().get(type_of(config, path, "mlp"), path + "/type");
}
}  // namespace

void register_task_type(const std::string& type, TaskType t) { task_registry().add(type, std::move(t)); }

void register_task_family_type(const std::string& type, TaskFamilyFactory f) { family_registry().add(type, std::move(f)); }

std::vector<std::string> task_types() { return task_registry().names(); }

std::vector<std::string> task_family_types() { return family_registry().names(); }

namespace {

/// Global reparameterisation (the Celo2 recipe's task augmentation, after learned_optimization's
/// `ReparamWeights`): the optimizer sees w, the task is evaluated at w * s, and w starts at w0 / s.
/// Gradients with respect to w are s times those at w * s, so one scale s moves every gradient and
/// every parameter by a factor s in opposite directions; a learned optimizer must be invariant to it.
class ReparamTask : public Task {
 public:
  ReparamTask(std::unique_ptr<Task> inner, double scale) : inner_(std::move(inner)), scale_(scale) {}
  ParamSet init(at::Generator& gen) const override {
    ParamSet p = inner_->init(gen);
    for (auto& t : p.tensors) t = t / scale_;
    return p;
  }
  std::shared_ptr<const DataSource> data() const override { return inner_->data(); }
  int64_t batch_size() const override { return inner_->batch_size(); }
  LossAndMetrics loss_and_metrics(const ParamSet& params, const Batch& batch,
                                  std::vector<torch::Tensor>* activations = nullptr) const override {
    return inner_->loss_and_metrics(scaled(params), batch, activations);
  }
  std::vector<std::string> activation_names() const override { return inner_->activation_names(); }
  torch::Tensor normalizer(const torch::Tensor& loss) const override { return inner_->normalizer(loss); }
  torch::Tensor population_loss(const ParamSet& stacked, const Batch& batch) const override {
    return inner_->population_loss(scaled(stacked), batch);
  }
  torch::Tensor population_loss_and_grads(const ParamSet& stacked, const Batch& batch,
                                          std::vector<torch::Tensor>* grads) const override {
    auto loss = inner_->population_loss_and_grads(scaled(stacked), batch, grads);
    if (grads)
      for (auto& g : *grads) g = g * scale_;
    return loss;
  }
  std::string report_metric() const override { return inner_->report_metric(); }
  std::map<std::string, double> evaluate(const ParamSet& params, Split split, int64_t max_examples = 0) const override {
    return inner_->evaluate(scaled(params), split, max_examples);
  }
  nlohmann::json hyperparams() const override {
    auto j = inner_->hyperparams();
    j["reparam_scale"] = scale_;
    return j;
  }
  nlohmann::json population_key() const override { return inner_->population_key(); }
  double reparam_scale() const override { return scale_; }
  const Task& unscaled() const override { return *inner_; }

 private:
  ParamSet scaled(const ParamSet& p) const {
    ParamSet out = p;
    for (auto& t : out.tensors) t = t * scale_;
    return out;
  }
  std::unique_ptr<Task> inner_;
  double scale_;
};

/// The config without "reparam_scale", and the scale (1 when absent), checked.
std::pair<nlohmann::json, double> split_reparam(const nlohmann::json& config, const std::string& path) {
  if (!config.is_object() || !config.contains("reparam_scale")) return {config, 1.0};
  const auto& v = config.at("reparam_scale");
  config_check(v.is_number(), path + "/reparam_scale", "must be a number (the global reparameterisation scale s > 0)");
  const double s = v.get<double>();
  config_check(std::isfinite(s) && s > 0, path + "/reparam_scale", "must be finite and > 0, got " + v.dump());
  auto inner = config;
  inner.erase("reparam_scale");
  return {inner, s};
}

}  // namespace

nlohmann::json resolve_task_config(const nlohmann::json& config, const std::string& path) {
  const auto [inner, scale] = split_reparam(config, path);
  auto resolved = task_type(inner, path).resolve(inner, path);
  if (config.is_object() && config.contains("reparam_scale")) resolved["reparam_scale"] = scale;
  return resolved;
}

std::unique_ptr<Task> make_task(const nlohmann::json& config, const std::string& path) {
  const auto [inner, scale] = split_reparam(config, path);
  const auto t = task_type(inner, path);
  auto task = t.make(t.resolve(inner, path));
  if (config.is_object() && config.contains("reparam_scale"))
    return std::make_unique<ReparamTask>(std::move(task), scale);
  return task;
}

std::unique_ptr<TaskFamily> make_task_family(const nlohmann::json& config, const std::string& path) {
  return family_registry().get(type_of(config, path, "mlp_family"), path + "/type")(config, path);
}

}  // namespace lopt
