#include "optimizers/lo_features.h"

#include <gtest/gtest.h>

#include <torch/torch.h>

#include <cmath>

namespace {

using lopt::lo::factored_dims;

TEST(LoFeatures, FactoredDimsAreTheTwoLargestWithTiesToTheLowerIndex) {
  EXPECT_EQ(factored_dims({3, 7}), (std::pair<int64_t, int64_t>{0, 1}));
  EXPECT_EQ(factored_dims({7, 3}), (std::pair<int64_t, int64_t>{1, 0}));
  EXPECT_EQ(factored_dims({5, 5}), (std::pair<int64_t, int64_t>{0, 1}));  // argsort keeps order
  EXPECT_EQ(factored_dims({4, 9, 2, 6}), (std::pair<int64_t, int64_t>{3, 1}));
  EXPECT_EQ(factored_dims({1, 1, 1}), (std::pair<int64_t, int64_t>{1, 2}));
}

// learned_optimization's factored accumulator written out in float64 loops for a [2, 3, 4] tensor
// (d0 = 2 of size 4, d1 = 1 of size 3), two steps, three decays.
TEST(LoFeatures, FactoredMomentsMatchAFloat64LoopReference) {
  auto gen = torch::make_generator<at::CPUGeneratorImpl>(11);
  const double decay[3] = {0.5, 0.9, 0.99};
  auto dec = torch::tensor({0.5f, 0.9f, 0.99f});
  const auto g1 = torch::randn({2, 3, 4}, gen), g2 = torch::randn({2, 3, 4}, gen) * 100;
  std::map<std::string, std::vector<torch::Tensor>> slots;
  lopt::lo::append_accumulator_slots(g1, 3, 1, 3, slots);
  ASSERT_EQ(slots["fac_vec_row"][0].sizes(), (std::vector<int64_t>{2, 3, 3}));  // without d0
  ASSERT_EQ(slots["fac_vec_col"][0].sizes(), (std::vector<int64_t>{2, 4, 3}));  // without d1
  ASSERT_EQ(slots["fac_vec_v"][0].numel(), 0);
  auto m = lopt::lo::factored_moments(g1, slots["fac_vec_row"][0], slots["fac_vec_col"][0], slots["fac_vec_v"][0], dec);
  m = lopt::lo::factored_moments(g2, m.row, m.col, slots["fac_vec_v"][0], dec);
  ASSERT_TRUE(m.factored);
  EXPECT_EQ(m.d0, 2);
  EXPECT_EQ(m.d1, 1);

  auto G1 = g1.to(torch::kFloat64), G2 = g2.to(torch::kFloat64);
  double row[2][3][3] = {}, col[2][4][3] = {};
  for (const auto& G : {G1, G2}) {
    auto a = G.accessor<double, 3>();
    for (int k = 0; k < 3; ++k)
      for (int b = 0; b < 2; ++b) {
        for (int i = 0; i < 3; ++i) {
          double s = 0;
          for (int j = 0; j < 4; ++j) s += a[b][i][j] * a[b][i][j] + 1e-30;
          row[b][i][k] = row[b][i][k] * decay[k] + (1 - decay[k]) * s / 4;
        }
        for (int j = 0; j < 4; ++j) {
          double s = 0;
          for (int i = 0; i < 3; ++i) s += a[b][i][j] * a[b][i][j] + 1e-30;
          col[b][j][k] = col[b][j][k] * decay[k] + (1 - decay[k]) * s / 3;
        }
      }
  }
  auto gs = m.scale(g2.unsqueeze(-1));
  auto a2 = G2.accessor<double, 3>();
  for (int b = 0; b < 2; ++b)
    for (int k = 0; k < 3; ++k) {
      double mean = 0;
      for (int i = 0; i < 3; ++i) mean += row[b][i][k] / 3;
      for (int i = 0; i < 3; ++i) {
        EXPECT_NEAR(m.row[b][i][k].item<double>(), row[b][i][k], 1e-5 * row[b][i][k]);
        for (int j = 0; j < 4; ++j) {
          const double rf = 1 / std::sqrt(std::max(row[b][i][k] / (mean + 1e-9), 1e-9));
          const double cf = 1 / std::sqrt(std::max(col[b][j][k], 1e-9));
          const double want = a2[b][i][j] * rf * cf;
          EXPECT_NEAR(gs[b][i][j][k].item<double>(), want, 1e-5 * std::abs(want) + 1e-7);
          EXPECT_EQ(m.row_feature({2, 3, 4})[b][i][j][k].item<float>(), m.row[b][i][k].item<float>());
          EXPECT_EQ(m.col_feature({2, 3, 4})[b][i][j][k].item<float>(), m.col[b][j][k].item<float>());
        }
      }
      for (int j = 0; j < 4; ++j) EXPECT_NEAR(m.col[b][j][k].item<double>(), col[b][j][k], 1e-5 * col[b][j][k]);
    }
}

TEST(LoFeatures, VectorMomentsAndRollingAverage) {
  auto dec = torch::tensor({0.9f, 0.99f, 0.999f});
  auto g = torch::tensor({3.0f, -1e-3f, 0.0f});
  std::map<std::string, std::vector<torch::Tensor>> slots;
  lopt::lo::append_accumulator_slots(g, 3, 1, 3, slots);
  ASSERT_EQ(slots["fac_vec_v"][0].sizes(), (std::vector<int64_t>{3, 3}));
  auto m = lopt::lo::factored_moments(g, slots["fac_vec_row"][0], slots["fac_vec_col"][0], slots["fac_vec_v"][0], dec);
  ASSERT_FALSE(m.factored);
  // the decays as float32 holds them (1 - 0.999f is 1.3e-5 off 1e-3 in relative terms)
  const double d[3] = {0.9f, 0.99f, 0.999f}, gv[3] = {3.0, static_cast<double>(-1e-3f), 0.0};
  auto gs = m.scale(g.unsqueeze(-1));
  for (int e = 0; e < 3; ++e)
    for (int k = 0; k < 3; ++k) {
      const double v = (1 - d[k]) * (gv[e] * gv[e] + 1e-30);
      EXPECT_NEAR(m.v[e][k].item<double>(), v, 1e-6 * v + 1e-36);
      const double want = gv[e] / std::sqrt(std::max(v + 1e-9, 1e-9));
      EXPECT_NEAR(gs[e][k].item<double>(), want, 1e-5 * std::abs(want));
    }
  // a <- a * beta + (1 - beta) * x, beta along the last dimension
  auto r = lopt::lo::rolling_average(torch::ones({2, 3}), torch::full({2, 1}, 5.0f), dec);
  EXPECT_NEAR(r[1][2].item<double>(), 0.999 + 0.001 * 5, 1e-6);
  EXPECT_NEAR(r[0][0].item<double>(), 0.9 + 0.1 * 5, 1e-6);
  // a scalar parameter counts as [1]
  EXPECT_EQ(lopt::lo::accumulator_shape(torch::tensor(2.0f)), (std::vector<int64_t>{1}));
}

}  // namespace
