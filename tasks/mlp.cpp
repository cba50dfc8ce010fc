#include "tasks/mlp.h"

#include "common/device.h"

#include <torch/torch.h>

#include <algorithm>
#include <cmath>

#include "common/config.h"

namespace lopt {

MlpConfig MlpConfig::from_json(const nlohmann::json& j, const std::string& path) {
  ConfigReader r(j, path);
  auto type = r.get<std::string>("type", "mlp");
  config_check(type == "mlp", r.path_of("type"), "expected \"mlp\", got \"" + type + "\"");
  MlpConfig c;
  c.width = r.get<int64_t>("width", c.width);
  c.depth = r.get<int64_t>("depth", c.depth);
  c.activation = r.get<std::string>("activation", c.activation);
  c.batch_size = r.get<int64_t>("batch_size", c.batch_size);
  c.image_size = r.get<int64_t>("image_size", c.image_size);
  c.dataset = r.get<std::string>("dataset", c.dataset);
  c.data_dir = r.get<std::string>("data_dir", c.data_dir);
  if (auto p = r.object("parametrization"); !p.empty()) c.parametrization = p;
  r.finish();
  // Upper bounds catch typos (1e9) before LibTorch tries to allocate terabytes: a 65536-wide hidden
  // layer is already 16 GiB of float32 weights.
  config_check(c.width >= 1 && c.width <= 65536, r.path_of("width"), "must be in 1..65536, got " + std::to_string(c.width));
  config_check(c.depth >= 1 && c.depth <= 1024, r.path_of("depth"),
               "must be in 1..1024 (number of hidden layers), got " + std::to_string(c.depth));
  config_check(c.batch_size >= 1 && c.batch_size <= 65536, r.path_of("batch_size"),
               "must be in 1..65536, got " + std::to_string(c.batch_size));
  config_check(c.image_size >= 1 && c.image_size <= 28, r.path_of("image_size"),
               "must be in 1..28 (8, 16 or 28 for Fashion-MNIST), got " + std::to_string(c.image_size));
  config_check(c.activation == "relu" || c.activation == "gelu" || c.activation == "tanh", r.path_of("activation"),
               "unknown activation \"" + c.activation + "\" (valid: relu, gelu, tanh)");
  const auto& names = image_dataset_names();
  if (std::find(names.begin(), names.end(), c.dataset) == names.end()) {
    std::string valid;
    for (const auto& n : names) valid += (valid.empty() ? "" : ", ") + n;
    throw ConfigError(r.path_of("dataset"), "unknown dataset \"" + c.dataset + "\" (valid: " + valid + ")");
  }
  config_check(c.dataset != "digits" || c.image_size == 8, r.path_of("image_size"),
               "the digits are 8x8 images: image_size must be 8 with dataset \"digits\", got " + std::to_string(c.image_size));
  make_parametrization(c.parametrization, r.path_of("parametrization"));  // validates
  return c;
}

nlohmann::json MlpConfig::to_json() const {
  return {{"type", "mlp"},         {"width", width},           {"depth", depth},
          {"activation", activation}, {"batch_size", batch_size}, {"image_size", image_size},
          {"dataset", dataset},    {"data_dir", data_dir},     {"parametrization", parametrization}};
}

MlpTask::MlpTask(MlpConfig config)
    : MlpTask(config, make_image_source(config.dataset, config.data_dir, config.image_size)) {}

MlpTask::MlpTask(MlpConfig config, std::shared_ptr<const ImageSource> data)
    : config_(std::move(config)), data_(std::move(data)) {
  param_ = make_parametrization(config_.parametrization, "/task/parametrization");
  config_.parametrization = param_->hyperparams();
  for (const auto& info : param_info()) forward_mult_.push_back(param_->forward_mult(info));
}

std::vector<ParamInfo> MlpTask::param_info() const {
  std::vector<ParamInfo> infos;
  const int64_t w = config_.width, d_in = dataset().input_dim(), classes = dataset().num_classes;
  const double wm = param_->width_mult(w);
  for (int64_t l = 0; l < config_.depth; ++l) {
    int64_t fan_in = l == 0 ? d_in : w;
    ParamRole role = l == 0 ? ParamRole::input_weight : ParamRole::hidden_weight;
    infos.push_back({"hidden_" + std::to_string(l) + ".weight", role, fan_in, w, wm});
    infos.push_back({"hidden_" + std::to_string(l) + ".bias", ParamRole::bias, 1, w, wm});
  }
  infos.push_back({"readout.weight", ParamRole::output_weight, w, classes, wm});
  infos.push_back({"readout.bias", ParamRole::bias, 1, classes, 1.0});
  return infos;
}

ParamSet MlpTask::init(at::Generator& gen) const {
  ParamSet p;
  p.info = param_info();
  for (const auto& info : p.info) {
    std::vector<int64_t> shape =
        info.role == ParamRole::bias ? std::vector<int64_t>{info.fan_out} : std::vector<int64_t>{info.fan_out, info.fan_in};
    double std = param_->init_std(info);
    // Drawn on the host (the same parameters on every device), then moved to the run's device.
    p.tensors.push_back(on_compute_device(std > 0 ? torch::randn(shape, gen).mul_(std) : torch::zeros(shape)));
  }
  return p;
}

std::vector<std::string> MlpTask::layer_names() const {
  std::vector<std::string> names;
  for (int64_t l = 0; l < config_.depth; ++l) names.push_back("hidden_" + std::to_string(l));
  names.push_back("logits");
  return names;
}

torch::Tensor MlpTask::activate(const torch::Tensor& h) const {
  if (config_.activation == "relu") return torch::relu(h);
  if (config_.activation == "gelu") return torch::gelu(h);
  return torch::tanh(h);
}

torch::Tensor MlpTask::forward(const ParamSet& params, const torch::Tensor& x,
                               std::vector<torch::Tensor>* activations) const {
  TORCH_CHECK(params.size() == static_cast<size_t>(2 * config_.depth + 2), "MlpTask::forward: expected ",
              2 * config_.depth + 2, " tensors, got ", params.size());
  TORCH_CHECK(x.dim() == 2 && x.size(1) == dataset().input_dim(), "MlpTask::forward: x must be [B, ",
              dataset().input_dim(), "], got ", x.sizes());
  auto linear = [&](const torch::Tensor& h, size_t i) {
    const auto& W = params.tensors[i];
    const auto& b = params.tensors[i + 1];
    if (forward_mult_[i] == 1.0) return torch::linear(h, W, b);
    return torch::linear(h, W).mul(forward_mult_[i]).add(b);
  };
  torch::Tensor h = x;
  for (int64_t l = 0; l < config_.depth; ++l) {
    h = activate(linear(h, 2 * l));
    if (activations) activations->push_back(h);
  }
  auto logits = linear(h, 2 * config_.depth);
  if (activations) activations->push_back(logits);
  return logits;
}

LossAndMetrics MlpTask::loss_and_metrics(const ParamSet& params, const Batch& batch_in,
                                         std::vector<torch::Tensor>* activations) const {
  const Batch batch = batch_in.to(compute_device());
  const auto& y = batch.at("y");
  auto logits = forward(params, batch.at("x"), activations);
  LossAndMetrics out;
  out.loss = torch::cross_entropy_loss(logits, y);
  out.metrics["loss"] = out.loss.detach();
  out.metrics["accuracy"] = logits.detach().argmax(1).eq(y).to(torch::kFloat64).mean();
  return out;
}

torch::Tensor MlpTask::normalizer(const torch::Tensor& loss) const {
  return normalize_classifier_loss(loss, dataset().num_classes);
}

torch::Tensor MlpTask::population_loss(const ParamSet& stacked, const Batch& batch_in) const {
  const Batch batch = batch_in.to(compute_device());
  const auto& x = batch.at("x");
  const auto& y = batch.at("y");
  TORCH_CHECK(stacked.size() == static_cast<size_t>(2 * config_.depth + 2), "MlpTask::population_loss: expected ",
              2 * config_.depth + 2, " tensors, got ", stacked.size());
  TORCH_CHECK(x.dim() == 3 && x.size(2) == dataset().input_dim() && y.dim() == 2 && x.size(0) == y.size(0),
              "MlpTask::population_loss: x must be [P, B, ", dataset().input_dim(), "] and y [P, B], got ", x.sizes(),
              " and ", y.sizes());
  // h [P, B, in] x W^T [P, in, out] + b [P, 1, out]
  auto linear = [&](const torch::Tensor& h, size_t i) {
    const auto& W = stacked.tensors[i];
    auto b = stacked.tensors[i + 1].unsqueeze(1);
    if (forward_mult_[i] == 1.0) return torch::baddbmm(b, h, W.transpose(1, 2));
    return torch::bmm(h, W.transpose(1, 2)).mul(forward_mult_[i]).add(b);
  };
  torch::Tensor h = x;
  for (int64_t l = 0; l < config_.depth; ++l) {
    h = activate(linear(h, 2 * l));
  }
  auto logp = torch::log_softmax(linear(h, 2 * config_.depth), -1);
  return -logp.gather(2, y.unsqueeze(2)).squeeze(2).mean(1);
}

nlohmann::json MlpTask::hyperparams() const { return config_.to_json(); }

nlohmann::json MlpTask::population_key() const {
  auto j = config_.to_json();
  j.erase("dataset");
  j.erase("data_dir");
  j["input_dim"] = dataset().input_dim();
  j["num_classes"] = dataset().num_classes;
  return j;
}

// ------------------------------------------------------------------ family

namespace {
template <class T>
std::vector<T> read_list(ConfigReader& r, const std::string& key, std::vector<T> fallback) {
  auto v = r.get<std::vector<T>>(key, fallback);
  config_check(!v.empty(), r.path_of(key), "must be a non-empty list");
  return v;
}
}  // namespace

MlpFamily::MlpFamily(const nlohmann::json& config, const std::string& path) {
  ConfigReader r(config, path);
  auto type = r.get<std::string>("type", "mlp_family");
  config_check(type == "mlp_family", r.path_of("type"), "expected \"mlp_family\", got \"" + type + "\"");
  if (r.has("width_range")) {
    auto range = r.get<std::vector<int64_t>>("width_range", {});
    config_check(range.size() == 2 && range[0] >= 1 && range[0] <= range[1], r.path_of("width_range"),
                 "must be [lo, hi] with 1 <= lo <= hi");
    width_lo_ = range[0];
    width_hi_ = range[1];
    config_check(!r.has("widths"), r.path_of("widths"), "give either widths or width_range, not both");
    r.get<std::vector<int64_t>>("widths", {});
  } else {
    widths_ = read_list<int64_t>(r, "widths", {128});
    for (auto w : widths_) config_check(w >= 1, r.path_of("widths"), "widths must be >= 1");
  }
  depths_ = read_list<int64_t>(r, "depths", {2});
  batch_sizes_ = read_list<int64_t>(r, "batch_sizes", {128});
  image_sizes_ = read_list<int64_t>(r, "image_sizes", {28});
  activations_ = read_list<std::string>(r, "activations", {"relu"});
  auto param = r.object("parametrization");
  if (param.empty()) param = MlpConfig().parametrization;
  std::string dataset = "fashion_mnist";
  if (r.has("datasets")) {
    datasets_ = read_list<std::string>(r, "datasets", {});
    config_check(!r.has("dataset"), r.path_of("dataset"), "give either dataset or datasets, not both");
    r.get<std::string>("dataset", "");
    dataset = datasets_[0];
  } else {
    dataset = r.get<std::string>("dataset", dataset);
  }
  auto data_dir = r.get<std::string>("data_dir", "");
  dataset_per_slot_ = r.get<bool>("dataset_per_slot", false);
  config_check(!dataset_per_slot_ || datasets_.size() > 1, r.path_of("dataset_per_slot"),
               "needs a \"datasets\" list of two or more (slot k of an estimate takes datasets[k % n])");
  if (r.has("reparam_scale_range")) {
    auto range = r.get<std::vector<double>>("reparam_scale_range", {});
    config_check(range.size() == 2 && std::isfinite(range[0]) && std::isfinite(range[1]) && range[0] > 0 && range[0] < range[1],
                 r.path_of("reparam_scale_range"),
                 "must be [low, high] with 0 < low < high (the global reparameterisation scale, log-uniform; Celo2: [1e-3, 1e3])");
    reparam_lo_ = range[0];
    reparam_hi_ = range[1];
  }
  r.finish();
  config_ = {{"type", "mlp_family"}, {"depths", depths_},         {"batch_sizes", batch_sizes_},
             {"image_sizes", image_sizes_}, {"activations", activations_}, {"parametrization", param},
             {"data_dir", data_dir}};
  if (datasets_.empty()) config_["dataset"] = dataset;
  else config_["datasets"] = datasets_;
  if (reparam_hi_ > 0) config_["reparam_scale_range"] = {reparam_lo_, reparam_hi_};
  if (dataset_per_slot_) config_["dataset_per_slot"] = true;
  if (width_hi_ > 0) config_["width_range"] = {width_lo_, width_hi_};
  else config_["widths"] = widths_;
  // Validate every combination's static parts once, before any work.
  nlohmann::json probe = {{"type", "mlp"}, {"width", width_hi_ > 0 ? width_lo_ : widths_[0]}, {"depth", depths_[0]},
                          {"activation", activations_[0]}, {"batch_size", batch_sizes_[0]},
                          {"image_size", image_sizes_[0]}, {"dataset", dataset}, {"data_dir", data_dir},
                          {"parametrization", param}};
  // A task key's error is reported at the family's list key (/task_family/batch_sizes, not /batch_size).
  auto check = [&] {
    try {
      MlpConfig::from_json(probe, path);
    } catch (const ConfigError& e) {
      std::string p = e.path();
      for (const char* k : {"width", "depth", "activation", "batch_size", "image_size", "dataset"}) {
        const std::string task_key = path + "/" + k;
        if (p != task_key) continue;
        const std::string key = k;
        if (key == "width") p = path + "/" + (width_hi_ > 0 ? "width_range" : "widths");
        else if (key == "dataset") p = path + "/" + (datasets_.empty() ? "dataset" : "datasets");
        else p = path + "/" + key + "s";
      }
      throw ConfigError(p, e.message());
    }
  };
  check();
  for (auto d : depths_) { probe["depth"] = d; check(); }
  for (const auto& a : activations_) { probe["activation"] = a; check(); }
  for (auto s : image_sizes_) { probe["image_size"] = s; check(); }
  for (auto b : batch_sizes_) { probe["batch_size"] = b; check(); }
  for (const auto& ds : datasets_)
    for (auto s : image_sizes_) {
      probe["dataset"] = ds;
      probe["image_size"] = s;
      check();
    }
}

nlohmann::json MlpFamily::sample(at::Generator& gen) const {
  auto pick = [&](size_t n) { return static_cast<size_t>(torch::randint(static_cast<int64_t>(n), {1}, gen).item<int64_t>()); };
  int64_t width;
  if (width_hi_ > 0) {
    double u = torch::rand({1}, gen).item<double>();
    width = static_cast<int64_t>(std::llround(std::exp(std::log(double(width_lo_)) +
                                                       u * (std::log(double(width_hi_)) - std::log(double(width_lo_))))));
  } else {
    width = widths_[pick(widths_.size())];
  }
  nlohmann::json task = {{"type", "mlp"},
          {"width", width},
          {"depth", depths_[pick(depths_.size())]},
          {"activation", activations_[pick(activations_.size())]},
          {"batch_size", batch_sizes_[pick(batch_sizes_.size())]},
          {"image_size", image_sizes_[pick(image_sizes_.size())]},
          {"dataset", datasets_.empty() ? config_["dataset"] : nlohmann::json(datasets_[0])},
          {"data_dir", config_["data_dir"]},
          {"parametrization", config_["parametrization"]}};
  // Drawn after the draws above, and only when configured, so that families without these options
  // sample exactly the tasks they always did.
  if (datasets_.size() > 1) task["dataset"] = datasets_[pick(datasets_.size())];
  if (reparam_hi_ > 0) {
    const double u = torch::rand({1}, gen, torch::kFloat64).item<double>();
    task["reparam_scale"] = std::exp(std::log(reparam_lo_) + u * (std::log(reparam_hi_) - std::log(reparam_lo_)));
  }
  return task;
}

nlohmann::json MlpFamily::sample_for_slot(at::Generator& gen, int64_t slot) const {
  auto task = sample(gen);  // every draw as usual, so the other options do not depend on the mode
  if (dataset_per_slot_) task["dataset"] = datasets_[static_cast<size_t>(slot) % datasets_.size()];
  return task;
}

// The MLP's backward pass written out (relu / tanh; gelu takes autograd): per layer two bmm and a
// few element-wise ops, no graph.
torch::Tensor MlpTask::population_loss_and_grads(const ParamSet& stacked, const Batch& batch_in,
                                                 std::vector<torch::Tensor>* grads) const {
  if (config_.activation == "gelu") return Task::population_loss_and_grads(stacked, batch_in, grads);
  const Batch batch = batch_in.to(compute_device());
  const auto& x = batch.at("x");
  const auto& y = batch.at("y");
  torch::NoGradGuard no_grad;
  const int64_t L = config_.depth;
  TORCH_CHECK(stacked.size() == static_cast<size_t>(2 * L + 2), "MlpTask::population_loss_and_grads: expected ",
              2 * L + 2, " tensors, got ", stacked.size());
  TORCH_CHECK(x.dim() == 3 && x.size(2) == dataset().input_dim() && y.dim() == 2 && x.size(0) == y.size(0),
              "MlpTask::population_loss_and_grads: x must be [P, B, ", dataset().input_dim(), "] and y [P, B], got ",
              x.sizes(), " and ", y.sizes());
  auto W = [&](int64_t l) { return stacked.tensors[static_cast<size_t>(2 * l)].detach(); };
  auto b = [&](int64_t l) { return stacked.tensors[static_cast<size_t>(2 * l + 1)].detach(); };
  auto mult = [&](int64_t l) { return forward_mult_[static_cast<size_t>(2 * l)]; };
  // Forward, as population_loss: z = (h W^T) * mult + b.
  std::vector<torch::Tensor> hs = {x};
  auto linear = [&](const torch::Tensor& h, int64_t l) {
    if (mult(l) == 1.0) return torch::baddbmm(b(l).unsqueeze(1), h, W(l).transpose(1, 2));
    return torch::bmm(h, W(l).transpose(1, 2)).mul_(mult(l)).add_(b(l).unsqueeze(1));
  };
  for (int64_t l = 0; l < L; ++l) hs.push_back(activate(linear(hs.back(), l)));
  auto logp = torch::log_softmax(linear(hs.back(), L), -1);
  auto yi = y.unsqueeze(2);
  auto loss = -logp.gather(2, yi).squeeze(2).mean(1);
  // Backward of sum_p loss_p: d logits = (softmax - onehot(y)) / B.
  const double inv_b = 1.0 / static_cast<double>(x.size(1));
  auto dz = logp.exp().mul_(inv_b);
  dz.scatter_add_(2, yi, torch::full(yi.sizes(), -inv_b, dz.options()));
  grads->assign(stacked.size(), torch::Tensor());
  for (int64_t l = L; l >= 0; --l) {
    auto dW = torch::bmm(dz.transpose(1, 2), hs[static_cast<size_t>(l)]);
    if (mult(l) != 1.0) dW.mul_(mult(l));
    (*grads)[static_cast<size_t>(2 * l)] = dW;
    (*grads)[static_cast<size_t>(2 * l + 1)] = dz.sum(1);
    if (l == 0) break;
    auto dh = torch::bmm(dz, W(l));
    if (mult(l) != 1.0) dh.mul_(mult(l));
    const auto& h = hs[static_cast<size_t>(l)];  // act(z_{l-1})
    if (config_.activation == "relu") dz = dh.mul_(h.gt(0).to(dh.scalar_type()));  // relu'(z) = [z > 0] = [h > 0]
    else dz = dh.mul_(1 - h.square());                                              // tanh' = 1 - tanh^2
  }
  return loss;
}

}  // namespace lopt
