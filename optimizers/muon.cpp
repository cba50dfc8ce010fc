#include "optimizers/muon.h"

#include <torch/torch.h>

#include <algorithm>
#include <cmath>

#include "common/config.h"
#include "common/errors.h"
#include "common/registry.h"
#include "optimizers/adam.h"

namespace lopt {

namespace {
constexpr double kNsA = 3.4445, kNsB = -4.7750, kNsC = 2.0315;  // muon.py's quintic coefficients
constexpr double kNsNormEps = 1e-7;                              // muon.py: X / (||X||_F + 1e-7)

/// A matrix view of a tensor of rank >= 2 as muon.py steps it: (dim 0, everything else) for rank > 2.
torch::Tensor as_matrix(const torch::Tensor& t) { return t.dim() == 2 ? t : t.reshape({t.size(0), -1}); }

/// Roles whose tensors are matrices (the valid muon_roles).
bool is_matrix_role(ParamRole r) { return r != ParamRole::bias && r != ParamRole::norm_gain; }
std::string matrix_role_names() {
  std::vector<ParamRole> roles;
  for (auto r : all_param_roles())
    if (is_matrix_role(r)) roles.push_back(r);
  return join_names(role_names(roles));
}
}  // namespace

torch::Tensor newton_schulz(const torch::Tensor& g, int64_t steps, const std::array<double, 3>& coeffs, double eps) {
  TORCH_CHECK(g.dim() >= 2, "newton_schulz: needs a tensor of rank >= 2, got ", g.sizes());
  const bool tall = g.size(-2) > g.size(-1);
  auto x = tall ? g.transpose(-2, -1) : g;
  x = x / (x.norm(2, {-2, -1}, /*keepdim=*/true) + eps);
  for (int64_t k = 0; k < steps; ++k) {
    auto a = torch::matmul(x, x.transpose(-2, -1));
    auto bm = a * coeffs[1] + torch::matmul(a, a) * coeffs[2];
    x = x * coeffs[0] + torch::matmul(bm, x);
  }
  return tall ? x.transpose(-2, -1) : x;
}

torch::Tensor newton_schulz5(const torch::Tensor& g, int64_t steps) {
  return newton_schulz(g, steps, {kNsA, kNsB, kNsC}, kNsNormEps);
}

MuonOptions muon_options_from_json(const nlohmann::json& config, const std::string& path) {
  ConfigReader r(config, path);
  r.get<std::string>("type", "muon");
  MuonOptions o;
  o.lr = r.get<double>("lr", o.lr);
  o.momentum = r.get<double>("momentum", o.momentum);
  o.nesterov = r.get<bool>("nesterov", o.nesterov);
  o.ns_steps = r.get<int64_t>("ns_steps", o.ns_steps);
  o.weight_decay = r.get<double>("weight_decay", o.weight_decay);
  o.adamw_lr_ratio = r.get<double>("adamw_lr_ratio", o.adamw_lr_ratio);
  o.adamw_beta1 = r.get<double>("adamw_beta1", o.adamw_beta1);
  o.adamw_beta2 = r.get<double>("adamw_beta2", o.adamw_beta2);
  o.adamw_eps = r.get<double>("adamw_eps", o.adamw_eps);
  const auto dtype = r.get<std::string>("ns_dtype", "float32");
  config_check(dtype == "float32" || dtype == "float64", r.path_of("ns_dtype"), "must be \"float32\" or \"float64\"");
  o.ns_float64 = dtype == "float64";
  if (r.has("muon_roles")) {
    o.muon_roles.clear();
    for (const auto& name : r.get<std::vector<std::string>>("muon_roles", {})) {
      try {
        o.muon_roles.insert(param_role_from_string(name));
      } catch (const Error&) {
        throw ConfigError(r.path_of("muon_roles"), "unknown role \"" + name + "\" (valid: " + matrix_role_names() + ")");
      }
    }
    config_check(!o.muon_roles.empty(), r.path_of("muon_roles"), "needs at least one role, e.g. [\"hidden_weight\"]");
    for (auto role : o.muon_roles)
      config_check(is_matrix_role(role), r.path_of("muon_roles"),
                   "\"" + to_string(role) + "\" tensors are vectors: Muon orthogonalises matrices only");
  }
  if (auto s = r.object("schedule"); !s.empty()) o.schedule = s;
  for (const auto& [key, v] : {std::pair<const char*, double>{"lr", o.lr}, {"weight_decay", o.weight_decay},
                               {"adamw_lr_ratio", o.adamw_lr_ratio}, {"adamw_eps", o.adamw_eps}})
    config_check_finite_nonneg(v, r.path_of(key));
  config_check(o.momentum >= 0 && o.momentum < 1, r.path_of("momentum"), "must be in [0, 1)");
  config_check(o.adamw_beta1 >= 0 && o.adamw_beta1 < 1, r.path_of("adamw_beta1"), "must be in [0, 1)");
  config_check(o.adamw_beta2 >= 0 && o.adamw_beta2 < 1, r.path_of("adamw_beta2"), "must be in [0, 1)");
  config_check(o.ns_steps >= 1 && o.ns_steps <= 100, r.path_of("ns_steps"), "must be in [1, 100]");
  make_schedule(o.schedule, r.path_of("schedule"));
  r.finish();
  return o;
}

Muon::Muon(MuonOptions options) : opt_(std::move(options)), schedule_(make_schedule(opt_.schedule)) {}

bool Muon::is_muon(const ParamSet& params, size_t i) const {
  return params.tensors[i].dim() >= 2 && opt_.muon_roles.count(params.info[i].role) > 0;
}

double Muon::lr_at(int64_t step, const ParamInfo& info) const {
  const double base = opt_.lr * (*schedule_)(step);
  return opt_.muon_roles.count(info.role) ? base : base * opt_.adamw_lr_ratio;
}

OptState Muon::init(const ParamSet& params) const {
  bool any = false;
  for (size_t i = 0; i < params.size(); ++i) any = any || is_muon(params, i);
  if (!any)
    throw ConfigError("/optimizer/muon_roles", "Muon found no matrix parameter with a role in [" + join_names(role_names(opt_.muon_roles)) +
                                                   "] in this model: use adamw, or route other roles to Muon");
  OptState s;
  s.params = params;
  auto& mom = s.slots["momentum_buffer"];
  auto& m = s.slots["exp_avg"];
  auto& v = s.slots["exp_avg_sq"];
  const auto empty = [](const torch::Tensor& p) { return torch::zeros({0}, p.options()); };
  for (size_t i = 0; i < params.size(); ++i) {
    const auto& p = params.tensors[i];
    const bool mu = is_muon(params, i);
    mom.push_back(mu ? torch::zeros_like(p) : empty(p));
    m.push_back(mu ? empty(p) : torch::zeros_like(p));
    v.push_back(mu ? empty(p) : torch::zeros_like(p));
  }
  return s;
}

std::pair<torch::Tensor, torch::Tensor> Muon::direction(const torch::Tensor& g, const torch::Tensor& buffer) const {
  // muon.py: momentum.lerp_(grad, 1 - beta); update = grad.lerp_(momentum, beta) if nesterov.
  const double beta = opt_.momentum;
  auto mom = buffer + (g - buffer) * (1 - beta);
  auto u = opt_.nesterov ? g + (mom - g) * beta : mom;
  return {mom, u};
}

std::vector<torch::Tensor> Muon::pre_orthogonal_directions(const OptState& state, const std::vector<torch::Tensor>& grads,
                                                           const torch::Tensor&) const {
  check_grads(state, grads, "Muon::pre_orthogonal_directions");
  std::vector<torch::Tensor> out(grads.size());
  for (size_t i = 0; i < grads.size(); ++i)
    if (is_muon(state.params, i)) out[i] = direction(grads[i], state.slots.at("momentum_buffer")[i]).second;
  return out;
}

OptState Muon::update(const OptState& state, const std::vector<torch::Tensor>& grads, const torch::Tensor&) const {
  check_grads(state, grads, "Muon::update");
  OptState out;
  out.step = state.step + 1;
  out.params.info = state.params.info;
  const double t = static_cast<double>(out.step);
  const double bc1 = 1 - std::pow(opt_.adamw_beta1, t);
  const double bc2_sqrt = std::sqrt(1 - std::pow(opt_.adamw_beta2, t));
  for (size_t i = 0; i < grads.size(); ++i) {
    const auto& p = state.params.tensors[i];
    const auto& g = grads[i];
    const bool mu = is_muon(state.params, i);
    const double lr = opt_.lr * (*schedule_)(state.step) * (mu ? 1.0 : opt_.adamw_lr_ratio);
    if (mu) {
      auto decayed = opt_.weight_decay != 0 ? p * (1 - lr * opt_.weight_decay) : p;
      auto [mom, u] = direction(g, state.slots.at("momentum_buffer")[i]);
      auto mat = as_matrix(u);
      auto o = opt_.ns_float64 ? newton_schulz5(mat.to(torch::kFloat64), opt_.ns_steps).to(mat.scalar_type())
                               : newton_schulz5(mat, opt_.ns_steps);
      const double scale = std::sqrt(std::max(1.0, static_cast<double>(mat.size(0)) / static_cast<double>(mat.size(1))));
      out.params.tensors.push_back(decayed - o.reshape(p.sizes()) * (lr * scale));
      out.slots["momentum_buffer"].push_back(mom);
      out.slots["exp_avg"].push_back(state.slots.at("exp_avg")[i]);
      out.slots["exp_avg_sq"].push_back(state.slots.at("exp_avg_sq")[i]);
    } else {
      // AdamW, the branch MuonWithAuxAdam steps these tensors with: AdamW's own per-tensor step.
      auto r = adam_tensor_step(p, g, state.slots.at("exp_avg")[i], state.slots.at("exp_avg_sq")[i], lr, opt_.adamw_beta1,
                                opt_.adamw_beta2, opt_.adamw_eps, opt_.weight_decay, /*decoupled=*/true, bc1, bc2_sqrt);
      out.params.tensors.push_back(r.param);
      out.slots["momentum_buffer"].push_back(state.slots.at("momentum_buffer")[i]);
      out.slots["exp_avg"].push_back(r.exp_avg);
      out.slots["exp_avg_sq"].push_back(r.exp_avg_sq);
    }
  }
  return out;
}

nlohmann::json Muon::hyperparams() const {
  std::vector<std::string> roles;
  for (auto r : opt_.muon_roles) roles.push_back(to_string(r));
  return {{"type", "muon"},
          {"lr", opt_.lr},
          {"momentum", opt_.momentum},
          {"nesterov", opt_.nesterov},
          {"ns_steps", opt_.ns_steps},
          {"ns_dtype", opt_.ns_float64 ? "float64" : "float32"},
          {"weight_decay", opt_.weight_decay},
          {"adamw_lr_ratio", opt_.adamw_lr_ratio},
          {"adamw_beta1", opt_.adamw_beta1},
          {"adamw_beta2", opt_.adamw_beta2},
          {"adamw_eps", opt_.adamw_eps},
          {"muon_roles", roles},
          {"schedule", schedule_->hyperparams()}};
}

}  // namespace lopt
