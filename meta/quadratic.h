#pragma once
/// A toy meta-learning problem whose meta-gradients are known in closed form, for checking
/// gradient estimators: inner loss L(x) = 1/2 sum_j a_j x_j^2 from x(0) = x0, inner update
/// x_j <- x_j - theta_j a_j x_j (theta = per-coordinate learning rates), so
/// x_j(t) = (1 - theta_j a_j)^t x0_j. Everything is float64; losses are not normalised.
#include "meta/truncated_step.h"

namespace lopt {

class QuadraticTruncatedStep : public TruncatedStep {
 public:
  /// `a` and `x0` have one entry per coordinate; every episode lasts `length` steps.
  QuadraticTruncatedStep(std::vector<double> a, std::vector<double> x0, int64_t num_tasks, int64_t length);
  int64_t num_tasks() const override { return num_tasks_; }
  InnerState init_state(const torch::Tensor& theta, int64_t task, uint64_t seed, bool stagger) const override;
  UnrollOut step(const std::vector<torch::Tensor>& thetas, const std::vector<InnerState*>& states,
                 const std::vector<int64_t>& tasks, uint64_t seed, bool differentiable) override;
  nlohmann::json hyperparams() const override;

 private:
  torch::Tensor a_, x0_;
  int64_t num_tasks_, length_;
};

}  // namespace lopt
