#include "optimizers/small_fc_lopt/small_fc_lopt.h"

#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <numeric>

#include "common/config.h"
#include "common/device.h"
#include "common/errors.h"
#include "optimizers/lo_features.h"
#include "optimizers/lopt_eps.h"
#include "optimizers/safetensors.h"
#include "parametrization/parametrization.h"

namespace lopt {

// ------------------------------------------------------------------ config

SmallFcLoptConfig SmallFcLoptConfig::from_json(const nlohmann::json& j, const std::string& path) {
  ConfigReader r(j, path);
  auto type = r.get<std::string>("type", "mulo");
  config_check(type == "mulo" || type == "small_fc_lopt" || type == "elo", r.path_of("type"),
               "unknown learned optimizer \"" + type + "\" (valid: elo, mulo, small_fc_lopt)");
  SmallFcLoptConfig c;
  c.mup = type == "mulo";
  c.elo = type == "elo";
  if (c.elo) {
    config_check(!r.has("step_mult"), r.path_of("step_mult"),
                 "ELO has no step_mult: its step is lr x direction x exp(exp_mult x magnitude); set lr");
    c.step_mult = 1.0;
    c.lr = 1e-3;  // PyLO ELO_naive's default
  }
  c.hidden_size = r.get<int64_t>("hidden_size", c.hidden_size);
  c.hidden_layers = r.get<int64_t>("hidden_layers", c.hidden_layers);
  c.step_mult = r.get<double>("step_mult", c.step_mult);
  c.exp_mult = r.get<double>("exp_mult", c.exp_mult);
  c.lr = r.get<double>("lr", c.lr);
  c.weight_decay = r.get<double>("weight_decay", c.weight_decay);
  c.max_grad_norm = r.get<double>("max_grad_norm", c.max_grad_norm);
  c.time_features_max_step = r.get<int64_t>("time_features_max_step", c.time_features_max_step);
  if (auto sched = r.object("schedule"); !sched.empty()) c.schedule = make_schedule(sched, r.path_of("schedule"))->hyperparams();
  c.initial_momentum_decays = r.get<std::vector<double>>("initial_momentum_decays", c.initial_momentum_decays);
  c.initial_rms_decays = r.get<std::vector<double>>("initial_rms_decays", c.initial_rms_decays);
  c.initial_adafactor_decays = r.get<std::vector<double>>("initial_adafactor_decays", c.initial_adafactor_decays);
  c.impl = r.get<std::string>("impl", c.impl);
  c.worker_inputs = r.get<int64_t>("worker_inputs", c.worker_inputs);
  r.finish();
  config_check(c.worker_inputs >= 0, r.path_of("worker_inputs"), "must be >= 0 (the number of local-SGD workers for LAgg-A; 0 = off)");
  config_check(c.hidden_size >= 1, r.path_of("hidden_size"), "must be >= 1");
  config_check(c.hidden_layers >= 0, r.path_of("hidden_layers"), "must be >= 0");
  config_check(c.lr >= 0, r.path_of("lr"), "must be >= 0");
  config_check(c.weight_decay >= 0, r.path_of("weight_decay"), "must be >= 0");
  config_check(c.max_grad_norm >= 0, r.path_of("max_grad_norm"), "must be >= 0 (0 = no clipping)");
  config_check(c.time_features_max_step >= 0, r.path_of("time_features_max_step"), "must be >= 0 (0 = off)");
  config_check(c.initial_momentum_decays.size() == 3, r.path_of("initial_momentum_decays"), "needs 3 values");
  config_check(c.initial_rms_decays.size() == 1, r.path_of("initial_rms_decays"), "needs 1 value");
  config_check(c.initial_adafactor_decays.size() == 3, r.path_of("initial_adafactor_decays"), "needs 3 values");
  config_check(c.impl == "fused" || c.impl == "tensor" || c.impl == "gpu", r.path_of("impl"),
               "must be \"fused\", \"tensor\" or \"gpu\"");
  return c;
}

nlohmann::json SmallFcLoptConfig::to_json() const {
  nlohmann::json j = {{"type", elo ? "elo" : mup ? "mulo" : "small_fc_lopt"},
          {"hidden_size", hidden_size},
          {"hidden_layers", hidden_layers},
          {"step_mult", step_mult},
          {"exp_mult", exp_mult},
          {"lr", lr},
          {"weight_decay", weight_decay},
          {"max_grad_norm", max_grad_norm},
          {"initial_momentum_decays", initial_momentum_decays},
          {"initial_rms_decays", initial_rms_decays},
          {"initial_adafactor_decays", initial_adafactor_decays},
          {"impl", impl}};
  // Only when set, so that resolved configs (and the run files keyed by them) stay as before.
  if (time_features_max_step > 0) j["time_features_max_step"] = time_features_max_step;
  if (schedule.value("type", std::string("constant")) != "constant") j["schedule"] = schedule;
  if (worker_inputs > 0) j["worker_inputs"] = worker_inputs;
  if (elo) j.erase("step_mult");
  return j;
}

int64_t SmallFcLoptConfig::num_inputs() const { return kLoptInputs + worker_inputs; }

std::unique_ptr<SmallFcLopt> make_small_fc_lopt(const nlohmann::json& config, const std::string& path) {
  return std::make_unique<SmallFcLopt>(SmallFcLoptConfig::from_json(config, path));
}

// ------------------------------------------------------------------ theta

SmallFcLopt::SmallFcLopt(SmallFcLoptConfig config) : config_(std::move(config)) {}

std::vector<std::pair<std::string, std::vector<int64_t>>> SmallFcLopt::theta_layout() const {
  const int64_t h = config_.hidden_size;
  std::vector<std::pair<std::string, std::vector<int64_t>>> l;
  l.push_back({"network.input.weight", {h, config_.num_inputs()}});
  l.push_back({"network.input.bias", {h}});
  for (int64_t i = 0; i < config_.hidden_layers; ++i) {
    l.push_back({"network.linear_" + std::to_string(i) + ".weight", {h, h}});
    l.push_back({"network.linear_" + std::to_string(i) + ".bias", {h}});
  }
  l.push_back({"network.output.weight", {2, h}});
  l.push_back({"network.output.bias", {2}});
  if (config_.elo) return l;  // ELO: raw decays, nothing to learn
  l.push_back({"momentum_decays", {3}});
  l.push_back({"rms_decays", {1}});
  l.push_back({"adafactor_decays", {3}});
  return l;
}

int64_t SmallFcLopt::num_theta() const {
  int64_t n = 0;
  for (const auto& [name, shape] : theta_layout())
    n += std::accumulate(shape.begin(), shape.end(), int64_t(1), std::multiplies<int64_t>());
  return n;
}

std::map<std::string, torch::Tensor> SmallFcLopt::unflatten(const torch::Tensor& theta) const {
  TORCH_CHECK(theta.dim() == 1 && theta.size(0) == num_theta(), "SmallFcLopt: theta must be [", num_theta(),
              "], got ", theta.sizes());
  std::map<std::string, torch::Tensor> out;
  int64_t off = 0;
  for (const auto& [name, shape] : theta_layout()) {
    int64_t n = std::accumulate(shape.begin(), shape.end(), int64_t(1), std::multiplies<int64_t>());
    out[name] = theta.narrow(0, off, n).view(shape);
    off += n;
  }
  return out;
}

torch::Tensor SmallFcLopt::flatten(const std::map<std::string, torch::Tensor>& named) const {
  std::vector<torch::Tensor> parts;
  for (const auto& [name, shape] : theta_layout()) {
    auto it = named.find(name);
    if (it == named.end()) {
      TORCH_CHECK(name.rfind("network.", 0) != 0, "SmallFcLopt::flatten: missing ", name);
      parts.push_back(torch::zeros(shape));
      continue;
    }
    TORCH_CHECK(it->second.sizes() == torch::IntArrayRef(shape), "SmallFcLopt::flatten: ", name, " has shape ",
                it->second.sizes(), ", expected ", torch::IntArrayRef(shape));
    parts.push_back(it->second.reshape({-1}).to(torch::kFloat32));
  }
  return torch::cat(parts);
}

torch::Tensor SmallFcLopt::init_theta(at::Generator& gen) const {
  // torch.nn.Linear's default init (as PyLO's MetaMLP): U(-1/sqrt(fan_in), 1/sqrt(fan_in)); offsets 0.
  std::map<std::string, torch::Tensor> named;
  for (const auto& [name, shape] : theta_layout()) {
    if (name.rfind("network.", 0) != 0) continue;
    bool is_weight = name.size() > 7 && name.substr(name.size() - 7) == ".weight";
    int64_t fan_in = is_weight ? shape[1] : (name.find("input") != std::string::npos ? config_.num_inputs() : config_.hidden_size);
    double bound = 1.0 / std::sqrt(static_cast<double>(fan_in));
    named[name] = torch::rand(shape, gen).mul_(2 * bound).sub_(bound);
  }
  return flatten(named);
}

namespace {

// PyLO's default decay offsets (the MuLO / AdafacLO constructor defaults, i.e. the offsets shipped
// with its pretrained MetaMLP; tests/data/pylo_mulo_golden.json "constructor_defaults").
const std::map<std::string, std::vector<float>> kPyloDefaultOffsets = {
    {"momentum_decays", {0.15216392f, 0.14245212f, 0.06812963f}},
    {"rms_decays", {0.01079706f}},
    {"adafactor_decays", {0.18621896f, -0.10864615f, -0.06185547f}}};


}  // namespace

void SmallFcLopt::save(const std::string& path, const torch::Tensor& theta) const {
  SafeTensors st;
  for (const auto& [name, t] : unflatten(theta.detach())) {
    if (name.rfind("network.", 0) == 0) {
      st.tensors[name] = t;
    } else {
      std::vector<float> v(t.data_ptr<float>(), t.data_ptr<float>() + t.numel());
      st.metadata[name] = nlohmann::json(v).dump();
    }
  }
  st.metadata["lopt_config"] = config_.to_json().dump();
  write_safetensors(path, st);
}

void SmallFcLopt::save_hub(const std::string& dir, const torch::Tensor& theta) const {
  std::filesystem::create_directories(dir);
  save((std::filesystem::path(dir) / "model.safetensors").string(), theta);
  // PyTorchModelHubMixin's config.json: MetaMLP's constructor arguments.
  const nlohmann::json cfg = {{"input_size", config_.num_inputs()}, {"hidden_size", config_.hidden_size},
                              {"hidden_layers", config_.hidden_layers}};
  write_text_atomic((std::filesystem::path(dir) / "config.json").string(), cfg.dump(2) + "\n");
}

torch::Tensor SmallFcLopt::load(const std::string& checkpoint) const {
  const std::string path = checkpoint_weights_file(checkpoint);
  auto st = read_safetensors(path);
  std::map<std::string, torch::Tensor> named;
  for (const auto& [name, shape] : theta_layout()) {
    if (name.rfind("network.", 0) == 0) {
      auto it = st.tensors.find(name);
      if (it == st.tensors.end())
        throw IoError(path, "missing tensor '" + name + "' (expected PyLO MetaMLP names, hidden_size " +
                                std::to_string(config_.hidden_size) + ", hidden_layers " +
                                std::to_string(config_.hidden_layers) + ")");
      if (it->second.sizes() != torch::IntArrayRef(shape))
        throw IoError(path, "tensor '" + name + "' has shape " + c10::str(it->second.sizes()) + ", expected " +
                                c10::str(torch::IntArrayRef(shape)) + " (check hidden_size)");
      named[name] = it->second.to(torch::kFloat32);
    } else if (auto m = st.metadata.find(name); m != st.metadata.end()) {
      try {
        auto v = nlohmann::json::parse(m->second).get<std::vector<float>>();
        if (static_cast<int64_t>(v.size()) != shape[0]) throw std::runtime_error("wrong length");
        named[name] = torch::tensor(v);
      } catch (const std::exception&) {
        throw IoError(path, "metadata '" + name + "' must be a JSON list of " + std::to_string(shape[0]) + " numbers");
      }
    } else {
      named[name] = torch::tensor(kPyloDefaultOffsets.at(name));  // a PyLO file: PyLO's defaults
    }
  }
  for (const auto& [name, t] : st.tensors) {
    bool known = false;
    for (const auto& [n, s] : theta_layout()) known |= n == name;
    if (!known) throw IoError(path, "unexpected tensor '" + name + "' (more MLP layers than hidden_layers=" +
                                        std::to_string(config_.hidden_layers) + "?)");
  }
  return flatten(named);
}

CheckpointConfig read_checkpoint_config(const std::string& checkpoint) {
  CheckpointConfig out;
  out.config = stored_checkpoint_config(checkpoint);
  if (out.config.is_object()) {
    out.from_lopt = true;
    return out;
  }
  const std::string path = checkpoint_weights_file(checkpoint);
  auto st = read_safetensors(path);
  // PyLO: the MetaMLP geometry from the tensors (and config.json of a hub folder), the rest PyLO's defaults.
  int64_t hidden_layers = 0;
  while (st.tensors.count("network.linear_" + std::to_string(hidden_layers) + ".weight")) ++hidden_layers;
  auto in = st.tensors.find("network.input.weight");
  if (in == st.tensors.end() || in->second.dim() != 2)
    throw IoError(path, "no 'network.input.weight' [hidden, 39] tensor and no lopt metadata",
                  "not a small_fc_lopt / muLO checkpoint (lopt or PyLO MetaMLP)");
  out.config = {{"hidden_size", in->second.size(0)}, {"hidden_layers", hidden_layers}, {"step_mult", 1e-2},
                {"exp_mult", 1e-3}, {"initial_momentum_decays", {0.9, 0.99, 0.999}},
                {"initial_rms_decays", {0.999}}, {"initial_adafactor_decays", {0.9, 0.99, 0.999}}};
  if (std::filesystem::is_directory(checkpoint)) {
    const auto cfg_path = (std::filesystem::path(checkpoint) / "config.json").string();
    if (std::filesystem::exists(cfg_path)) {
      nlohmann::json hub;
      try {
        hub = load_json_file(cfg_path);
      } catch (const ConfigError&) {
        throw IoError(cfg_path, "not valid JSON", "a PyTorchModelHubMixin config.json");
      }
      for (const char* k : {"hidden_size", "hidden_layers"})
        if (hub.contains(k) && hub[k] != out.config[k])
          throw IoError(cfg_path, std::string(k) + " " + hub[k].dump() + " disagrees with model.safetensors (" +
                                      out.config[k].dump() + ")");
    }
  }
  out.from_lopt = false;
  return out;
}

nlohmann::json resolve_checkpoint_config(const nlohmann::json& config, const std::string& checkpoint,
                                         const std::string& path) {
  // What a checkpoint decides: its architecture and the hyperparameters theta was meta-trained with.
  static const std::vector<std::string> kOwned = {"type", "hidden_size", "hidden_layers", "step_mult", "exp_mult",
                                                  "initial_momentum_decays", "initial_rms_decays",
                                                  "initial_adafactor_decays", "worker_inputs"};
  check_foreign_network(checkpoint, "MetaMLP", path);
  const auto stored = read_checkpoint_config(checkpoint);
  // a PyLO file does not say whether it is muP (no "type"): the config does
  auto out = complete_from_checkpoint(config, stored.config, kOwned, checkpoint, path);
  if (!stored.from_lopt)
    note_once(checkpoint + " has no lopt metadata (a PyLO checkpoint): PyLO's defaults for step_mult 0.01, exp_mult "
              "1e-3 and the decays and their offsets; type \"" + out.value("type", std::string("mulo")) + "\" from the config");
  return out;
}

nlohmann::json resolve_elo_checkpoint(const nlohmann::json& config, const std::string& checkpoint,
                                      const std::string& path) {
  static const std::vector<std::string> kOwned = {"type", "hidden_size", "hidden_layers", "exp_mult",
                                                  "initial_momentum_decays", "initial_rms_decays",
                                                  "initial_adafactor_decays"};
  check_foreign_network(checkpoint, "MetaMLP", path);
  const auto stored = read_checkpoint_config(checkpoint);
  if (!stored.from_lopt)
    note_once(checkpoint + " has no lopt metadata (a PyLO MetaMLP checkpoint): PyLO's defaults for exp_mult 1e-3 and the decays");
  return complete_from_checkpoint(config, stored.config, kOwned, checkpoint, path);
}

nlohmann::json SmallFcLopt::hyperparams() const { return config_.to_json(); }

std::unique_ptr<Optimizer> SmallFcLopt::bind(const torch::Tensor& theta, const nlohmann::json& provenance) const {
  auto out = std::make_unique<SmallFcLoptOptimizer>(*this, theta);
  out->set_provenance(provenance);
  return out;
}

// ------------------------------------------------------------------ bound optimizer

SmallFcLoptOptimizer::SmallFcLoptOptimizer(const SmallFcLopt& lopt, torch::Tensor theta)
    // theta follows the run's device (differentiably: truncated backprop reaches the host theta)
    : config_(lopt.config()), theta_(on_compute_device(theta)), named_(lopt.unflatten(theta_)),
      schedule_(make_schedule(config_.schedule, "/optimizer/schedule")) {
  weights_.push_back(named_.at("network.input.weight"));
  biases_.push_back(named_.at("network.input.bias"));
  for (int64_t i = 0; i < config_.hidden_layers; ++i) {
    weights_.push_back(named_.at("network.linear_" + std::to_string(i) + ".weight"));
    biases_.push_back(named_.at("network.linear_" + std::to_string(i) + ".bias"));
  }
  weights_.push_back(named_.at("network.output.weight"));
  biases_.push_back(named_.at("network.output.bias"));
}

nlohmann::json SmallFcLoptOptimizer::hyperparams() const {
  auto j = config_.to_json();
  j.update(provenance_);
  return j;
}

void SmallFcLoptOptimizer::aggregate_(OptState& state, const std::vector<torch::Tensor>& mean_delta,
                                      const std::vector<torch::Tensor>& worker_deltas, const torch::Tensor&) const {
  TORCH_CHECK(config_.worker_inputs > 0, "aggregate_: this learned optimizer has worker_inputs 0 (not LAgg-A)");
  torch::NoGradGuard no_grad;
  state = step(state, mean_delta, nullptr, nullptr, &worker_deltas);
}

double SmallFcLoptOptimizer::lr_for(const ParamInfo& info) const {
  // PyLO MuLO_naive: matrix-like tensors (both dims infinite) get lr / width_mult; weight decay
  // is not rescaled (unlike mup.MuAdam).
  if (!config_.mup) return config_.lr;
  return config_.lr * MupParametrization().lr_mult(info);
}

double SmallFcLoptOptimizer::lr_at(int64_t step, const ParamInfo& info) const { return lr_for(info) * (*schedule_)(step); }

const SmallFcLoptOptimizer::FusedConstants& SmallFcLoptOptimizer::fused_constants() const {
  std::call_once(fused_once_, [&] {
    torch::NoGradGuard no_grad;
    auto c = std::make_shared<FusedConstants>();
    auto d = decays();
    auto m = d.mom.cpu().contiguous(), f = d.fac.cpu().contiguous();
    for (int k = 0; k < 3; ++k) {
      c->mom_decay[k] = m.data_ptr<float>()[k];
      c->fac_decay[k] = f.data_ptr<float>()[k];
    }
    c->rms_decay = d.rms.item<float>();
    auto as_vec = [](const torch::Tensor& t) {
      auto x = t.detach().to(torch::kFloat32).cpu().contiguous();
      return std::vector<float>(x.data_ptr<float>(), x.data_ptr<float>() + x.numel());
    };
    for (size_t l = 0; l < weights_.size(); ++l) {
      c->weights.push_back(as_vec(weights_[l]));
      c->biases.push_back(as_vec(biases_[l]));
    }
    // The fused CPU step's form: the first layer's columns in the kernel's feature order (16
    // per-element features, then the 12 row / column ones), the time features as extra inputs.
    static constexpr int kOrder[kLoptTensorFeatures] = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 25, 26, 27,
                                                         13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24};
    detail::FusedNet& n = c->net;
    std::copy(c->mom_decay, c->mom_decay + 3, n.mom_decay);
    std::copy(c->fac_decay, c->fac_decay + 3, n.fac_decay);
    n.rms_decay = c->rms_decay;
    n.rms_eps = lo_eps::kRmsF;
    n.normalizer_eps = lo_eps::kNormalizer;
    n.hidden = static_cast<int>(config_.hidden_size);
    n.n_extra = static_cast<int>(kLoptTimeFeatures);
    const auto& w0 = c->weights.front();
    for (int j = 0; j < n.hidden; ++j) {
      for (int i = 0; i < kLoptTensorFeatures; ++i) n.w_in.push_back(w0[static_cast<size_t>(j * kLoptInputs + kOrder[i])]);
      for (int s = 0; s < n.n_extra; ++s) n.w_extra.push_back(w0[static_cast<size_t>(j * kLoptInputs + kLoptTensorFeatures + s)]);
    }
    n.b_in = c->biases.front();
    for (size_t l = 1; l + 1 < c->weights.size(); ++l) {
      n.w_hidden.push_back(c->weights[l]);
      n.b_hidden.push_back(c->biases[l]);
    }
    n.w_out = c->weights.back();
    n.b_out = c->biases.back();
    n.exp_mult = static_cast<float>(config_.exp_mult);
    n.step_mult = static_cast<float>(config_.step_mult);
    n.weight_decay = config_.weight_decay;
    n.decay_on_old = config_.elo;
    fused_ = c;
  });
  return *fused_;
}

torch::Tensor SmallFcLoptOptimizer::packed_mlp(const torch::Device& device) const {
  std::lock_guard<std::mutex> lock(packed_mutex_);
  auto& t = packed_[device.str()];
  if (!t.defined()) {
    const auto& K = fused_constants();
    std::vector<float> flat;
    for (size_t l = 0; l < K.weights.size(); ++l) {
      flat.insert(flat.end(), K.weights[l].begin(), K.weights[l].end());
      flat.insert(flat.end(), K.biases[l].begin(), K.biases[l].end());
    }
    t = torch::tensor(flat).to(device);
  }
  return t;
}

SmallFcLoptOptimizer::Decays SmallFcLoptOptimizer::decays() const {
  if (config_.elo) {
    // ELO (PyLO ELO_naive): the decays as given, no reparameterisation.
    auto raw = [&](const std::vector<double>& d) {
      return torch::tensor(std::vector<float>(d.begin(), d.end())).to(theta_.device());
    };
    return {raw(config_.initial_momentum_decays), raw(config_.initial_rms_decays), raw(config_.initial_adafactor_decays)};
  }
  // beta = clip(1 - (1 - initial) * exp(10 * offset), 0, 1)  (learned_optimization reparam_decay=10)
  auto conv = [&](const std::vector<double>& init, const torch::Tensor& off) {
    auto one_minus = torch::tensor(std::vector<float>(init.begin(), init.end())).to(off.device()).neg().add(1.0);
    return (1 - one_minus * torch::exp(10 * off)).clamp(0.0, 1.0);
  };
  return {conv(config_.initial_momentum_decays, named_.at("momentum_decays")),
          conv(config_.initial_rms_decays, named_.at("rms_decays")),
          conv(config_.initial_adafactor_decays, named_.at("adafactor_decays"))};
}

namespace {
std::vector<int64_t> with_last(std::vector<int64_t> s, int64_t n) {
  s.push_back(n);
  return s;
}
}  // namespace

OptState SmallFcLoptOptimizer::init(const ParamSet& params) const {
  OptState s;
  s.params = params;
  for (const auto& p : params.tensors) lo::append_accumulator_slots(p, 3, 1, 3, s.slots);
  return s;
}

namespace {
/// Global-norm clipping factor min(1, max_norm / (norm + 1e-6)) as torch.nn.utils.clip_grad_norm_.
torch::Tensor clip_scale(const std::vector<torch::Tensor>& grads, double max_norm) {
  auto total = torch::zeros({}, torch::kFloat64);
  for (const auto& g : grads) total = total + g.to(torch::kFloat64).square().sum();
  return (max_norm / (total.sqrt() + lo_eps::kClipNorm)).clamp_max(1.0).to(torch::kFloat32);
}

/// The gradients the step sees: clipped to max_grad_norm when set (torch's clip_grad_norm_; ELO:
/// optax's clip_by_global_norm, max_norm / max(norm, max_norm)); ELO also replaces NaN / inf
/// (torch.nan_to_num).
std::vector<torch::Tensor> prepared_grads(const SmallFcLoptConfig& config, const std::vector<torch::Tensor>& grads_in) {
  std::vector<torch::Tensor> grads = grads_in;
  if (config.elo)
    for (auto& g : grads) g = torch::nan_to_num(g);
  if (config.max_grad_norm > 0) {
    torch::Tensor scale;
    if (config.elo) {
      auto total = torch::zeros({}, torch::kFloat64);
      for (const auto& g : grads) total = total + g.to(torch::kFloat64).square().sum();
      scale = (config.max_grad_norm / total.sqrt().clamp_min(config.max_grad_norm)).to(torch::kFloat32);
    } else {
      scale = clip_scale(grads, config.max_grad_norm);
    }
    for (auto& g : grads) g = g * scale;
  }
  return grads;
}
}  // namespace

OptState SmallFcLoptOptimizer::update(const OptState& state, const std::vector<torch::Tensor>& grads,
                                      const torch::Tensor&) const {
  return step(state, grads, nullptr, nullptr);
}

// Follows PyLO MuLO_naive.step / AdafacLO_naive.step (feature order in kLopt* and the golden file).
OptState SmallFcLoptOptimizer::step(const OptState& state, const std::vector<torch::Tensor>& grads_in,
                                    std::vector<torch::Tensor>* mlp_inputs,
                                    std::vector<torch::Tensor>* mlp_outputs,
                                    const std::vector<torch::Tensor>* worker_deltas) const {
  check_grads(state, grads_in, "SmallFcLoptOptimizer::update");
  TORCH_CHECK((config_.worker_inputs > 0) == (worker_deltas != nullptr),
              config_.worker_inputs > 0 ? "a learned aggregator (worker_inputs > 0) steps only through a GlobalUpdate, which passes the workers' deltas"
                                        : "worker deltas given to a learned optimizer without worker_inputs");
  if (worker_deltas) TORCH_CHECK(worker_deltas->size() == grads_in.size(), "SmallFcLoptOptimizer: one worker-delta tensor per parameter");
  const auto grads = prepared_grads(config_, grads_in);
  const auto dec = decays();
  const double t = static_cast<double>(config_.time_feature_step(state.step));  // PyLO: step incremented first, feature uses step - 1
  std::vector<float> tf;
  for (double f : lo::time_features(t)) tf.push_back(static_cast<float>(f));
  auto time_features = torch::tensor(tf);

  OptState out;
  out.step = state.step + 1;
  out.params.info = state.params.info;
  for (size_t i = 0; i < grads.size(); ++i) {
    const auto& p0 = state.params.tensors[i];
    auto shape = lo::accumulator_shape(p0);
    auto p = p0.reshape(shape), g = grads[i].reshape(shape);
    auto gu = g.unsqueeze(-1);
    auto mom = lo::rolling_average(state.slots.at("mom")[i], gu, dec.mom);
    auto rms = lo::rolling_average(state.slots.at("rms")[i], gu.square(), dec.rms);
    const auto fac = lo::factored_moments(g, state.slots.at("fac_vec_row")[i], state.slots.at("fac_vec_col")[i],
                                          state.slots.at("fac_vec_v")[i], dec.fac);
    const auto fac_g = fac.scale(gu);
    const auto row_feat = fac.row_feature(shape), col_feat = fac.col_feature(shape);
    // learned_optimization: a 1-D tensor's momentum is scaled by (v + 1e-6)^-0.5, not by fac_g's factor.
    const auto fac_mom_mult = fac.factored ? fac.scale(mom) : mom * (fac.v + lo_eps::kVectorMom).pow(-0.5);
    auto rsq = (rms + lo_eps::kRms).rsqrt();
    auto x = torch::cat({gu, p.unsqueeze(-1), mom, rms, mom * rsq, rsq, fac_g, row_feat, col_feat,
                         (row_feat + lo_eps::kFactorFeature).rsqrt(), (col_feat + lo_eps::kFactorFeature).rsqrt(), fac_mom_mult},
                        -1);
    if (worker_deltas) {
      const auto& wd = (*worker_deltas)[i];
      TORCH_CHECK(wd.dim() >= 1 && wd.size(0) == config_.worker_inputs && wd[0].numel() == p.numel(),
                  "SmallFcLoptOptimizer: worker deltas of tensor ", i, " must be [", config_.worker_inputs, ", *shape]");
      // [K, *shape] -> [*shape, K]: each worker's delta is one more normalised input.
      x = torch::cat({x, wd.reshape(with_last({config_.worker_inputs}, p.numel())).t().reshape(with_last(shape, config_.worker_inputs)).to(x.scalar_type())}, -1);
    }
    std::vector<int64_t> reduce_dims(shape.size());
    std::iota(reduce_dims.begin(), reduce_dims.end(), 0);
    x = lo::second_moment_normalize(x, reduce_dims, lo_eps::kNormalizer);
    x = torch::cat({x, time_features.to(x.device(), x.scalar_type()).expand(with_last(shape, kLoptTimeFeatures))}, -1);
    auto h = x;
    for (size_t l = 0; l + 1 < weights_.size(); ++l) h = torch::relu(torch::linear(h, weights_[l], biases_[l]));
    auto o = torch::linear(h, weights_.back(), biases_.back());
    auto direction = o.select(-1, 0), magnitude = o.select(-1, 1);
    auto stepv = direction * torch::exp(magnitude * config_.exp_mult) * config_.step_mult;
    const double lr = lr_at(state.step, state.params.info[i]);
    auto p_new = p - lr * stepv;
    // PyLO AdafacLO / MuLO: the decay on the updated p; ELO: p -= lr (step + wd p), on the old p.
    if (config_.weight_decay > 0) p_new = p_new - (lr * config_.weight_decay) * (config_.elo ? p : p_new);
    out.params.tensors.push_back(p_new.reshape(p0.sizes()));
    out.slots["mom"].push_back(mom);
    out.slots["rms"].push_back(rms);
    out.slots["fac_vec_row"].push_back(fac.factored ? fac.row : state.slots.at("fac_vec_row")[i]);
    out.slots["fac_vec_col"].push_back(fac.factored ? fac.col : state.slots.at("fac_vec_col")[i]);
    out.slots["fac_vec_v"].push_back(fac.factored ? state.slots.at("fac_vec_v")[i] : fac.v);
    if (mlp_inputs) mlp_inputs->push_back(x);
    if (mlp_outputs) mlp_outputs->push_back(o);
  }
  return out;
}

namespace {
/// Appends the fused jobs of one run (gradients clipped first when max_grad_norm is set).
void add_fused_jobs(const SmallFcLoptOptimizer& opt, OptState& state, const std::vector<torch::Tensor>& grads,
                    std::vector<detail::FusedJob>& jobs) {
  check_grads(state, grads, "SmallFcLoptOptimizer::update_");
  TORCH_CHECK(opt.config().worker_inputs == 0,
              "a learned aggregator (worker_inputs > 0) steps only through a GlobalUpdate, which passes the workers' deltas");
  const auto g = prepared_grads(opt.config(), grads);
  const auto& net = opt.fused_constants().net;
  const auto time_features = lo::time_features(static_cast<double>(opt.config().time_feature_step(state.step)));
  for (size_t i = 0; i < g.size(); ++i) {
    jobs.push_back({&opt, &net, &state.params.tensors[i], g[i],
                    {&state.slots.at("mom")[i], &state.slots.at("rms")[i], &state.slots.at("fac_vec_row")[i],
                     &state.slots.at("fac_vec_col")[i], &state.slots.at("fac_vec_v")[i]},
                    opt.lr_at(state.step, state.params.info[i]), state.step});
    std::copy(time_features.begin(), time_features.end(), jobs.back().extra.begin());
  }
}
}  // namespace

void SmallFcLoptOptimizer::update_(OptState& state, const std::vector<torch::Tensor>& grads,
                                   const torch::Tensor& loss) const {
  torch::NoGradGuard no_grad;
  if (config_.impl == "tensor") {
    state = update(state, grads, loss);
    return;
  }
  std::vector<detail::FusedJob> jobs;
  add_fused_jobs(*this, state, grads, jobs);
  if (config_.impl == "gpu") detail::gpu_lopt_steps(jobs);
  else detail::fused_lopt_steps(jobs);
  state.step += 1;
}

void SmallFcLoptOptimizer::update_many_(std::vector<PopulationMember>& members) const {
  torch::NoGradGuard no_grad;
  std::vector<detail::FusedJob> jobs;
  std::vector<OptState*> fused;
  const std::string& impl = config_.impl;  // members on another impl step on their own
  for (auto& m : members) {
    const auto* lo = dynamic_cast<const SmallFcLoptOptimizer*>(m.opt);
    if (lo == nullptr || lo->config().impl == "tensor" || lo->config().impl != impl) {
      m.opt->update_(*m.state, m.grads, m.loss);
      continue;
    }
    add_fused_jobs(*lo, *m.state, m.grads, jobs);
    fused.push_back(m.state);
  }
  if (impl == "gpu") detail::gpu_lopt_steps(jobs);
  else detail::fused_lopt_steps(jobs);
  for (auto* s : fused) s->step += 1;
}

}  // namespace lopt
