#include "parametrization/parametrization.h"

#include <gtest/gtest.h>

#include "common/errors.h"
#include "common/rng.h"
#include "experiments/coord_check.h"
#include "tasks/mlp.h"

namespace {
lopt::MlpTask make_mlp(const std::string& par, int64_t width, bool zero_readout = true) {
  lopt::MlpConfig c;
  c.width = width;
  c.depth = 3;
  c.image_size = 4;
  c.dataset = "synthetic";
  c.parametrization = {{"type", par}, {"base_width", 64}};
  if (par == "mup") c.parametrization["zero_init_readout"] = zero_readout;
  return lopt::MlpTask(c);
}
}  // namespace

TEST(Parametrization, MupMultipliersFollowTheRoles) {
  lopt::MupParametrization mup(64);
  lopt::ParamInfo hidden{"h", lopt::ParamRole::hidden_weight, 256, 256, 4.0};
  lopt::ParamInfo input{"i", lopt::ParamRole::input_weight, 784, 256, 4.0};
  lopt::ParamInfo out{"o", lopt::ParamRole::output_weight, 256, 10, 4.0};
  lopt::ParamInfo bias{"b", lopt::ParamRole::bias, 1, 256, 4.0};
  EXPECT_DOUBLE_EQ(mup.lr_mult(hidden), 0.25);
  EXPECT_DOUBLE_EQ(mup.lr_mult(input), 1.0);
  EXPECT_DOUBLE_EQ(mup.lr_mult(out), 1.0);
  EXPECT_DOUBLE_EQ(mup.lr_mult(bias), 1.0);
  EXPECT_DOUBLE_EQ(mup.forward_mult(out), 0.25);
  EXPECT_DOUBLE_EQ(mup.forward_mult(hidden), 1.0);
  EXPECT_DOUBLE_EQ(mup.init_std(hidden), 1.0 / 16.0);
  EXPECT_DOUBLE_EQ(mup.init_std(out), 0.0);  // zero-initialised readout
  EXPECT_DOUBLE_EQ(mup.width_mult(256), 4.0);
  lopt::StandardParametrization sp(64);
  EXPECT_DOUBLE_EQ(sp.lr_mult(hidden), 1.0);
  EXPECT_DOUBLE_EQ(sp.forward_mult(out), 1.0);
  EXPECT_DOUBLE_EQ(sp.init_std(out), 1.0 / 16.0);
}

TEST(Parametrization, MupEqualsSpAtTheBaseWidth) {
  auto sp = make_mlp("sp", 64), mup = make_mlp("mup", 64, /*zero_readout=*/false);
  auto g1 = lopt::make_generator(1), g2 = lopt::make_generator(1);
  auto ps = sp.init(g1), pm = mup.init(g2);
  ASSERT_EQ(ps.size(), pm.size());
  for (size_t i = 0; i < ps.size(); ++i) {
    EXPECT_TRUE(torch::equal(ps.tensors[i], pm.tensors[i])) << ps.info[i].name;
    EXPECT_DOUBLE_EQ(mup.parametrization().lr_mult(pm.info[i]), 1.0);
    EXPECT_DOUBLE_EQ(mup.parametrization().forward_mult(pm.info[i]), 1.0);
  }
  auto x = torch::randn({5, 16});
  EXPECT_TRUE(torch::allclose(sp.forward(ps, x), mup.forward(pm, x)));
  // Away from the base width they differ.
  auto wide = make_mlp("mup", 256);
  auto g3 = lopt::make_generator(1);
  auto pw = wide.init(g3);
  EXPECT_DOUBLE_EQ(wide.parametrization().lr_mult(pw.info[2]), 0.25);  // hidden_1.weight
}

TEST(Parametrization, FactoryRejectsUnknownNames) {
  EXPECT_THROW(lopt::make_parametrization(std::string("ntk")), lopt::ConfigError);
  try {
    lopt::make_parametrization(nlohmann::json{{"type", "mup"}, {"base_widht", 3}}, "/task/parametrization");
    FAIL();
  } catch (const lopt::ConfigError& e) {
    EXPECT_EQ(e.path(), "/task/parametrization/base_widht");
  }
}

// The coordinate check must fail if muP is wrong. Measured with this config (3 seeds, Adam LR 1e-2,
// 5 steps, depth 3, synthetic 8x8 inputs, base width 64): the muP activation RMS ratio between
// width 1024 and width 64 stays within [0.85, 1.00] for every layer and step; under SP the logits
// RMS ratio after the first step is about 83. Bounds below leave a wide margin: muP within
// [0.5, 2], SP logits ratio > 8.
TEST(CoordCheck, MupIsStableAcrossWidthsAndSpBlowsUp) {
  lopt::CoordCheckConfig c;
  c.widths = {64, 256, 1024};
  c.depth = 3;
  c.steps = 5;
  c.seeds = 3;
  c.lr = 1e-2;
  c.image_size = 8;
  c.dataset = "synthetic";
  auto r = lopt::run_coord_check(c, lopt::ProgressMode::quiet);
  ASSERT_EQ(r.config.parametrizations, (std::vector<std::string>{"sp", "mup"}));
  const size_t sp = 0, mup = 1, narrow = 0, wide = 2, logits = r.layers.size() - 1;
  double mup_lo = 1e9, mup_hi = 0, sp_max = 0;
  for (int64_t t = 1; t <= c.steps; ++t) {
    for (size_t l = 0; l < r.layers.size(); ++l) {
      double ratio = r.at(mup, wide, t, l) / r.at(mup, narrow, t, l);
      mup_lo = std::min(mup_lo, ratio);
      mup_hi = std::max(mup_hi, ratio);
    }
    sp_max = std::max(sp_max, r.at(sp, wide, t, logits) / r.at(sp, narrow, t, logits));
  }
  RecordProperty("mup_ratio_lo", std::to_string(mup_lo));
  RecordProperty("mup_ratio_hi", std::to_string(mup_hi));
  RecordProperty("sp_logit_ratio", std::to_string(sp_max));
  EXPECT_GT(mup_lo, 0.5);
  EXPECT_LT(mup_hi, 2.0);
  EXPECT_GT(sp_max, 8.0);
  std::printf("coord check: muP ratio in [%.3f, %.3f], SP logits ratio %.1f\n", mup_lo, mup_hi, sp_max);
}
