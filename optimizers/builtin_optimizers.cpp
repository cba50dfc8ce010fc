/// The optimizer and learned-optimizer types every lopt command knows. Adding one is a file (or
/// folder) for the optimizer plus one line here; docs/extending.md walks through Muon as the example.
#include "common/config.h"
#include "optimizers/adam.h"
#include "optimizers/celo2/celo2.h"
#include "optimizers/composite.h"
#include "optimizers/muon.h"
#include "optimizers/schedule.h"
#include "optimizers/sgd.h"
#include "optimizers/small_fc_lopt/small_fc_lopt.h"

namespace lopt {

namespace {
std::unique_ptr<Optimizer> make_sgd(const nlohmann::json& config, const std::string& path) {
  ConfigReader r(config, path);
  r.require<std::string>("type");
  SgdOptions o;
  o.lr = r.get<double>("lr", o.lr);
  o.momentum = r.get<double>("momentum", o.momentum);
  o.dampening = r.get<double>("dampening", o.dampening);
  o.nesterov = r.get<bool>("nesterov", o.nesterov);
  o.weight_decay = r.get<double>("weight_decay", o.weight_decay);
  if (auto s = r.object("schedule"); !s.empty()) o.schedule = s;
  config_check_finite_nonneg(o.lr, r.path_of("lr"));
  config_check_finite_nonneg(o.momentum, r.path_of("momentum"));
  config_check_finite_nonneg(o.weight_decay, r.path_of("weight_decay"));
  config_check(!o.nesterov || (o.momentum > 0 && o.dampening == 0), r.path_of("nesterov"),
               "Nesterov momentum needs momentum > 0 and dampening 0");
  make_schedule(o.schedule, r.path_of("schedule"));
  r.finish();
  return std::make_unique<Sgd>(o);
}

/// adam, adamw (decoupled weight decay, default 0.01) and muadam (muP per-tensor learning rates).
std::unique_ptr<Optimizer> make_adam(const nlohmann::json& config, const std::string& path) {
  ConfigReader r(config, path);
  const auto type = r.require<std::string>("type");
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
  config_check_finite_nonneg(o.lr, r.path_of("lr"));
  config_check_finite_nonneg(o.eps, r.path_of("eps"));
  config_check_finite_nonneg(o.weight_decay, r.path_of("weight_decay"));
  config_check(o.beta1 >= 0 && o.beta1 < 1, r.path_of("beta1"), "must be in [0, 1)");
  config_check(o.beta2 >= 0 && o.beta2 < 1, r.path_of("beta2"), "must be in [0, 1)");
  make_schedule(o.schedule, r.path_of("schedule"));
  r.finish();
  return std::make_unique<Adam>(o);
}

std::unique_ptr<Optimizer> make_muon(const nlohmann::json& config, const std::string& path) {
  return std::make_unique<Muon>(muon_options_from_json(config, path));  // it checks every key
}
}  // namespace

void register_builtin_optimizers() {
  register_optimizer_type("sgd", make_sgd);
  register_optimizer_type("adam", make_adam);
  register_optimizer_type("adamw", make_adam);
  register_optimizer_type("muadam", make_adam);
  register_optimizer_type("muon", make_muon);
  register_optimizer_type("composite", [](const nlohmann::json& config, const std::string& path) -> std::unique_ptr<Optimizer> {
    return std::make_unique<Composite>(config, path);
  });
}

void register_builtin_learned_optimizers() {
  // small_fc_lopt (standard parametrization) and muLO (muP) share theta's layout and checkpoints.
  const LearnedOptimizerType small_fc_lopt{
      "small_fc_lopt",
      [](const nlohmann::json& config, const std::string& path) -> std::unique_ptr<LearnedOptimizer> {
        return make_small_fc_lopt(config, path);
      },
      resolve_checkpoint_config};
  register_learned_optimizer_type("small_fc_lopt", small_fc_lopt);
  register_learned_optimizer_type("mulo", small_fc_lopt);
  // ELO: small_fc_lopt's network without learned decay offsets, a checkpoint family of its own.
  register_learned_optimizer_type("elo", LearnedOptimizerType{
      "elo",
      [](const nlohmann::json& config, const std::string& path) -> std::unique_ptr<LearnedOptimizer> {
        return make_small_fc_lopt(config, path);
      },
      resolve_elo_checkpoint});
  // Celo2 (Newton–Schulz-orthogonalised steps), Celo2-base and μCelo2 share theta's layout and checkpoints.
  const LearnedOptimizerType celo2{
      "celo2",
      [](const nlohmann::json& config, const std::string& path) -> std::unique_ptr<LearnedOptimizer> {
        return std::make_unique<Celo2>(Celo2Config::from_json(config, path));
      },
      resolve_celo2_checkpoint};
  register_learned_optimizer_type("celo2", celo2);
  register_learned_optimizer_type("celo2_base", celo2);
  register_learned_optimizer_type("mucelo2", celo2);
}

}  // namespace lopt
