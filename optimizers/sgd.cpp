#include "optimizers/sgd.h"

#include <torch/torch.h>

namespace lopt {

Sgd::Sgd(SgdOptions options) : opt_(std::move(options)), schedule_(make_schedule(opt_.schedule)) {
  TORCH_CHECK(opt_.lr >= 0, "Invalid learning rate: ", opt_.lr);
  TORCH_CHECK(opt_.momentum >= 0, "Invalid momentum: ", opt_.momentum);
  TORCH_CHECK(opt_.weight_decay >= 0, "Invalid weight_decay: ", opt_.weight_decay);
  TORCH_CHECK(!opt_.nesterov || (opt_.momentum > 0 && opt_.dampening == 0),
              "Nesterov momentum requires a momentum and zero dampening");
}

OptState Sgd::init(const ParamSet& params) const {
  OptState s;
  s.params = params;
  if (opt_.momentum > 0) {
    auto& buf = s.slots["momentum_buffer"];
    for (const auto& p : params.tensors) buf.push_back(torch::zeros_like(p));
  }
  return s;
}

// Follows torch/optim/sgd.py (_single_tensor_sgd): the first step initialises the buffer to d_p.
OptState Sgd::update(const OptState& state, const std::vector<torch::Tensor>& grads, const torch::Tensor&) const {
  check_grads(state, grads, "Sgd::update");
  OptState out;
  out.step = state.step + 1;
  out.params.info = state.params.info;
  const double lr = opt_.lr * (*schedule_)(state.step);
  std::vector<torch::Tensor> new_buf;
  for (size_t i = 0; i < grads.size(); ++i) {
    const auto& p = state.params.tensors[i];
    // Same op forms as torch (add with alpha) so that float32 rounding matches too.
    auto d_p = opt_.weight_decay != 0 ? grads[i].add(p, opt_.weight_decay) : grads[i];
    if (opt_.momentum > 0) {
      auto buf = state.step == 0 ? d_p.clone()
                                 : state.slots.at("momentum_buffer")[i].mul(opt_.momentum).add(d_p, 1 - opt_.dampening);
      new_buf.push_back(buf);
      d_p = opt_.nesterov ? d_p.add(buf, opt_.momentum) : buf;
    }
    out.params.tensors.push_back(p.add(d_p, -lr));
  }
  if (opt_.momentum > 0) out.slots["momentum_buffer"] = std::move(new_buf);
  return out;
}

nlohmann::json Sgd::hyperparams() const {
  return {{"type", "sgd"},          {"lr", opt_.lr},         {"momentum", opt_.momentum},
          {"dampening", opt_.dampening}, {"nesterov", opt_.nesterov}, {"weight_decay", opt_.weight_decay},
          {"schedule", schedule_->hyperparams()}};
}

}  // namespace lopt
