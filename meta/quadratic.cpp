#include "meta/quadratic.h"

#include <torch/torch.h>

#include "common/rng.h"

namespace lopt {

QuadraticTruncatedStep::QuadraticTruncatedStep(std::vector<double> a, std::vector<double> x0, int64_t num_tasks,
                                               int64_t length)
    : a_(torch::tensor(a, torch::kFloat64)), x0_(torch::tensor(x0, torch::kFloat64)), num_tasks_(num_tasks), length_(length) {
  TORCH_CHECK(a.size() == x0.size() && !a.empty(), "QuadraticTruncatedStep: a and x0 must have the same, nonzero size");
}

nlohmann::json QuadraticTruncatedStep::hyperparams() const {
  return {{"type", "quadratic"}, {"num_tasks", num_tasks_}, {"length", length_}};
}

InnerState QuadraticTruncatedStep::init_state(const torch::Tensor&, int64_t, uint64_t seed, bool stagger) const {
  InnerState s;
  s.opt.params.tensors = {x0_.clone()};
  s.opt.params.info = {ParamInfo{"x", ParamRole::bias, 1, x0_.size(0), 1.0}};
  s.length = length_;
  if (stagger) {
    auto gen = make_generator(seed);
    s.inner_step = torch::randint(0, length_, {1}, gen, torch::kInt64).item<int64_t>();
  }
  return s;
}

UnrollOut QuadraticTruncatedStep::step(const std::vector<torch::Tensor>& thetas, const std::vector<InnerState*>& states,
                                       const std::vector<int64_t>&, uint64_t, bool differentiable) {
  const size_t M = states.size();
  UnrollOut out;
  out.done.assign(M, false);
  out.was_reset.assign(M, false);
  std::vector<size_t> live;
  std::vector<torch::Tensor> xs, ths;
  for (size_t m = 0; m < M; ++m) {
    if (states[m]->inner_step >= states[m]->length) {
      *states[m] = init_state(thetas[m], 0, 0, false);
      out.was_reset[m] = true;
    } else {
      live.push_back(m);
      xs.push_back(states[m]->opt.params.tensors[0]);
      ths.push_back(differentiable ? thetas[m] : thetas[m].detach());
    }
  }
  auto loss = torch::zeros({static_cast<int64_t>(M)}, torch::kFloat64);
  auto mask = torch::zeros({static_cast<int64_t>(M)}, torch::kFloat64);
  if (!live.empty()) {
    auto x = torch::stack(xs), th = torch::stack(ths).to(torch::kFloat64);
    auto l = 0.5 * (a_ * x * x).sum(1);
    auto nx = x - th * a_ * x;
    auto idx = torch::tensor(std::vector<int64_t>(live.begin(), live.end()), torch::kInt64);
    loss = loss.index_put({idx}, l);
    mask = mask.index_fill(0, idx, 1.0);
    for (size_t j = 0; j < live.size(); ++j) {
      InnerState& s = *states[live[j]];
      s.opt.params.tensors[0] = nx[static_cast<int64_t>(j)];
      s.opt.step += 1;
      s.inner_step += 1;
      out.done[live[j]] = s.inner_step >= s.length;
    }
  }
  out.loss = loss;
  out.mask = mask;
  return out;
}

}  // namespace lopt
