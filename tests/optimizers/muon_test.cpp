#include "optimizers/muon.h"

#include "optimizers/batched_gemm.h"

#include <gtest/gtest.h>

#include <torch/torch.h>

#include <array>
#include <cmath>

#include "common/config.h"
#include "common/errors.h"
#include "support.h"

using lopt::json;

namespace {
// Muon in float64 written out from muon.py's text (not from lopt's code): momentum by lerp, the
// Nesterov blend, the quintic iteration on the wide orientation, the sqrt(max(1, rows/cols)) scale.
torch::Tensor ns5_ref(torch::Tensor g, int steps) {
  g = g.to(torch::kFloat64);
  bool tall = g.size(0) > g.size(1);
  torch::Tensor x = tall ? g.t().clone() : g.clone();
  x = x / (std::sqrt((x * x).sum().item<double>()) + 1e-7);
  for (int k = 0; k < steps; ++k) {
    torch::Tensor a = x.mm(x.t());
    torch::Tensor b = -4.7750 * a + 2.0315 * a.mm(a);
    x = 3.4445 * x + b.mm(x);
  }
  return tall ? x.t() : x;
}

lopt::ParamSet params() {
  auto gen = torch::make_generator<at::CPUGeneratorImpl>(3);
  lopt::ParamSet p;
  p.tensors = {torch::randn({6, 10}, gen), torch::randn({12, 5}, gen), torch::randn({5}, gen), torch::randn({3, 4}, gen)};
  p.info = {{"wide", lopt::ParamRole::hidden_weight, 10, 6, 1.0},
            {"tall", lopt::ParamRole::hidden_weight, 5, 12, 1.0},
            {"bias", lopt::ParamRole::bias, 1, 5, 1.0},
            {"readout", lopt::ParamRole::output_weight, 4, 3, 1.0}};
  return p;
}

std::vector<double> singular_values(const torch::Tensor& m) {
  auto s = std::get<1>(torch::linalg::svd(m.to(torch::kFloat64), false, c10::nullopt));
  return std::vector<double>(s.data_ptr<double>(), s.data_ptr<double>() + s.numel());
}
}  // namespace

// Four steps of Muon (fp32) against the float64 reference: matrices by Nesterov momentum + NS5 +
// shape scale, the bias and the readout by AdamW at lr x adamw_lr_ratio, weight decay on both; the
// pre-orthogonalisation direction (diagnostics) is the reference's Nesterov blend, on the matrices only.
TEST(Muon, MatchesAFloat64Reference) {
  const double lr = 0.05, wd = 0.1, beta = 0.95, ratio = 0.2, b1 = 0.9, b2 = 0.95, eps = 1e-10;
  auto opt = lopt::make_optimizer({{"type", "muon"}, {"lr", lr}, {"weight_decay", wd}, {"adamw_lr_ratio", ratio}});
  auto state = opt->init(params().clone());
  auto p = params();
  std::vector<torch::Tensor> ref_p, mom, m, v;
  for (const auto& t : p.tensors) {
    ref_p.push_back(t.to(torch::kFloat64));
    mom.push_back(torch::zeros_like(ref_p.back()));
    m.push_back(torch::zeros_like(ref_p.back()));
    v.push_back(torch::zeros_like(ref_p.back()));
  }
  auto gen = torch::make_generator<at::CPUGeneratorImpl>(7);
  for (int step = 1; step <= 4; ++step) {
    std::vector<torch::Tensor> g;
    for (const auto& t : p.tensors) g.push_back(torch::randn(t.sizes(), gen) * std::pow(10.0, step - 2));
    const auto dirs = opt->pre_orthogonal_directions(state, g, torch::zeros({}));
    opt->update_(state, g, torch::zeros({}));
    for (size_t i = 0; i < g.size(); ++i) {
      auto gd = g[i].to(torch::kFloat64);
      EXPECT_EQ(dirs[i].defined(), i < 2) << "step " << step << " tensor " << p.info[i].name;
      if (i < 2) {  // Muon
        mom[i] = beta * mom[i] + (1 - beta) * gd;
        auto u = (1 - beta) * gd + beta * mom[i];
        // The direction handed to Newton–Schulz is the Nesterov blend.
        EXPECT_LT((dirs[i].to(torch::kFloat64) - u).abs().max().item<double>(), 1e-6 * u.abs().max().item<double>())
            << "step " << step << " direction of " << p.info[i].name;
        const double scale = std::sqrt(std::max(1.0, double(u.size(0)) / double(u.size(1))));
        ref_p[i] = ref_p[i] * (1 - lr * wd) - lr * scale * ns5_ref(u, 5);
      } else {  // AdamW
        const double alr = lr * ratio;
        m[i] = b1 * m[i] + (1 - b1) * gd;
        v[i] = b2 * v[i] + (1 - b2) * gd * gd;
        auto mhat = m[i] / (1 - std::pow(b1, step)), vhat = v[i] / (1 - std::pow(b2, step));
        ref_p[i] = ref_p[i] * (1 - alr * wd) - alr * mhat / (vhat.sqrt() + eps);
      }
      const double err = (state.params.tensors[i].to(torch::kFloat64) - ref_p[i]).abs().max().item<double>();
      // fp32 NS5 on O(1) entries: rounding of ~1e-7 amplified by the iteration's gain (< 10).
      EXPECT_LT(err, 2e-5) << "step " << step << " tensor " << p.info[i].name;
    }
  }
  EXPECT_EQ(state.step, 4);
  // The functional update is the same step.
  auto s2 = opt->init(params().clone());
  auto s3 = s2;
  std::vector<torch::Tensor> g;
  for (const auto& t : p.tensors) g.push_back(torch::randn(t.sizes(), gen));
  s2 = opt->update(s2, g, torch::zeros({}));
  opt->update_(s3, g, torch::zeros({}));
  for (size_t i = 0; i < g.size(); ++i) EXPECT_TRUE(torch::equal(s2.params.tensors[i], s3.params.tensors[i]));
}

// NS5's singular values land in the quintic's band (muon.py: about 0.7-1.2) for well-conditioned
// inputs of either orientation and batched; rank-deficient, 1 x n and zero inputs stay finite.
TEST(Muon, NewtonSchulzProperties) {
  auto gen = torch::make_generator<at::CPUGeneratorImpl>(11);
  for (auto shape : std::vector<std::vector<int64_t>>{{32, 64}, {64, 32}, {16, 128}}) {
    auto o = lopt::newton_schulz5(torch::randn(shape, gen));
    for (double s : singular_values(o)) {
      EXPECT_GT(s, 0.6) << shape[0] << "x" << shape[1];
      EXPECT_LT(s, 1.25) << shape[0] << "x" << shape[1];
    }
    // float32 matches the float64 reference iteration.
    auto g = torch::randn(shape, gen);
    EXPECT_LT((lopt::newton_schulz5(g).to(torch::kFloat64) - ns5_ref(g, 5)).abs().max().item<double>(), 1e-5);
  }
  auto batch = torch::randn({3, 16, 48}, gen);
  auto ob = lopt::newton_schulz5(batch);
  for (int64_t k = 0; k < 3; ++k) EXPECT_TRUE(torch::allclose(ob[k], lopt::newton_schulz5(batch[k]), 1e-5, 1e-6));
  // Rank 1: one singular value in the band, the rest zero.
  auto u = torch::randn({16, 1}, gen), w = torch::randn({1, 8}, gen);
  auto sv = singular_values(lopt::newton_schulz5(u.mm(w)));
  EXPECT_GT(sv[0], 0.6);
  EXPECT_LT(sv[0], 1.25);
  for (size_t k = 1; k < sv.size(); ++k) EXPECT_LT(sv[k], 1e-4);
  // 1 x n: the normalised row, scaled into the band.
  auto row = torch::randn({1, 20}, gen);
  auto orow = lopt::newton_schulz5(row);
  const double n = orow.norm().item<double>();
  EXPECT_GT(n, 0.6);
  EXPECT_LT(n, 1.25);
  EXPECT_TRUE(torch::allclose(orow / n, row / row.norm(), 1e-5, 1e-6));
  // Zero gradient: a zero update, no NaN; the Muon step leaves the weights unchanged (wd 0).
  EXPECT_EQ(lopt::newton_schulz5(torch::zeros({4, 6})).abs().sum().item<double>(), 0.0);
  auto opt = lopt::make_optimizer({{"type", "muon"}});
  auto state = opt->init(params().clone());
  std::vector<torch::Tensor> zeros;
  for (const auto& t : state.params.tensors) zeros.push_back(torch::zeros_like(t));
  opt->update_(state, zeros, torch::zeros({}));
  for (size_t i = 0; i < zeros.size(); ++i) EXPECT_TRUE(torch::equal(state.params.tensors[i], params().tensors[i]));
}

// batched_sgemm against a float64 product on every operand layout (row-major, transposed view, a
// strided slice), alpha/beta, sizes 1 and 0; newton_schulz_batched against the float64 reference.
TEST(BatchedGemm, MatchesFloat64OnEveryLayout) {
  if (!lopt::batched_sgemm_available())
    GTEST_SKIP() << "this LibTorch does not expose its BLAS sgemm: batched_sgemm declines, callers take the tensor path";
  auto gen = torch::make_generator<at::CPUGeneratorImpl>(5);
  for (auto dims : std::vector<std::array<int64_t, 4>>{{3, 5, 7, 4}, {2, 1, 6, 3}, {4, 8, 1, 9}, {1, 32, 64, 32}, {2, 3, 0, 2}}) {
    const int64_t P = dims[0], M = dims[1], K = dims[2], N = dims[3];
    for (int variant = 0; variant < 8; ++variant) {
      const bool ta = variant & 1, tb = variant & 2, strided = variant & 4;
      auto a = ta ? torch::randn({P, K, M}, gen).transpose(1, 2) : torch::randn({P, M, K}, gen);
      auto b = tb ? torch::randn({P, N, K}, gen).transpose(1, 2) : torch::randn({P, K, N}, gen);
      if (strided) a = torch::randn({P, M, K + 3}, gen).narrow(2, 1, K);  // row stride K + 3
      auto c = torch::randn({P, M, N}, gen);
      const float alpha = 0.75f, beta = variant % 3 == 0 ? 0.0f : -1.5f;
      auto want = alpha * torch::bmm(a.to(torch::kFloat64), b.to(torch::kFloat64)) + beta * c.to(torch::kFloat64);
      ASSERT_TRUE(lopt::batched_sgemm(a, b, c, alpha, beta)) << "variant " << variant;
      const double err = (c.to(torch::kFloat64) - want).abs().max().item<double>();
      EXPECT_LT(err, 1e-4 * std::max<int64_t>(K, 1)) << P << "x" << M << "x" << K << "x" << N << " variant " << variant;
    }
  }
  // Refused, computing nothing: float64, rank 2, a non-contiguous output.
  auto a = torch::randn({2, 3, 4}, gen), b = torch::randn({2, 4, 5}, gen);
  auto c64 = torch::zeros({2, 3, 5}, torch::kFloat64);
  EXPECT_FALSE(lopt::batched_sgemm(a.to(torch::kFloat64), b.to(torch::kFloat64), c64, 1, 0));
  auto c2 = torch::zeros({3, 5});
  EXPECT_FALSE(lopt::batched_sgemm(a[0], b[0], c2, 1, 0));
  auto ct = torch::zeros({2, 5, 3}).transpose(1, 2);
  EXPECT_FALSE(lopt::batched_sgemm(a, b, ct, 1, 0));
  EXPECT_EQ(ct.abs().sum().item<double>(), 0.0);

  const std::array<double, 3> coeffs = {3.4445, -4.7750, 2.0315};
  for (auto shape : std::vector<std::vector<int64_t>>{{5, 32, 64}, {5, 64, 32}, {3, 10, 32}, {2, 1, 20}}) {
    auto g = torch::randn(shape, gen);
    auto fast = lopt::newton_schulz_batched(g, 5, coeffs, 1e-7);
    ASSERT_EQ(fast.sizes(), g.sizes());
    for (int64_t p = 0; p < shape[0]; ++p)
      EXPECT_LT((fast[p].to(torch::kFloat64) - ns5_ref(g[p], 5)).abs().max().item<double>(), 1e-5)
          << shape[1] << "x" << shape[2] << " member " << p;
  }
}

TEST(Muon, ConfigErrorsNameTheKey) {
  // A model without matrices for Muon: refused at init, naming the key that routes roles.
  lopt::ParamSet only_bias;
  only_bias.tensors = {torch::zeros({5})};
  only_bias.info = {{"b", lopt::ParamRole::bias, 1, 5, 1.0}};
  auto opt = lopt::make_optimizer({{"type", "muon"}});
  try {
    opt->init(only_bias);
    FAIL() << "no matrix: expected a ConfigError";
  } catch (const lopt::ConfigError& e) {
    EXPECT_EQ(e.path(), "/optimizer/muon_roles");
  }
  auto bad = [](const json& j, const std::string& path) {
    lopt_test::expect_config_error([](const json& c) { lopt::make_optimizer(c); }, j, path);
  };
  bad({{"type", "muon"}, {"muon_roles", {"bias"}}}, "/optimizer/muon_roles");
  bad({{"type", "muon"}, {"muon_roles", {"hiden_weight"}}}, "/optimizer/muon_roles");
  bad({{"type", "muon"}, {"momentum", 1.0}}, "/optimizer/momentum");
  bad({{"type", "muon"}, {"ns_dtype", "bfloat16"}}, "/optimizer/ns_dtype");
  bad({{"type", "muon"}, {"lr", -1}}, "/optimizer/lr");
  bad({{"type", "muon"}, {"betas", 1}}, "/optimizer/betas");
  // hyperparams() rebuilds the same optimizer.
  auto routed = lopt::make_optimizer({{"type", "muon"}, {"muon_roles", {"hidden_weight", "input_weight"}}, {"lr", 0.01}});
  EXPECT_EQ(lopt::make_optimizer(routed->hyperparams())->hyperparams(), routed->hyperparams());
}
