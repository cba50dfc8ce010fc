#pragma once
/// SGD with optional momentum / Nesterov and L2 weight decay, matching torch.optim.SGD.
#include <memory>

#include "optimizers/optimizer.h"
#include "optimizers/schedule.h"

namespace lopt {

struct SgdOptions {
  double lr = 0.1;
  double momentum = 0.0;
  double dampening = 0.0;
  bool nesterov = false;
  double weight_decay = 0.0;
  nlohmann::json schedule = {{"type", "constant"}};
};

class Sgd : public Optimizer {
 public:
  explicit Sgd(SgdOptions options);
  OptState init(const ParamSet& params) const override;
  OptState update(const OptState& state, const std::vector<torch::Tensor>& grads,
                  const torch::Tensor& loss) const override;
  nlohmann::json hyperparams() const override;

 private:
  SgdOptions opt_;
  std::unique_ptr<LrSchedule> schedule_;
};

}  // namespace lopt
