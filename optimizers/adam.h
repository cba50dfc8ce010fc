#pragma once
/// Adam, AdamW and muAdam, matching torch.optim.Adam / AdamW (Kingma & Ba 2015;
/// Loshchilov & Hutter 2019). muAdam multiplies each tensor's LR by the muP multiplier of
/// its ParamInfo (microsoft/mup MuAdam with decoupled_wd=True: weight decay not rescaled).
#include <memory>

#include "optimizers/optimizer.h"
#include "optimizers/schedule.h"
#include "parametrization/parametrization.h"

namespace lopt {

struct AdamOptions {
  double lr = 1e-3;
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 0.0;
  bool decoupled_weight_decay = false;  ///< true: AdamW
  bool mup = false;                     ///< true: muAdam (per-tensor muP LR multipliers)
  nlohmann::json schedule = {{"type", "constant"}};
};

/// One functional (differentiable) Adam / AdamW step of one tensor, torch's _single_tensor_adam[w]
/// maths: decoupled decay p (1 - lr wd) or L2 g + wd p, moments updated, p - lr / bc1 * m / (sqrt(v) /
/// bc2_sqrt + eps). bc1 = 1 - beta1^t, bc2_sqrt = sqrt(1 - beta2^t). Used by Adam::update and by
/// Muon's AdamW branch.
struct AdamTensorStep {
  torch::Tensor param, exp_avg, exp_avg_sq;
};
AdamTensorStep adam_tensor_step(torch::Tensor p, torch::Tensor g, const torch::Tensor& exp_avg, const torch::Tensor& exp_avg_sq,
                                double lr, double beta1, double beta2, double eps, double weight_decay, bool decoupled,
                                double bc1, double bc2_sqrt);

class Adam : public Optimizer {
 public:
  explicit Adam(AdamOptions options);
  OptState init(const ParamSet& params) const override;
  OptState update(const OptState& state, const std::vector<torch::Tensor>& grads,
                  const torch::Tensor& loss) const override;
  nlohmann::json hyperparams() const override;
  /// Learning rate applied to tensor `info` at update `step` (base LR x schedule x muP multiplier).
  double lr_at(int64_t step, const ParamInfo& info) const override;

 private:
  AdamOptions opt_;
  std::unique_ptr<LrSchedule> schedule_;
  MupParametrization mup_;
};

}  // namespace lopt
