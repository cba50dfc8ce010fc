#pragma once
/// A role-routed composite optimizer: each parameter tensor goes to the first route whose roles
/// (ParamRole names) and rank ("matrix": rank >= 2, "vector": rank < 2) it matches, and is stepped
/// by that route's inner optimizer at lr x lr_mult. All routes share the composite's schedule and
/// step count, so `lr` is the one knob compare / sweep tune. Any registered optimizer can be a route
/// (hand-designed or learned), e.g. Muon on hidden matrices and AdamW on everything else:
///
///   {"type": "composite", "lr": 0.02, "schedule": {...},
///    "routes": [{"roles": ["hidden_weight"], "optimizer": {"type": "muon"}},
///               {"optimizer": {"type": "adamw", "beta2": 0.95}, "lr_mult": 0.015}]}
///
/// A route without "roles" / "rank" matches everything (put it last). A tensor no route matches is a
/// ConfigError at /optimizer/routes when the optimizer meets the model. Inner configs may not set
/// "lr" or "schedule" (the composite sets both).
#include <memory>
#include <set>
#include <vector>

#include "optimizers/optimizer.h"

namespace lopt {

class Composite : public Optimizer {
 public:
  struct Route {
    std::set<ParamRole> roles;  ///< empty = any role
    std::string rank;           ///< "matrix", "vector" or "" (any)
    double lr_mult = 1.0;
    std::unique_ptr<Optimizer> optimizer;
    nlohmann::json config;  ///< the route's optimizer config as given (without lr and schedule)
  };
  /// From a {"type": "composite", ...} config (ConfigError naming the key).
  Composite(const nlohmann::json& config, const std::string& path);
  OptState init(const ParamSet& params) const override;
  OptState update(const OptState& state, const std::vector<torch::Tensor>& grads, const torch::Tensor& loss) const override;
  void update_(OptState& state, const std::vector<torch::Tensor>& grads, const torch::Tensor& loss) const override;
  double lr_at(int64_t step, const ParamInfo& info) const override;
  std::vector<torch::Tensor> pre_orthogonal_directions(const OptState& state, const std::vector<torch::Tensor>& grads,
                                                       const torch::Tensor& loss) const override;
  nlohmann::json hyperparams() const override;
  /// The route of a tensor; ConfigError at <path>/routes when none matches.
  size_t route_of(const ParamInfo& info, int64_t rank) const;

 private:
  /// Indices of `params` per route.
  std::vector<std::vector<size_t>> partition(const ParamSet& params) const;
  OptState sub_state(const OptState& state, size_t route, const std::vector<size_t>& idx) const;
  void scatter(OptState& out, size_t route, const std::vector<size_t>& idx, OptState sub) const;

  std::string path_;
  double lr_ = 1.0;
  nlohmann::json schedule_;
  std::vector<Route> routes_;
};

}  // namespace lopt
