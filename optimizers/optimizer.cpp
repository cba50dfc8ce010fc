#include "optimizers/optimizer.h"

#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <filesystem>

#include "common/config.h"
#include "common/registry.h"
#include "common/rng.h"
#include "optimizers/learned_optimizer.h"

namespace lopt {

void register_builtin_optimizers();  // optimizers/builtin_optimizers.cpp

void Optimizer::update_(OptState& state, const std::vector<torch::Tensor>& grads, const torch::Tensor& loss) const {
  torch::NoGradGuard no_grad;
  state = update(state, grads, loss);
}

void Optimizer::update_many_(std::vector<PopulationMember>& members) const {
  for (auto& m : members) m.opt->update_(*m.state, m.grads, m.loss);
}

void Optimizer::aggregate_(OptState&, const std::vector<torch::Tensor>&, const std::vector<torch::Tensor>&,
                           const torch::Tensor&) const {
  TORCH_CHECK(false, "aggregate_: ", hyperparams().value("type", std::string("this optimizer")),
              " takes no workers' deltas (worker_inputs() is 0)");
}

void check_grads(const OptState& state, const std::vector<torch::Tensor>& grads, const char* who) {
  TORCH_CHECK(grads.size() == state.params.size(), who, ": got ", grads.size(), " gradients for ",
              state.params.size(), " parameters");
  for (size_t i = 0; i < grads.size(); ++i)
    TORCH_CHECK(grads[i].sizes() == state.params.tensors[i].sizes(), who, ": gradient ", i, " has shape ",
                grads[i].sizes(), ", parameter has ", state.params.tensors[i].sizes());
}

double Optimizer::lr_at(int64_t, const ParamInfo&) const { return std::nan(""); }

std::vector<torch::Tensor> Optimizer::pre_orthogonal_directions(const OptState&, const std::vector<torch::Tensor>& grads,
                                                                const torch::Tensor&) const {
  return std::vector<torch::Tensor>(grads.size());
}

namespace {
NamedRegistry<OptimizerFactory>& registry() {
  static NamedRegistry<OptimizerFactory> r("optimizer", [] { register_builtin_optimizers(); });
  return r;
}

/// A learned optimizer bound to a theta: the checkpoint's (its config completed from the checkpoint,
/// which must be of the type's family) or, without one, an untrained theta drawn from theta_seed.
std::unique_ptr<Optimizer> make_bound_learned_optimizer(const nlohmann::json& config, const std::string& path) {
  ConfigReader r(config, path);
  const auto type = r.require<std::string>("type");
  const auto lt = learned_optimizer_type(type, r.path_of("type"));
  auto checkpoint = r.get<std::string>("checkpoint", "");
  config_check(checkpoint.empty() || std::filesystem::exists(checkpoint), r.path_of("checkpoint"),
               "file not found: " + checkpoint + " (a learned-optimizer safetensors file, e.g. "
               "results/checkpoints/mulo_m/theta.safetensors)");
  auto theta_seed = r.get<uint64_t>("theta_seed", 0);
  nlohmann::json lcfg = config;
  lcfg.erase("checkpoint");
  lcfg.erase("theta_seed");
  for (auto it = lcfg.begin(); it != lcfg.end(); ++it) r.get<nlohmann::json>(it.key(), nullptr);  // the type checks them
  r.finish();
  if (!checkpoint.empty()) {
    const auto stored = checkpoint_type(checkpoint);
    if (!stored.empty()) {
      config_check(is_learned_optimizer_type(stored), r.path_of("checkpoint"),
                   checkpoint + " is a \"" + stored + "\" checkpoint, a type this build does not know (valid: " +
                       join_names(learned_optimizer_types()) + ")");
      const auto theirs = learned_optimizer_type(stored, r.path_of("checkpoint")).family;
      config_check(theirs == lt.family, r.path_of("type"),
                   checkpoint + " holds a \"" + stored + "\" theta (family " + theirs + "), not one of family " + lt.family +
                       ": set \"type\": \"" + stored + "\"");
    }
    lcfg = lt.resolve_checkpoint(lcfg, checkpoint, path);
  } else {
    config_check(!lcfg.contains("override"), r.path_of("override"), "only applies with a checkpoint");
  }
  auto lo = lt.make(lcfg, path);
  torch::Tensor theta;
  if (checkpoint.empty()) {
    auto gen = make_generator(derive_seed(theta_seed, "theta"));
    theta = lo->init_theta(gen);
  } else {
    theta = lo->load(checkpoint);
  }
  return lo->bind(theta, {{"checkpoint", checkpoint}, {"theta_seed", theta_seed}});
}
}  // namespace

void register_optimizer_type(const std::string& type, OptimizerFactory f) { registry().add(type, std::move(f)); }

std::vector<std::string> optimizer_types() {
  auto out = registry().names();
  for (const auto& t : learned_optimizer_types()) out.push_back(t);
  std::sort(out.begin(), out.end());
  return out;
}

std::unique_ptr<Optimizer> make_optimizer(const nlohmann::json& config, const std::string& path) {
  config_check(config.is_object(), path, "must be an object such as {\"type\": \"adamw\", \"lr\": 0.001}");
  std::string type;
  if (config.contains("type")) {
    config_check(config["type"].is_string(), path + "/type", "must be a string (valid: " + join_names(optimizer_types()) + ")");
    type = config["type"].get<std::string>();
  }
  if (registry().contains(type)) return registry().get(type, path + "/type")(config, path);
  if (is_learned_optimizer_type(type)) return make_bound_learned_optimizer(config, path);
  throw ConfigError(path + "/type", (type.empty() ? std::string("required") : "unknown optimizer \"" + type + "\"") +
                                        " (valid: " + join_names(optimizer_types()) + ")");
}

}  // namespace lopt
