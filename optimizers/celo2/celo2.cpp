#include "optimizers/celo2/celo2.h"

#include "optimizers/batched_gemm.h"

#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <numeric>

#include "common/config.h"
#include "common/device.h"
#include "common/errors.h"
#include "common/registry.h"
#include "optimizers/lo_features.h"
#include "optimizers/muon.h"
#include "optimizers/safetensors.h"
#include "parametrization/parametrization.h"

namespace lopt {

namespace {
// Celo2's epsilons (celo2_optax.py / CELO2_naive.py), named once.
constexpr double kRmsEps = 1e-8;         ///< rsqrt(rms + 1e-8)
constexpr double kFactorFeature = 1e-8;  ///< rsqrt(row + 1e-8), rsqrt(col + 1e-8)
constexpr double kNormalizerEps = 1e-9;  ///< second_moment_normalizer's eps (inputs and the step)
constexpr double kGradClipFeature = 0.1; ///< the clamp(g, -0.1, 0.1) input

int64_t numel_of(const std::vector<int64_t>& shape) {
  return std::accumulate(shape.begin(), shape.end(), int64_t(1), std::multiplies<int64_t>());
}
}  // namespace

// ------------------------------------------------------------------ config

Celo2Config Celo2Config::from_json(const nlohmann::json& j, const std::string& path) {
  ConfigReader r(j, path);
  const auto type = r.get<std::string>("type", "celo2");
  config_check(type == "celo2" || type == "celo2_base" || type == "mucelo2", r.path_of("type"),
               "unknown learned optimizer \"" + type + "\" (valid: celo2, celo2_base, mucelo2)");
  Celo2Config c;
  c.orthogonalize = type != "celo2_base";
  c.mup = type == "mucelo2";
  c.hidden_size = r.get<int64_t>("hidden_size", c.hidden_size);
  c.hidden_layers = r.get<int64_t>("hidden_layers", c.hidden_layers);
  c.lr = r.get<double>("lr", c.lr);
  c.weight_decay = r.get<double>("weight_decay", c.weight_decay);
  if (auto sched = r.object("schedule"); !sched.empty()) c.schedule = make_schedule(sched, r.path_of("schedule"))->hyperparams();
  c.exp_mult = r.get<double>("exp_mult", c.exp_mult);
  c.rmsmult = r.get<double>("rmsmult", c.rmsmult);
  c.grad_clip = r.get<double>("grad_clip", c.grad_clip);
  c.max_grad_norm = r.get<double>("max_grad_norm", c.max_grad_norm);
  c.initial_momentum_decays = r.get<std::vector<double>>("initial_momentum_decays", c.initial_momentum_decays);
  c.initial_rms_decays = r.get<std::vector<double>>("initial_rms_decays", c.initial_rms_decays);
  c.initial_adafactor_decays = r.get<std::vector<double>>("initial_adafactor_decays", c.initial_adafactor_decays);
  c.ns_steps = r.get<int64_t>("ns_steps", c.ns_steps);
  c.ns_coeffs = r.get<std::vector<double>>("ns_coeffs", c.ns_coeffs);
  c.ns_eps = r.get<double>("ns_eps", c.ns_eps);
  c.adamw_for_1d = r.get<bool>("adamw_for_1d", c.adamw_for_1d);
  c.adamw_variant = r.get<std::string>("adamw_variant", c.adamw_variant);
  config_check(c.adamw_variant == "pylo" || c.adamw_variant == "celo_jax", r.path_of("adamw_variant"),
               "must be \"pylo\" (PyLO's AdamW: bias-corrected, betas 0.9/0.95) or \"celo_jax\" (the JAX "
               "meta-training wrapper's Adam: no bias correction, eps inside the square root, lr x 20)");
  const bool jax = c.adamw_variant == "celo_jax";
  c.adam_lr_mult = r.get<double>("adam_lr_mult", jax ? 20.0 : 1.0);
  c.adam_beta1 = r.get<double>("adam_beta1", 0.9);
  c.adam_beta2 = r.get<double>("adam_beta2", jax ? 0.999 : 0.95);
  c.adam_eps = r.get<double>("adam_eps", 1e-8);
  c.adam_weight_decay = r.get<double>("adam_weight_decay", c.weight_decay);
  c.impl = r.get<std::string>("impl", c.impl);
  c.zero_inputs = r.get<std::vector<std::string>>("zero_inputs", c.zero_inputs);
  r.finish();
  for (const auto& name : c.zero_inputs)
    config_check(std::find(kCelo2InputNames.begin(), kCelo2InputNames.end(), name) != kCelo2InputNames.end(),
                 r.path_of("zero_inputs"),
                 "unknown input group \"" + name + "\" (valid: " +
                     join_names(std::vector<std::string>(kCelo2InputNames.begin(), kCelo2InputNames.end())) + ")");
  config_check(c.impl == "fused" || c.impl == "tensor", r.path_of("impl"),
               "must be \"fused\" (the SIMD kernel for float32 CPU matrices) or \"tensor\" (LibTorch tensor ops)");
  config_check(c.hidden_size >= 1, r.path_of("hidden_size"), "must be >= 1");
  config_check(c.hidden_layers >= 1, r.path_of("hidden_layers"), "must be >= 1 (the last dense layer gives the 3 outputs)");
  for (const auto& [key, value] : {std::pair<const char*, double>{"lr", c.lr}, {"weight_decay", c.weight_decay},
                                    {"rmsmult", c.rmsmult}, {"max_grad_norm", c.max_grad_norm},
                                    {"adam_lr_mult", c.adam_lr_mult}, {"adam_weight_decay", c.adam_weight_decay}})
    config_check_finite_nonneg(value, r.path_of(key));
  config_check(c.grad_clip > 0, r.path_of("grad_clip"), "must be > 0 (the element-wise gradient clamp; Celo2 uses 1000)");
  config_check(std::isfinite(c.exp_mult), r.path_of("exp_mult"), "must be finite");
  config_check(c.initial_momentum_decays.size() == 3, r.path_of("initial_momentum_decays"), "needs 3 values");
  config_check(c.initial_rms_decays.size() == 1, r.path_of("initial_rms_decays"), "needs 1 value");
  config_check(c.initial_adafactor_decays.size() == 3, r.path_of("initial_adafactor_decays"), "needs 3 values");
  config_check(c.ns_steps >= 0, r.path_of("ns_steps"), "must be >= 0");
  config_check(c.ns_coeffs.size() == 3, r.path_of("ns_coeffs"), "needs 3 values (a, b, c of the quintic)");
  config_check(c.ns_eps > 0, r.path_of("ns_eps"), "must be > 0");
  for (const auto& [key, value] : {std::pair<const char*, double>{"adam_beta1", c.adam_beta1}, {"adam_beta2", c.adam_beta2}})
    config_check(value >= 0 && value < 1, r.path_of(key), "must be in [0, 1)");
  config_check(c.adam_eps > 0, r.path_of("adam_eps"), "must be > 0");
  return c;
}

nlohmann::json Celo2Config::to_json() const {
  nlohmann::json j = {{"type", type()},
          {"hidden_size", hidden_size},
          {"hidden_layers", hidden_layers},
          {"lr", lr},
          {"weight_decay", weight_decay},
          {"schedule", schedule},
          {"exp_mult", exp_mult},
          {"rmsmult", rmsmult},
          {"grad_clip", grad_clip},
          {"max_grad_norm", max_grad_norm},
          {"initial_momentum_decays", initial_momentum_decays},
          {"initial_rms_decays", initial_rms_decays},
          {"initial_adafactor_decays", initial_adafactor_decays},
          {"ns_steps", ns_steps},
          {"ns_coeffs", ns_coeffs},
          {"ns_eps", ns_eps},
          {"adamw_for_1d", adamw_for_1d},
          {"adamw_variant", adamw_variant},
          {"adam_lr_mult", adam_lr_mult},
          {"adam_beta1", adam_beta1},
          {"adam_beta2", adam_beta2},
          {"adam_eps", adam_eps},
          {"adam_weight_decay", adam_weight_decay},
          {"impl", impl}};
  if (!zero_inputs.empty()) j["zero_inputs"] = zero_inputs;
  return j;
}

// ------------------------------------------------------------------ theta

Celo2::Celo2(Celo2Config config) : config_(std::move(config)) {}

std::vector<std::pair<std::string, std::vector<int64_t>>> Celo2::theta_layout() const {
  const int64_t h = config_.hidden_size;
  std::vector<std::pair<std::string, std::vector<int64_t>>> l;
  for (size_t i = 0; i < kCelo2FeatureDims.size(); ++i) l.push_back({"w0." + std::to_string(i), {kCelo2FeatureDims[i], h}});
  l.push_back({"b0", {h}});
  for (int64_t i = 0; i < config_.hidden_layers; ++i) {
    const int64_t out = i + 1 == config_.hidden_layers ? kCelo2Outputs : h;
    l.push_back({"dense_w." + std::to_string(i), {h, out}});
    l.push_back({"dense_b." + std::to_string(i), {out}});
  }
  return l;
}

int64_t Celo2::num_theta() const {
  int64_t n = 0;
  for (const auto& [name, shape] : theta_layout()) n += numel_of(shape);
  return n;
}

std::map<std::string, torch::Tensor> Celo2::unflatten(const torch::Tensor& theta) const {
  TORCH_CHECK(theta.dim() == 1 && theta.size(0) == num_theta(), "Celo2: theta must be [", num_theta(), "], got ",
              theta.sizes());
  std::map<std::string, torch::Tensor> out;
  int64_t off = 0;
  for (const auto& [name, shape] : theta_layout()) {
    const int64_t n = numel_of(shape);
    out[name] = theta.narrow(0, off, n).view(shape);
    off += n;
  }
  return out;
}

torch::Tensor Celo2::flatten(const std::map<std::string, torch::Tensor>& named) const {
  std::vector<torch::Tensor> parts;
  for (const auto& [name, shape] : theta_layout()) {
    auto it = named.find(name);
    TORCH_CHECK(it != named.end(), "Celo2::flatten: missing ", name);
    TORCH_CHECK(it->second.sizes() == torch::IntArrayRef(shape), "Celo2::flatten: ", name, " has shape ",
                it->second.sizes(), ", expected ", torch::IntArrayRef(shape));
    parts.push_back(it->second.reshape({-1}).to(torch::kFloat32));
  }
  return torch::cat(parts);
}

torch::Tensor Celo2::init_theta(at::Generator& gen) const {
  // Normal truncated at ±2σ by the inverse CDF: u ~ U(Φ(-2), Φ(2)), x = σ √2 erfinv(2u - 1).
  const double lo = 0.5 * std::erfc(2.0 / std::sqrt(2.0)), hi = 1.0 - lo;
  std::map<std::string, torch::Tensor> named;
  for (const auto& [name, shape] : theta_layout()) {
    if (name == "b0" || name.rfind("dense_b.", 0) == 0) {
      named[name] = torch::zeros(shape);
      continue;
    }
    const double fan_in = name.rfind("w0.", 0) == 0 ? static_cast<double>(kCelo2Inputs) : static_cast<double>(shape[0]);
    auto u = torch::rand(shape, gen).mul_(hi - lo).add_(lo);
    named[name] = u.mul_(2).sub_(1).erfinv_().mul_(std::sqrt(2.0) / std::sqrt(fan_in));
  }
  return flatten(named);
}

void Celo2::save(const std::string& path, const torch::Tensor& theta) const {
  SafeTensors st;
  for (const auto& [name, t] : unflatten(theta.detach())) st.tensors[name] = t;
  st.metadata["lopt_config"] = config_.to_json().dump();
  write_safetensors(path, st);
}

void Celo2::save_hub(const std::string& dir, const torch::Tensor& theta) const {
  std::filesystem::create_directories(dir);
  save((std::filesystem::path(dir) / "model.safetensors").string(), theta);
  // PyTorchModelHubMixin's config.json: CELO2MLP's constructor arguments.
  const nlohmann::json cfg = {{"feature_dims", kCelo2FeatureDims}, {"hidden_size", config_.hidden_size},
                              {"hidden_layers", config_.hidden_layers}, {"output_size", kCelo2Outputs},
                              {"activation", "relu"}};
  write_text_atomic((std::filesystem::path(dir) / "config.json").string(), cfg.dump(2) + "\n");
}

torch::Tensor Celo2::load(const std::string& checkpoint) const {
  const std::string path = checkpoint_weights_file(checkpoint);
  auto st = read_safetensors(path);
  std::map<std::string, torch::Tensor> named;
  const auto layout = theta_layout();
  for (const auto& [name, shape] : layout) {
    auto it = st.tensors.find(name);
    if (it == st.tensors.end())
      throw IoError(path, "missing tensor '" + name + "' (expected PyLO CELO2MLP names, hidden_size " +
                              std::to_string(config_.hidden_size) + ", hidden_layers " +
                              std::to_string(config_.hidden_layers) + ")");
    if (it->second.sizes() != torch::IntArrayRef(shape))
      throw IoError(path, "tensor '" + name + "' has shape " + c10::str(it->second.sizes()) + ", expected " +
                              c10::str(torch::IntArrayRef(shape)) + " (check hidden_size)");
    named[name] = it->second.to(torch::kFloat32);
  }
  for (const auto& [name, t] : st.tensors)
    if (std::none_of(layout.begin(), layout.end(), [&](const auto& l) { return l.first == name; }))
      throw IoError(path, "unexpected tensor '" + name + "' (more dense layers than hidden_layers=" +
                              std::to_string(config_.hidden_layers) + "?)");
  return flatten(named);
}

std::unique_ptr<Optimizer> Celo2::bind(const torch::Tensor& theta, const nlohmann::json& provenance) const {
  return std::make_unique<Celo2Optimizer>(*this, theta, provenance);
}

nlohmann::json resolve_celo2_checkpoint(const nlohmann::json& config, const std::string& checkpoint,
                                        const std::string& path) {
  static const std::vector<std::string> kOwned = {"type", "hidden_size", "hidden_layers", "exp_mult",
                                                  "initial_momentum_decays", "initial_rms_decays",
                                                  "initial_adafactor_decays", "zero_inputs"};
  check_foreign_network(checkpoint, "CELO2MLP", path);
  nlohmann::json stored = stored_checkpoint_config(checkpoint);
  if (!stored.is_object()) {
    // A PyLO CELO2MLP file: its geometry from the tensors, the rest from the config (PyLO's defaults).
    const std::string file = checkpoint_weights_file(checkpoint);
    const auto st = read_safetensors(file);
    auto b0 = st.tensors.find("b0");
    if (b0 == st.tensors.end() || b0->second.dim() != 1)
      throw IoError(file, "no 'b0' [hidden] tensor and no lopt metadata", "not a Celo2 checkpoint (lopt or PyLO CELO2MLP)");
    int64_t layers = 0;
    while (st.tensors.count("dense_w." + std::to_string(layers))) ++layers;
    stored = {{"hidden_size", b0->second.size(0)}, {"hidden_layers", layers}};
    note_once(checkpoint + " has no lopt metadata (a PyLO CELO2MLP checkpoint): decays and exp_mult from the config");
  }
  return complete_from_checkpoint(config, stored, kOwned, checkpoint, path);
}

// ------------------------------------------------------------------ bound optimizer

Celo2Optimizer::Celo2Optimizer(const Celo2& lopt, torch::Tensor theta, nlohmann::json provenance)
    : config_(lopt.config()), theta_(on_compute_device(theta)), named_(lopt.unflatten(theta_)),
      schedule_(make_schedule(config_.schedule, "/optimizer/schedule")), provenance_(std::move(provenance)),
      config_key_(config_.to_json().dump()) {
  std::vector<torch::Tensor> w0;
  for (size_t i = 0; i < kCelo2FeatureDims.size(); ++i) {
    const auto& wi = named_.at("w0." + std::to_string(i));
    const auto& zero = config_.zero_inputs;
    // An ablated input group: x_i W0_i = 0 whatever x_i, in the tensor ops and the fused kernel alike.
    w0.push_back(std::find(zero.begin(), zero.end(), kCelo2InputNames[i]) != zero.end() ? torch::zeros_like(wi) : wi);
  }
  w0_ = torch::cat(w0, 0);  // [30, hidden]: sum_i x_i W0_i = [x_0 ... x_13] W0
  for (int64_t i = 0; i < config_.hidden_layers; ++i) {
    dense_w_.push_back(named_.at("dense_w." + std::to_string(i)));
    dense_b_.push_back(named_.at("dense_b." + std::to_string(i)));
  }
  auto as_tensor = [&](const std::vector<double>& d) {
    // PyLO clamps the rms and Adafactor decays to [0, 1]; momentum decays are used as given.
    return torch::tensor(std::vector<float>(d.begin(), d.end())).to(theta_.device());
  };
  mom_decay_ = as_tensor(config_.initial_momentum_decays);
  rms_decay_ = as_tensor(config_.initial_rms_decays).clamp(0.0, 1.0);
  fac_decay_ = as_tensor(config_.initial_adafactor_decays).clamp(0.0, 1.0);
  if (theta_.device().is_cpu()) {
    // The fused kernel's form of the network: the first layer's columns in the kernel's feature order
    // (its 18 per-element features, then row x3, col x3, rsqrt(row) x3, rsqrt(col) x3), every layer
    // [out][in], the first two outputs (direction, magnitude).
    static constexpr int kChannelOf[kCelo2Inputs] = {0,  2,  3,  4,  5,  6,  7,  8,  9,  10, 11, 12, 13, 27, 28,
                                                     29, 1,  14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26};
    torch::NoGradGuard no_grad;
    auto vec = [](const torch::Tensor& t) {
      auto x = t.detach().to(torch::kFloat32).contiguous();
      return std::vector<float>(x.data_ptr<float>(), x.data_ptr<float>() + x.numel());
    };
    detail::FusedNet& n = fused_net_;
    auto copy3 = [](const torch::Tensor& t, float* out, size_t k) { for (size_t i = 0; i < k; ++i) out[i] = t[static_cast<int64_t>(i)].item<float>(); };
    copy3(mom_decay_, n.mom_decay, 3);
    copy3(fac_decay_, n.fac_decay, 3);
    n.rms_decay = rms_decay_[0].item<float>();
    n.rms_eps = static_cast<float>(kRmsEps);
    n.normalizer_eps = kNormalizerEps;
    n.celo2_features = true;
    n.hidden = static_cast<int>(config_.hidden_size);
    const auto w0t = w0_.detach().t().contiguous();  // [hidden][30 channels]
    const auto w0v = vec(w0t);
    for (int j = 0; j < n.hidden; ++j)
      for (int i = 0; i < kCelo2Inputs; ++i) n.w_in.push_back(w0v[static_cast<size_t>(j * kCelo2Inputs + kChannelOf[i])]);
    n.b_in = vec(named_.at("b0"));
    for (size_t l = 0; l + 1 < dense_w_.size(); ++l) {
      n.w_hidden.push_back(vec(dense_w_[l].t()));
      n.b_hidden.push_back(vec(dense_b_[l]));
    }
    n.w_out = vec(dense_w_.back().t().narrow(0, 0, 2));
    n.b_out = vec(dense_b_.back().narrow(0, 0, 2));
    n.exp_mult = static_cast<float>(config_.exp_mult);
    n.step_mult = 1.0f;  // the step is normalised afterwards; rmsmult applies then
  }
}

bool Celo2Optimizer::uses_adamw(const ParamSet& params, size_t i) const {
  // PyLO: is_1d = dim <= 1 or an embedding group; AdamW only when use_adamw_for_1d.
  return config_.adamw_for_1d && (params.tensors[i].dim() <= 1 || params.info[i].role == ParamRole::embedding);
}

OptState Celo2Optimizer::init(const ParamSet& params) const {
  OptState s;
  s.params = params;
  for (size_t i = 0; i < params.size(); ++i) {
    const auto& p = params.tensors[i];
    const auto on = torch::TensorOptions().dtype(torch::kFloat32).device(p.device());
    if (uses_adamw(params, i)) {
      for (const char* k : {"mom", "rms", "fac_vec_row", "fac_vec_col", "fac_vec_v"}) s.slots[k].push_back(torch::zeros({0}, on));
      s.slots["exp_avg"].push_back(torch::zeros_like(p));
      s.slots["exp_avg_sq"].push_back(torch::zeros_like(p));
    } else {
      lo::append_accumulator_slots(p, 3, 1, 3, s.slots);
      s.slots["exp_avg"].push_back(torch::zeros({0}, on));
      s.slots["exp_avg_sq"].push_back(torch::zeros({0}, on));
    }
  }
  return s;
}

Celo2Optimizer::Net Celo2Optimizer::net() const { return {w0_, named_.at("b0"), dense_w_, dense_b_, false}; }

torch::Tensor Celo2Optimizer::learned_step(const torch::Tensor& p, const torch::Tensor& g, const torch::Tensor& mom0,
                                           const torch::Tensor& rms0, const torch::Tensor& row0, const torch::Tensor& col0,
                                           const torch::Tensor& v0, std::array<torch::Tensor, 5>& new_slots,
                                           torch::Tensor* mlp_inputs, torch::Tensor* mlp_outputs,
                                           torch::Tensor* pre_orthogonal) const {
  return learned_step(net(), p, g, mom0, rms0, row0, col0, v0, new_slots, mlp_inputs, mlp_outputs, pre_orthogonal);
}

torch::Tensor Celo2Optimizer::learned_step(const Net& net, const torch::Tensor& p, const torch::Tensor& g,
                                           const torch::Tensor& mom0, const torch::Tensor& rms0, const torch::Tensor& row0,
                                           const torch::Tensor& col0, const torch::Tensor& v0,
                                           std::array<torch::Tensor, 5>& new_slots, torch::Tensor* mlp_inputs,
                                           torch::Tensor* mlp_outputs, torch::Tensor* pre_orthogonal) const {
  // A batched net: dimension 0 indexes the members, each parameter is p[m].
  const int64_t batch = net.batched ? 1 : 0;
  std::vector<int64_t> shape = lo::accumulator_shape(batch ? p[0] : p);
  if (batch) shape.insert(shape.begin(), p.size(0));
  const auto pr = p.reshape(shape), gr = g.reshape(shape);
  const auto gu = gr.unsqueeze(-1);
  auto mom = lo::rolling_average(mom0, gu, mom_decay_);
  auto rms = lo::rolling_average(rms0, gu.square(), rms_decay_);
  const auto fac = lo::factored_moments(gr, row0, col0, v0, fac_decay_, batch);
  const auto rsq = (rms + kRmsEps).rsqrt();
  std::vector<torch::Tensor> groups = {gu,       gu.clamp(-kGradClipFeature, kGradClipFeature), pr.unsqueeze(-1), mom, rms,
                                       mom * rsq, rsq, fac.scale(gu), gu * rsq};
  if (fac.factored) {
    const auto row_feat = fac.row_feature(shape), col_feat = fac.col_feature(shape);
    groups.insert(groups.end(), {row_feat, col_feat, (row_feat + kFactorFeature).rsqrt(),
                                 (col_feat + kFactorFeature).rsqrt(), fac.scale(mom)});
  }
  // Each channel normalised over the last two dimensions of the parameter (one for a vector).
  const int64_t r = static_cast<int64_t>(shape.size()) - batch;  // the parameter's own rank
  std::vector<int64_t> axis;
  for (int64_t d = batch + std::max<int64_t>(0, r - 2); d < batch + r; ++d) axis.push_back(d);
  auto x = lo::second_moment_normalize(torch::cat(groups, -1), axis, kNormalizerEps);
  const int64_t channels = x.size(-1);
  torch::Tensor h;
  if (net.batched) {
    // [M, elements, channels] through each member's network.
    const int64_t M = shape[0];
    h = torch::relu(torch::baddbmm(net.b0.unsqueeze(1), x.reshape({M, -1, channels}), net.w0.narrow(1, 0, channels)));
    for (size_t l = 0; l < net.w.size(); ++l) {
      h = torch::baddbmm(net.b[l].unsqueeze(1), h, net.w[l]);
      if (l + 1 < net.w.size()) h = torch::relu(h);
    }
    auto out_shape = shape;
    out_shape.push_back(h.size(-1));
    h = h.reshape(out_shape);
  } else {
    h = torch::relu(torch::matmul(x, net.w0.narrow(0, 0, channels)) + net.b0);
    for (size_t l = 0; l < net.w.size(); ++l) {
      h = torch::matmul(h, net.w[l]) + net.b[l];
      if (l + 1 < net.w.size()) h = torch::relu(h);
    }
  }
  auto step = h.select(-1, 0);
  if (config_.exp_mult != 0) step = step * torch::exp(h.select(-1, 1) * config_.exp_mult);
  if (pre_orthogonal) *pre_orthogonal = step;
  if (config_.orthogonalize && r >= 2)
    step = newton_schulz(step, config_.ns_steps, {config_.ns_coeffs[0], config_.ns_coeffs[1], config_.ns_coeffs[2]},
                         config_.ns_eps);
  step = lo::second_moment_normalize(step, axis, kNormalizerEps) * config_.rmsmult;
  new_slots = {mom, rms, fac.factored ? fac.row : row0, fac.factored ? fac.col : col0, fac.factored ? v0 : fac.v};
  if (mlp_inputs) *mlp_inputs = x;
  if (mlp_outputs) *mlp_outputs = h;
  return step.reshape(p.sizes());
}

std::vector<torch::Tensor> Celo2Optimizer::clipped(const std::vector<torch::Tensor>& grads_in) const {
  std::vector<torch::Tensor> grads = grads_in;
  torch::Tensor scale;
  if (config_.max_grad_norm > 0) {
    // optax clip_by_global_norm (PyLO _global_grad_scale): g * max_norm / max(norm, max_norm).
    auto total = torch::zeros({}, torch::kFloat64);
    for (const auto& g : grads) total = total + g.to(torch::kFloat64).square().sum();
    scale = (config_.max_grad_norm / total.sqrt().clamp_min(config_.max_grad_norm)).to(torch::kFloat32);
  }
  for (auto& g : grads) {
    if (scale.defined()) g = g * scale.to(g.device());
    g = g.clamp(-config_.grad_clip, config_.grad_clip);
  }
  return grads;
}

std::tuple<torch::Tensor, torch::Tensor, torch::Tensor> Celo2Optimizer::adamw_step(
    const torch::Tensor& p, const torch::Tensor& g, const torch::Tensor& m, const torch::Tensor& v, const torch::Tensor& lr,
    const torch::Tensor& t) const {
  // Scalar factors in float64 (lr, t: one member's 0-dim values or a population's [M, 1, ...]), rounded
  // once to the parameters' type, as scalar arguments would be.
  const double wd = config_.adam_weight_decay, b1 = config_.adam_beta1, b2 = config_.adam_beta2;
  const auto as_p = [&](const torch::Tensor& x) { return x.to(p.options()); };
  if (config_.adamw_variant == "pylo") {
    // PyLO _adamw_step: p -= lr (m̂ / (sqrt(v̂) + eps) + wd p): torch AdamW's maths (adam_tensor_step).
    const auto decayed = wd != 0 ? p * as_p(1 - lr * wd) : p;
    auto m_new = m.mul(b1).add(g, 1 - b1);
    auto v_new = v.mul(b2).addcmul(g, g, 1 - b2);
    const auto bc2_sqrt = as_p((1 - torch::pow(b2, t)).sqrt());
    const auto value = as_p(-lr / (1 - torch::pow(b1, t)));
    auto p_new = decayed + value * (m_new / v_new.sqrt().div(bc2_sqrt).add(config_.adam_eps));
    return {p_new, m_new, v_new};
  }
  // celo2.py AdamTransformation (bias_correction False): s = m rsqrt(v + eps); p - lr s - wd p lr.
  const auto lr_p = as_p(lr);
  auto m_new = lo::rolling_average(m, g, as_p(torch::tensor(b1)));
  auto v_new = lo::rolling_average(v, g.square(), as_p(torch::tensor(b2)));
  auto p_new = p - lr_p * (m_new * (v_new + config_.adam_eps).rsqrt()) - wd * p * lr_p;
  return {p_new, m_new, v_new};
}

OptState Celo2Optimizer::update(const OptState& state, const std::vector<torch::Tensor>& grads_in,
                                const torch::Tensor&) const {
  check_grads(state, grads_in, "Celo2Optimizer::update");
  const std::vector<torch::Tensor> grads = clipped(grads_in);
  OptState out;
  out.step = state.step + 1;
  out.params.info = state.params.info;
  const double sched_lr = config_.lr * (*schedule_)(state.step);
  const double t = static_cast<double>(out.step);
  for (size_t i = 0; i < grads.size(); ++i) {
    const auto& p = state.params.tensors[i];
    const double lr_t = sched_lr * mup_mult(state.params.info[i]);
    const auto& g = grads[i];
    const auto slot = [&](const char* k) { return state.slots.at(k)[i]; };
    std::array<torch::Tensor, 5> acc = {slot("mom"), slot("rms"), slot("fac_vec_row"), slot("fac_vec_col"), slot("fac_vec_v")};
    torch::Tensor p_new, m = slot("exp_avg"), v = slot("exp_avg_sq");
    if (uses_adamw(state.params, i)) {
      const auto on = torch::TensorOptions().dtype(torch::kFloat64);
      std::tie(p_new, m, v) = adamw_step(p, g, m, v, torch::tensor(lr_t * config_.adam_lr_mult, on), torch::tensor(t, on));
    } else {
      std::array<torch::Tensor, 5> next;
      const auto step = learned_step(p, g, acc[0], acc[1], acc[2], acc[3], acc[4], next);
      p_new = p - lr_t * (step + config_.weight_decay * p);
      acc = next;
    }
    out.params.tensors.push_back(p_new);
    const char* names[5] = {"mom", "rms", "fac_vec_row", "fac_vec_col", "fac_vec_v"};
    for (int k = 0; k < 5; ++k) out.slots[names[k]].push_back(acc[static_cast<size_t>(k)]);
    out.slots["exp_avg"].push_back(m);
    out.slots["exp_avg_sq"].push_back(v);
  }
  return out;
}

std::vector<torch::Tensor> Celo2Optimizer::pre_orthogonal_directions(const OptState& state,
                                                                     const std::vector<torch::Tensor>& grads_in,
                                                                     const torch::Tensor&) const {
  check_grads(state, grads_in, "Celo2Optimizer::pre_orthogonal_directions");
  torch::NoGradGuard no_grad;
  std::vector<torch::Tensor> out(grads_in.size());
  if (!config_.orthogonalize) return out;
  const std::vector<torch::Tensor> grads = clipped(grads_in);
  for (size_t i = 0; i < grads.size(); ++i) {
    const auto& p = state.params.tensors[i];
    if (uses_adamw(state.params, i) || p.dim() < 2) continue;
    const auto slot = [&](const char* k) { return state.slots.at(k)[i]; };
    std::array<torch::Tensor, 5> next;
    torch::Tensor direction;
    learned_step(p, grads[i], slot("mom"), slot("rms"), slot("fac_vec_row"), slot("fac_vec_col"), slot("fac_vec_v"), next,
                 nullptr, nullptr, &direction);
    out[i] = direction.reshape(p.sizes());
  }
  return out;
}

bool Celo2Optimizer::fuses(const ParamSet& params, size_t i) const {
  const auto& p = params.tensors[i];
  return config_.impl == "fused" && fused_net_.hidden > 0 && !uses_adamw(params, i) && p.dim() == 2 &&
         p.device().is_cpu() && p.scalar_type() == torch::kFloat32 && p.numel() > 0;
}

void Celo2Optimizer::update_(OptState& state, const std::vector<torch::Tensor>& grads, const torch::Tensor& loss) const {
  torch::NoGradGuard no_grad;
  if (config_.impl == "tensor") {
    state = update(state, grads, loss);
    return;
  }
  check_grads(state, grads, "Celo2Optimizer::update_");
  std::vector<PopulationMember> one = {{this, &state, grads, loss}};
  step_stacked_(one);
}

void Celo2Optimizer::update_many_(std::vector<PopulationMember>& members) const {
  torch::NoGradGuard no_grad;
  if (members.size() < 2) return Optimizer::update_many_(members);
  const ParamSet& first = members.front().state->params;
  for (const auto& mb : members) {
    const auto* o = dynamic_cast<const Celo2Optimizer*>(mb.opt);
    bool stackable = o && o->config_key_ == config_key_ && mb.state->params.size() == first.size() &&
                     o->theta_.device() == theta_.device();
    for (size_t i = 0; stackable && i < first.size(); ++i)
      stackable = mb.state->params.tensors[i].sizes() == first.tensors[i].sizes() &&
                  mb.state->params.info[i].role == first.info[i].role;
    if (!stackable) return Optimizer::update_many_(members);
    check_grads(*mb.state, mb.grads, "Celo2Optimizer::update_many_");
  }
  step_stacked_(members);
}

void Celo2Optimizer::step_stacked_(std::vector<PopulationMember>& members) const {
  const int64_t M = static_cast<int64_t>(members.size());
  std::vector<const Celo2Optimizer*> opts;
  for (const auto& mb : members) opts.push_back(static_cast<const Celo2Optimizer*>(mb.opt));
  const ParamSet& first = members.front().state->params;
  // Member m's tensor get(m), stacked along a new dimension 0.
  auto stacked = [&](auto&& get) {
    std::vector<torch::Tensor> parts;
    for (int64_t m = 0; m < M; ++m) parts.push_back(get(m));
    return torch::stack(parts);
  };
  auto stack_of = [&](auto&& get) { return stacked([&](int64_t m) { return get(*opts[static_cast<size_t>(m)]); }); };
  Net net;  // built when a tensor takes the batched tensor ops
  auto batched_net = [&]() -> const Net& {
    if (net.batched) return net;
    net.batched = true;
    net.w0 = stack_of([](const Celo2Optimizer& o) { return o.w0_; });
    net.b0 = stack_of([](const Celo2Optimizer& o) { return o.named_.at("b0"); });
    for (size_t l = 0; l < dense_w_.size(); ++l) {
      net.w.push_back(stack_of([&](const Celo2Optimizer& o) { return o.dense_w_[l]; }));
      net.b.push_back(stack_of([&](const Celo2Optimizer& o) { return o.dense_b_[l]; }));
    }
    return net;
  };
  // Without global-norm clipping the clamp is per tensor: the kernel applies it as it reads g (no
  // copy), the tensor ops below clamp their own tensors.
  const bool global_clip = config_.max_grad_norm > 0;
  std::vector<std::vector<torch::Tensor>> grads;
  for (const auto& mb : members) grads.push_back(global_clip ? clipped(mb.grads) : mb.grads);
  static const char* kAcc[5] = {"mom", "rms", "fac_vec_row", "fac_vec_col", "fac_vec_v"};
  const auto lr_of = [&](int64_t step, const ParamInfo& info) { return config_.lr * (*schedule_)(step) * mup_mult(info); };
  // Per-member factors as tensors [M, 1, ...] of rank `rank`: the scalars update() applies, rounded alike.
  auto per_member = [&](size_t i, int64_t rank, torch::ScalarType type, const torch::Device& dev, auto&& f) {
    std::vector<int64_t> bshape(static_cast<size_t>(rank), 1);
    bshape[0] = M;
    std::vector<double> v;
    for (int64_t m = 0; m < M; ++m) v.push_back(f(members[m].state->step, members[m].state->params.info[i]));
    return torch::tensor(v, torch::kFloat64).to(torch::TensorOptions().dtype(type).device(dev)).view(bshape);
  };

  // The fused matrices of every member: one kernel call writes their steps (before lr) to `outs`.
  std::vector<detail::FusedJob> jobs;
  std::vector<std::vector<torch::Tensor>> outs(first.size());
  std::vector<std::vector<double>> out_sumsq(first.size());
  for (size_t i = 0; i < first.size(); ++i) {
    if (!fuses(first, i)) continue;
    outs[i].reserve(static_cast<size_t>(M));  // the jobs point into them
    out_sumsq[i].assign(static_cast<size_t>(M), 0.0);
    for (int64_t m = 0; m < M; ++m) {
      OptState& s = *members[m].state;
      for (const char* k : kAcc)
        if (!s.slots.at(k)[i].is_contiguous()) s.slots.at(k)[i] = s.slots.at(k)[i].contiguous();
      outs[i].push_back(torch::empty({s.params.tensors[i].numel()}, torch::kFloat32));
      jobs.push_back({nullptr, &opts[static_cast<size_t>(m)]->fused_net_, &s.params.tensors[i], grads[m][i],
                      {&s.slots.at("mom")[i], &s.slots.at("rms")[i], &s.slots.at("fac_vec_row")[i],
                       &s.slots.at("fac_vec_col")[i], &s.slots.at("fac_vec_v")[i]},
                      0.0, s.step});
      jobs.back().out = &outs[i].back();
      jobs.back().grad_clip = static_cast<float>(config_.grad_clip);
      if (!config_.orthogonalize) jobs.back().out_sumsq = &out_sumsq[i][static_cast<size_t>(m)];
    }
  }
  if (!jobs.empty()) detail::fused_lopt_steps(jobs);
  // p -= lr (rmsmult * step / rms(step) + wd p) in place for member m's tensor i, given the step's
  // sum of squares (Celo2's second-moment normalisation of a fused step).
  const auto apply_normalised = [&](int64_t m, size_t i, const float* step, double sumsq) {
    OptState& s = *members[m].state;
    torch::Tensor& p = s.params.tensors[i];
    if (!p.is_contiguous()) p = p.contiguous();
    const double n = static_cast<double>(p.numel());
    const double scale = config_.rmsmult / std::sqrt(sumsq / n + kNormalizerEps);
    detail::apply_step_(p.data_ptr<float>(), step, p.numel(), static_cast<float>(lr_of(s.step, s.params.info[i])),
                        static_cast<float>(scale), static_cast<float>(config_.weight_decay));
  };

  for (size_t i = 0; i < first.size(); ++i) {
    if (!outs[i].empty() && !config_.orthogonalize) {
      // Fused Celo2-base: each member's step normalised by its RMS from the kernel, applied in place.
      for (int64_t m = 0; m < M; ++m)
        apply_normalised(m, i, outs[i][static_cast<size_t>(m)].data_ptr<float>(), out_sumsq[i][static_cast<size_t>(m)]);
      continue;
    }
    if (!outs[i].empty()) {
      // Fused Celo2: the members' steps [M, rows, cols], orthogonalised as one batch, then each
      // member's slice normalised by its RMS and applied in place (no stacked copy of p).
      const auto& p0 = first.tensors[i];
      auto step = (M == 1 ? outs[i][0] : torch::stack(outs[i])).view({M, p0.size(0), p0.size(1)});
      step = newton_schulz_batched(step, config_.ns_steps, {config_.ns_coeffs[0], config_.ns_coeffs[1], config_.ns_coeffs[2]},
                                   config_.ns_eps)
                 .contiguous();
      const int64_t n = p0.numel();
      const float* st = step.data_ptr<float>();
      for (int64_t m = 0; m < M; ++m) {
        const float* sm = st + m * n;
        double sumsq = 0;
        for (int64_t e = 0; e < n; ++e) sumsq += static_cast<double>(sm[e]) * sm[e];
        apply_normalised(m, i, sm, sumsq);
      }
      continue;  // the accumulators were updated in place
    }
    const auto p = M == 1 ? members[0].state->params.tensors[i].unsqueeze(0)
                          : stacked([&](int64_t m) { return members[m].state->params.tensors[i]; });
    const auto lr = per_member(i, p.dim(), p.scalar_type(), p.device(), lr_of);
    torch::Tensor p_new;
    auto g = stacked([&](int64_t m) { return grads[m][i]; });
    if (!global_clip) g = g.clamp(-config_.grad_clip, config_.grad_clip);
    const auto slot = [&](const char* k) { return stacked([&](int64_t m) { return members[m].state->slots.at(k)[i]; }); };
    torch::Tensor exp_avg = slot("exp_avg"), exp_avg_sq = slot("exp_avg_sq");
    // The learned step's accumulators (an AdamW tensor leaves its own untouched).
    const bool adamw = uses_adamw(first, i);
    std::array<torch::Tensor, 5> acc;
    if (!adamw)
      for (int k = 0; k < 5; ++k) acc[static_cast<size_t>(k)] = slot(kAcc[k]);
    if (adamw) {
      std::tie(p_new, exp_avg, exp_avg_sq) =
          adamw_step(p, g, exp_avg, exp_avg_sq,
                     per_member(i, p.dim(), torch::kFloat64, p.device(),
                                [&](int64_t s, const ParamInfo& in) { return lr_of(s, in) * config_.adam_lr_mult; }),
                     per_member(i, p.dim(), torch::kFloat64, p.device(),
                                [](int64_t s, const ParamInfo&) { return static_cast<double>(s + 1); }));
    } else {
      std::array<torch::Tensor, 5> next;
      const auto step = learned_step(batched_net(), p, g, acc[0], acc[1], acc[2], acc[3], acc[4], next, nullptr, nullptr, nullptr);
      p_new = p - lr * (step + config_.weight_decay * p);
      acc = next;
    }
    for (int64_t m = 0; m < M; ++m) {
      OptState& s = *members[m].state;
      s.params.tensors[i] = p_new[m];
      if (!adamw)
        for (int k = 0; k < 5; ++k) s.slots[kAcc[k]][i] = acc[static_cast<size_t>(k)][m];
      s.slots["exp_avg"][i] = exp_avg[m];
      s.slots["exp_avg_sq"][i] = exp_avg_sq[m];
    }
  }
  for (auto& mb : members) mb.state->step += 1;
}

double Celo2Optimizer::lr_at(int64_t step, const ParamInfo& info) const {
  // The AdamW tensors' lr is lr x adam_lr_mult; a vector's role says which branch (embeddings: AdamW).
  const bool adamw = config_.adamw_for_1d && (info.role == ParamRole::embedding || info.role == ParamRole::bias ||
                                               info.role == ParamRole::norm_gain);
  return config_.lr * (adamw ? config_.adam_lr_mult : 1.0) * mup_mult(info) * (*schedule_)(step);
}

double Celo2Optimizer::mup_mult(const ParamInfo& info) const {
  return config_.mup ? MupParametrization().lr_mult(info) : 1.0;
}

nlohmann::json Celo2Optimizer::hyperparams() const {
  auto j = config_.to_json();
  j.update(provenance_);
  return j;
}

}  // namespace lopt
