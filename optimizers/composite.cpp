#include "optimizers/composite.h"

#include <torch/torch.h>

#include <cmath>

#include "common/config.h"
#include "common/errors.h"
#include "common/registry.h"
#include "optimizers/schedule.h"

namespace lopt {

namespace {
/// Slot names of route k inside the composite's state: "<k>/<inner slot name>".
std::string slot_prefix(size_t k) { return std::to_string(k) + "/"; }
}  // namespace

Composite::Composite(const nlohmann::json& config, const std::string& path) : path_(path) {
  ConfigReader r(config, path);
  r.require<std::string>("type");
  lr_ = r.get<double>("lr", 1.0);
  config_check_finite_nonneg(lr_, r.path_of("lr"));
  auto schedule = r.object("schedule");
  if (schedule.empty()) schedule = {{"type", "constant"}};
  schedule_ = make_schedule(schedule, r.path_of("schedule"))->hyperparams();
  const auto routes = r.require<nlohmann::json>("routes");
  config_check(routes.is_array() && !routes.empty(), r.path_of("routes"),
               "must be a non-empty list of {\"roles\": [...], \"rank\": \"matrix\"|\"vector\", \"optimizer\": {...}, \"lr_mult\": x}");
  r.finish();
  for (size_t k = 0; k < routes.size(); ++k) {
    const std::string rp = path + "/routes/" + std::to_string(k);
    config_check(routes[k].is_object(), rp, "must be an object with an \"optimizer\"");
    ConfigReader rr(routes[k], rp);
    Route route;
    for (const auto& name : rr.get<std::vector<std::string>>("roles", {})) {
      try {
        route.roles.insert(param_role_from_string(name));
      } catch (const Error&) {
        throw ConfigError(rr.path_of("roles"), "unknown role \"" + name + "\" (valid: " + join_names(role_names(all_param_roles())) + ")");
      }
    }
    route.rank = rr.get<std::string>("rank", "");
    config_check(route.rank.empty() || route.rank == "matrix" || route.rank == "vector", rr.path_of("rank"),
                 "must be \"matrix\" (rank >= 2) or \"vector\" (rank < 2), or absent for any");
    route.lr_mult = rr.get<double>("lr_mult", 1.0);
    config_check_finite_nonneg(route.lr_mult, rr.path_of("lr_mult"));
    route.config = rr.require<nlohmann::json>("optimizer");
    rr.finish();
    config_check(route.config.is_object(), rr.path_of("optimizer"), "must be an optimizer config such as {\"type\": \"adamw\"}");
    config_check(route.config.value("type", "") != "composite", rr.path_of("optimizer") + "/type", "a route cannot be another composite");
    for (const char* key : {"lr", "schedule"})
      config_check(!route.config.contains(key), rr.path_of("optimizer") + "/" + key,
                   std::string("is set by the composite (its \"lr\" x this route's \"lr_mult\", its \"schedule\"): remove it"));
    auto inner = route.config;
    inner["lr"] = lr_ * route.lr_mult;
    inner["schedule"] = schedule_;
    route.optimizer = make_optimizer(inner, rr.path_of("optimizer"));
    routes_.push_back(std::move(route));
  }
}

size_t Composite::route_of(const ParamInfo& info, int64_t rank) const {
  for (size_t k = 0; k < routes_.size(); ++k) {
    const auto& r = routes_[k];
    if (!r.roles.empty() && !r.roles.count(info.role)) continue;
    if (r.rank == "matrix" && rank < 2) continue;
    if (r.rank == "vector" && rank >= 2) continue;
    return k;
  }
  throw ConfigError(path_ + "/routes", "tensor '" + info.name + "' (role " + to_string(info.role) + ", rank " +
                                           std::to_string(rank) +
                                           ") matches no route: add a route for it, or a last route without roles and rank");
}

std::vector<std::vector<size_t>> Composite::partition(const ParamSet& params) const {
  std::vector<std::vector<size_t>> idx(routes_.size());
  for (size_t i = 0; i < params.size(); ++i) idx[route_of(params.info[i], params.tensors[i].dim())].push_back(i);
  return idx;
}

OptState Composite::sub_state(const OptState& state, size_t route, const std::vector<size_t>& idx) const {
  OptState sub;
  sub.step = state.step;
  for (size_t i : idx) {
    sub.params.tensors.push_back(state.params.tensors[i]);
    sub.params.info.push_back(state.params.info[i]);
  }
  const auto prefix = slot_prefix(route);
  for (const auto& [name, v] : state.slots)
    if (name.rfind(prefix, 0) == 0) sub.slots[name.substr(prefix.size())] = v;
  return sub;
}

void Composite::scatter(OptState& out, size_t route, const std::vector<size_t>& idx, OptState sub) const {
  for (size_t j = 0; j < idx.size(); ++j) out.params.tensors[idx[j]] = sub.params.tensors[j];
  for (auto& [name, v] : sub.slots) out.slots[slot_prefix(route) + name] = std::move(v);
}

namespace {
std::vector<torch::Tensor> gather(const std::vector<torch::Tensor>& all, const std::vector<size_t>& idx) {
  std::vector<torch::Tensor> out;
  for (size_t i : idx) out.push_back(all[i]);
  return out;
}
}  // namespace

OptState Composite::init(const ParamSet& params) const {
  OptState s;
  s.params = params;
  const auto idx = partition(params);
  for (size_t k = 0; k < routes_.size(); ++k) {
    if (idx[k].empty()) continue;
    OptState sub;
    for (size_t i : idx[k]) {
      sub.params.tensors.push_back(params.tensors[i]);
      sub.params.info.push_back(params.info[i]);
    }
    scatter(s, k, idx[k], routes_[k].optimizer->init(sub.params));
  }
  return s;
}

OptState Composite::update(const OptState& state, const std::vector<torch::Tensor>& grads, const torch::Tensor& loss) const {
  check_grads(state, grads, "Composite::update");
  OptState out;
  out.step = state.step + 1;
  out.params = state.params;  // its tensors are replaced route by route
  const auto idx = partition(state.params);
  for (size_t k = 0; k < routes_.size(); ++k) {
    if (idx[k].empty()) continue;
    scatter(out, k, idx[k], routes_[k].optimizer->update(sub_state(state, k, idx[k]), gather(grads, idx[k]), loss));
  }
  return out;
}

void Composite::update_(OptState& state, const std::vector<torch::Tensor>& grads, const torch::Tensor& loss) const {
  check_grads(state, grads, "Composite::update_");
  const auto idx = partition(state.params);
  for (size_t k = 0; k < routes_.size(); ++k) {
    if (idx[k].empty()) continue;
    auto sub = sub_state(state, k, idx[k]);
    routes_[k].optimizer->update_(sub, gather(grads, idx[k]), loss);
    scatter(state, k, idx[k], std::move(sub));
  }
  state.step += 1;
}

std::vector<torch::Tensor> Composite::pre_orthogonal_directions(const OptState& state, const std::vector<torch::Tensor>& grads,
                                                                const torch::Tensor& loss) const {
  check_grads(state, grads, "Composite::pre_orthogonal_directions");
  std::vector<torch::Tensor> out(grads.size());
  const auto idx = partition(state.params);
  for (size_t k = 0; k < routes_.size(); ++k) {
    if (idx[k].empty()) continue;
    const auto d = routes_[k].optimizer->pre_orthogonal_directions(sub_state(state, k, idx[k]), gather(grads, idx[k]), loss);
    for (size_t j = 0; j < idx[k].size(); ++j) out[idx[k][j]] = d[j];
  }
  return out;
}

double Composite::lr_at(int64_t step, const ParamInfo& info) const {
  // The rank is unknown here: the first route whose roles match (a rank-only route is taken as matching).
  for (const auto& r : routes_)
    if (r.roles.empty() || r.roles.count(info.role)) return r.optimizer->lr_at(step, info);
  return std::nan("");
}

nlohmann::json Composite::hyperparams() const {
  nlohmann::json routes = nlohmann::json::array();
  for (const auto& r : routes_) {
    auto inner = r.optimizer->hyperparams();
    inner.erase("lr");
    inner.erase("schedule");
    nlohmann::json j = {{"optimizer", inner}, {"lr_mult", r.lr_mult}};
    if (!r.roles.empty()) {
      j["roles"] = role_names(r.roles);
    }
    if (!r.rank.empty()) j["rank"] = r.rank;
    routes.push_back(j);
  }
  return {{"type", "composite"}, {"lr", lr_}, {"schedule", schedule_}, {"routes", routes}};
}

}  // namespace lopt
