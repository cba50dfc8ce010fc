#include "optimizers/optimizer.h"

#include <gtest/gtest.h>

#include <cmath>

#include "common/errors.h"
#include "optim_reference.h"
#include "optimizers/schedule.h"
#include "support.h"

namespace ref = lopt_test::optim_ref;

namespace {
lopt::ParamSet reference_params() {
  lopt::ParamSet p;
  for (size_t i = 0; i < ref::kShapes.size(); ++i) {
    std::vector<int64_t> shape(ref::kShapes[i].begin(), ref::kShapes[i].end());
    p.tensors.push_back(lopt_test::tensor_from(ref::kInit[i], shape));
  }
  // Tensor 0 is a hidden weight at width_mult 2 (muAdam halves its LR), tensor 1 a bias.
  p.info = {{"w", lopt::ParamRole::hidden_weight, 4, 3, 2.0}, {"b", lopt::ParamRole::bias, 1, 5, 2.0}};
  return p;
}

std::vector<torch::Tensor> reference_grads(int step) {
  std::vector<torch::Tensor> g;
  for (size_t i = 0; i < ref::kShapes.size(); ++i) {
    std::vector<int64_t> shape(ref::kShapes[i].begin(), ref::kShapes[i].end());
    g.push_back(lopt_test::tensor_from(ref::kGrads[step][i], shape));
  }
  return g;
}
}  // namespace

// Each optimizer follows torch.optim's trajectory (tests/optimizers/gen_optim_reference.py) to 1e-6
// relative, through both the functional update and the in-place fast path.
TEST(OptimizerParity, MatchesTorchOptim) {
  for (const auto& c : ref::kCases) {
    auto opt = lopt::make_optimizer(nlohmann::json::parse(c.config));
    for (bool in_place : {false, true}) {
      auto state = opt->init(reference_params().clone());
      for (int s = 0; s < ref::kSteps; ++s) {
        auto g = reference_grads(s);
        if (in_place) opt->update_(state, g, torch::zeros({}));
        else state = opt->update(state, g, torch::zeros({}));
        for (size_t i = 0; i < g.size(); ++i) {
          auto expected = lopt_test::tensor_from(c.params_after[s][i], state.params.tensors[i].sizes().vec());
          EXPECT_LT(lopt_test::max_rel_error(state.params.tensors[i], expected, 1e-3), 1e-6)
              << c.name << (in_place ? " in-place" : " functional") << " step " << s + 1 << " tensor " << i;
        }
      }
      EXPECT_EQ(state.step, ref::kSteps);
    }
  }
}

TEST(Optimizer, FunctionalUpdateIsDifferentiable) {
  // d p1 / d p0 through one SGD-momentum step is 1 - lr * wd (the weight-decay path).
  auto opt = lopt::make_optimizer({{"type", "sgd"}, {"lr", 0.1}, {"weight_decay", 0.5}});
  lopt::ParamSet p;
  p.tensors = {torch::ones({3}, torch::requires_grad())};
  p.info = {{"b", lopt::ParamRole::bias, 1, 3, 1.0}};
  auto s = opt->update(opt->init(p), {torch::full({3}, 2.0)}, torch::zeros({}));
  auto g = torch::autograd::grad({s.params.tensors[0].sum()}, {p.tensors[0]})[0];
  EXPECT_TRUE(torch::allclose(g, torch::full({3}, 1 - 0.1 * 0.5)));
}

TEST(Optimizer, FactoryErrorsNameTheKey) {
  auto expect_path = [](const nlohmann::json& config, const std::string& path) {
    lopt_test::expect_config_error([](const nlohmann::json& j) { lopt::make_optimizer(j); }, config, path);
  };
  expect_path({{"type", "lion"}}, "/optimizer/type");
  expect_path({{"type", "adam"}, {"lr", -1}}, "/optimizer/lr");
  expect_path({{"type", "adam"}, {"beta1", 1.0}}, "/optimizer/beta1");
  expect_path({{"type", "adam"}, {"momentum", 0.9}}, "/optimizer/momentum");
  expect_path({{"type", "sgd"}, {"nesterov", true}}, "/optimizer/nesterov");
  expect_path({{"type", "adamw"}, {"schedule", {{"type", "cosine"}}}}, "/optimizer/schedule/type");
  expect_path({{"type", "adamw"}, {"schedule", {{"type", "warmup_cosine"}, {"warmup_steps", 10}, {"total_steps", 5}}}},
              "/optimizer/schedule/total_steps");
  // Round trip: hyperparams() rebuilds the same optimizer.
  auto opt = lopt::make_optimizer({{"type", "muadam"}, {"lr", 3e-3}});
  EXPECT_EQ(lopt::make_optimizer(opt->hyperparams())->hyperparams(), opt->hyperparams());
}

TEST(Schedule, ClosedForms) {
  lopt::WarmupCosineSchedule wc(10, 110, 0.1);
  EXPECT_DOUBLE_EQ(wc(0), 0.1);
  EXPECT_DOUBLE_EQ(wc(9), 1.0);
  EXPECT_DOUBLE_EQ(wc(10), 1.0);
  EXPECT_NEAR(wc(60), 0.1 + 0.9 * 0.5, 1e-12);  // halfway through the cosine
  EXPECT_NEAR(wc(35), 0.1 + 0.9 * 0.5 * (1 + std::cos(M_PI * 0.25)), 1e-12);
  EXPECT_DOUBLE_EQ(wc(110), 0.1);
  EXPECT_DOUBLE_EQ(wc(500), 0.1);

  lopt::WsdSchedule wsd(5, 100, 20, 0.0);
  EXPECT_DOUBLE_EQ(wsd(0), 0.2);
  EXPECT_DOUBLE_EQ(wsd(4), 1.0);
  EXPECT_DOUBLE_EQ(wsd(79), 1.0);
  EXPECT_DOUBLE_EQ(wsd(80), 1.0 - 1.0 / 20);
  EXPECT_DOUBLE_EQ(wsd(89), 0.5);
  EXPECT_DOUBLE_EQ(wsd(99), 0.0);

  // The optimizer applies the schedule: SGD's first step with warmup 4 uses lr/4.
  auto opt = lopt::make_optimizer(
      {{"type", "sgd"}, {"lr", 1.0}, {"schedule", {{"type", "warmup_cosine"}, {"warmup_steps", 4}, {"total_steps", 8}}}});
  lopt::ParamSet p;
  p.tensors = {torch::zeros({2})};
  p.info = {{"b", lopt::ParamRole::bias, 1, 2, 1.0}};
  auto s = opt->update(opt->init(p), {torch::ones({2})}, torch::zeros({}));
  EXPECT_FLOAT_EQ(s.params.tensors[0][0].item<float>(), -0.25f);
}
