#include "optimizers/optimizer.h"

#include <cmath>

#include <torch/torch.h>

#include <filesystem>

#include "common/config.h"
#include "optimizers/adam.h"
#include "optimizers/muon.h"
#include "optimizers/sgd.h"
#include "optimizers/small_fc_lopt.h"
#include "common/rng.h"

namespace lopt {

void Optimizer::update_(OptState& state, const std::vector<torch::Tensor>& grads, const torch::Tensor& loss) const {
  torch::NoGradGuard no_grad;
  state = update(state, grads, loss);
}

void Optimizer::update_many_(std::vector<PopulationMember>& members) const {
  for (auto& m : members) m.opt->update_(*m.state, m.grads, m.loss);
}

void check_grads(const OptState& state, const std::vector<torch::Tensor>& grads, const char* who) {
  TORCH_CHECK(grads.size() == state.params.size(), who, ": got ", grads.size(), " gradients for ",
              state.params.size(), " parameters");
  for (size_t i = 0; i < grads.size(); ++i)
    TORCH_CHECK(grads[i].sizes() == state.params.tensors[i].sizes(), who, ": gradient ", i, " has shape ",
                grads[i].sizes(), ", parameter has ", state.params.tensors[i].sizes());
}

namespace {
void check_finite_nonneg(ConfigReader& r, const std::string& key, double v) {
  config_check(std::isfinite(v) && v >= 0, r.path_of(key), "must be finite and >= 0, got " + std::to_string(v));
}
}  // namespace

double Optimizer::lr_at(int64_t, const ParamInfo&) const { return std::nan(""); }

std::unique_ptr<Optimizer> make_optimizer(const nlohmann::json& config, const std::string& path) {
  ConfigReader r(config, path);
  auto type = r.get<std::string>("type", "");
  std::unique_ptr<Optimizer> out;
  if (type == "sgd") {
    SgdOptions o;
    o.lr = r.get<double>("lr", o.lr);
    o.momentum = r.get<double>("momentum", o.momentum);
    o.dampening = r.get<double>("dampening", o.dampening);
    o.nesterov = r.get<bool>("nesterov", o.nesterov);
    o.weight_decay = r.get<double>("weight_decay", o.weight_decay);
    if (auto s = r.object("schedule"); !s.empty()) o.schedule = s;
    check_finite_nonneg(r, "lr", o.lr);
    check_finite_nonneg(r, "momentum", o.momentum);
    check_finite_nonneg(r, "weight_decay", o.weight_decay);
    config_check(!o.nesterov || (o.momentum > 0 && o.dampening == 0), r.path_of("nesterov"),
                 "Nesterov momentum needs momentum > 0 and dampening 0");
    make_schedule(o.schedule, r.path_of("schedule"));
    out = std::make_unique<Sgd>(o);
  } else if (type == "adam" || type == "adamw" || type == "muadam") {
    AdamOptions o;
    o.decoupled_weight_decay = type == "adamw";
    o.mup = type == "muadam";
    o.lr = r.get<double>("lr", o.lr);
    o.beta1 = r.get<double>("beta1", o.beta1);
    o.beta2 = r.get<double>("beta2", o.beta2);
    o.eps = r.get<double>("eps", o.eps);
    o.weight_decay = r.get<double>("weight_decay", type == "adamw" ? 0.01 : 0.0);
    if (o.mup) o.decoupled_weight_decay = r.get<bool>("decoupled_weight_decay", true);
    if (auto s = r.object("schedule"); !s.empty()) o.schedule = s;
    check_finite_nonneg(r, "lr", o.lr);
    check_finite_nonneg(r, "eps", o.eps);
    check_finite_nonneg(r, "weight_decay", o.weight_decay);
    config_check(o.beta1 >= 0 && o.beta1 < 1, r.path_of("beta1"), "must be in [0, 1)");
    config_check(o.beta2 >= 0 && o.beta2 < 1, r.path_of("beta2"), "must be in [0, 1)");
    make_schedule(o.schedule, r.path_of("schedule"));
    out = std::make_unique<Adam>(o);
  } else if (type == "muon") {
    out = std::make_unique<Muon>(muon_options_from_json(config, path));
    return out;  // muon_options_from_json checked every key
  } else if (type == "mulo" || type == "small_fc_lopt") {
    // A learned optimizer with theta from a checkpoint (safetensors, PyLO names) or, without one,
    // an untrained theta drawn from theta_seed.
    auto checkpoint = r.get<std::string>("checkpoint", "");
    config_check(checkpoint.empty() || std::filesystem::exists(checkpoint), r.path_of("checkpoint"),
                 "file not found: " + checkpoint + " (a learned-optimizer safetensors file, e.g. "
                 "results/checkpoints/mulo_m/theta.safetensors)");
    auto theta_seed = r.get<uint64_t>("theta_seed", 0);
    nlohmann::json lcfg = config;
    lcfg.erase("checkpoint");
    lcfg.erase("theta_seed");
    for (auto it = lcfg.begin(); it != lcfg.end(); ++it) r.get<nlohmann::json>(it.key(), nullptr);
    if (!checkpoint.empty()) lcfg = resolve_checkpoint_config(lcfg, checkpoint, path);
    else config_check(!lcfg.contains("override"), r.path_of("override"), "only applies with a checkpoint");
    auto lo = make_small_fc_lopt(lcfg, path);
    torch::Tensor theta;
    if (checkpoint.empty()) {
      auto gen = make_generator(derive_seed(theta_seed, "theta"));
      theta = lo->init_theta(gen);
    } else {
      theta = lo->load(checkpoint);
    }
    auto bound = std::make_unique<SmallFcLoptOptimizer>(*lo, theta);
    bound->set_provenance({{"checkpoint", checkpoint}, {"theta_seed", theta_seed}});
    out = std::move(bound);
  } else {
    throw ConfigError(r.path_of("type"),
                      "unknown optimizer \"" + type + "\" (valid: sgd, adam, adamw, muadam, muon, mulo, small_fc_lopt)");
  }
  r.finish();
  return out;
}

}  // namespace lopt
