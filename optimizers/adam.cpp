#include "optimizers/adam.h"

#include <torch/torch.h>

#include <cmath>

namespace lopt {

Adam::Adam(AdamOptions options) : opt_(std::move(options)), schedule_(make_schedule(opt_.schedule)) {
  TORCH_CHECK(opt_.lr >= 0, "Invalid learning rate: ", opt_.lr);
  TORCH_CHECK(opt_.eps >= 0, "Invalid epsilon value: ", opt_.eps);
  TORCH_CHECK(opt_.beta1 >= 0 && opt_.beta1 < 1, "Invalid beta parameter at index 0: ", opt_.beta1);
  TORCH_CHECK(opt_.beta2 >= 0 && opt_.beta2 < 1, "Invalid beta parameter at index 1: ", opt_.beta2);
  TORCH_CHECK(opt_.weight_decay >= 0, "Invalid weight_decay value: ", opt_.weight_decay);
}

double Adam::lr_at(int64_t step, const ParamInfo& info) const {
  return opt_.lr * (*schedule_)(step) * (opt_.mup ? mup_.lr_mult(info) : 1.0);
}

OptState Adam::init(const ParamSet& params) const {
  OptState s;
  s.params = params;
  auto& m = s.slots["exp_avg"];
  auto& v = s.slots["exp_avg_sq"];
  for (const auto& p : params.tensors) {
    m.push_back(torch::zeros_like(p));
    v.push_back(torch::zeros_like(p));
  }
  return s;
}

AdamTensorStep adam_tensor_step(torch::Tensor p, torch::Tensor g, const torch::Tensor& exp_avg, const torch::Tensor& exp_avg_sq,
                                double lr, double beta1, double beta2, double eps, double weight_decay, bool decoupled,
                                double bc1, double bc2_sqrt) {
  if (weight_decay != 0) {
    if (decoupled) p = p * (1 - lr * weight_decay);
    else g = g.add(p, weight_decay);
  }
  auto m = exp_avg.mul(beta1).add(g, 1 - beta1);
  auto v = exp_avg_sq.mul(beta2).addcmul(g, g, 1 - beta2);
  auto denom = v.sqrt().div(bc2_sqrt).add(eps);
  return {p.addcdiv(m, denom, -lr / bc1), m, v};
}

// Follows torch/optim/adam.py and adamw.py (_single_tensor_adam[w], non-amsgrad).
OptState Adam::update(const OptState& state, const std::vector<torch::Tensor>& grads, const torch::Tensor&) const {
  check_grads(state, grads, "Adam::update");
  OptState out;
  out.step = state.step + 1;
  out.params.info = state.params.info;
  const double t = static_cast<double>(out.step);
  const double bc1 = 1 - std::pow(opt_.beta1, t);
  const double bc2_sqrt = std::sqrt(1 - std::pow(opt_.beta2, t));
  auto& ms = out.slots["exp_avg"];
  auto& vs = out.slots["exp_avg_sq"];
  for (size_t i = 0; i < grads.size(); ++i) {
    auto r = adam_tensor_step(state.params.tensors[i], grads[i], state.slots.at("exp_avg")[i], state.slots.at("exp_avg_sq")[i],
                              lr_at(state.step, state.params.info[i]), opt_.beta1, opt_.beta2, opt_.eps, opt_.weight_decay,
                              opt_.decoupled_weight_decay, bc1, bc2_sqrt);
    out.params.tensors.push_back(r.param);
    ms.push_back(r.exp_avg);
    vs.push_back(r.exp_avg_sq);
  }
  return out;
}

nlohmann::json Adam::hyperparams() const {
  std::string type = opt_.mup ? "muadam" : (opt_.decoupled_weight_decay ? "adamw" : "adam");
  nlohmann::json j = {{"type", type},        {"lr", opt_.lr},   {"beta1", opt_.beta1},
                      {"beta2", opt_.beta2}, {"eps", opt_.eps}, {"weight_decay", opt_.weight_decay},
                      {"schedule", schedule_->hyperparams()}};
  if (opt_.mup) j["decoupled_weight_decay"] = opt_.decoupled_weight_decay;
  return j;
}

}  // namespace lopt
