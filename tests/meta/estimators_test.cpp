// Gradient estimators on the quadratic problem (meta/quadratic.h), whose meta-gradients are
// known in closed form: x_j(t) = (1 - theta_j a_j)^t x0_j, L_t = 1/2 sum_j a_j x_j(t)^2.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <functional>

#include "meta/estimators.h"
#include "meta/quadratic.h"
#include "support.h"

namespace {

const std::vector<double> kA = {1.0, 0.5};
const std::vector<double> kX0 = {1.0, -2.0};
const std::vector<double> kTheta = {0.3, 0.5};

/// d/dtheta_j of the full-episode meta-loss (1/T) sum_{t<T} L_t, at theta_j = th.
double episode_grad(size_t j, double th, int64_t T) {
  const double r = 1.0 - th * kA[j];
  double g = 0;
  for (int64_t t = 1; t < T; ++t) g -= static_cast<double>(t) * kA[j] * kA[j] * kX0[j] * kX0[j] * std::pow(r, 2 * t - 1);
  return g / static_cast<double>(T);
}

/// E_{e ~ N(0, std^2)} [episode_grad(th + e)]: the gradient of the Gaussian-smoothed meta-loss
/// (the loss is separable over coordinates, so this is a 1-D integral per coordinate).
double smoothed_episode_grad(size_t j, double th, int64_t T, double std) {
  const int n = 8001;
  const double lo = -8 * std, h = 16 * std / (n - 1);
  double s = 0;
  for (int i = 0; i < n; ++i) {
    const double e = lo + i * h;
    const double w = (i == 0 || i == n - 1 ? 0.5 : 1.0) * std::exp(-0.5 * e * e / (std * std));
    s += w * episode_grad(j, th + e, T);
  }
  return s * h / (std * std::sqrt(2 * M_PI));
}

torch::Tensor theta64() { return torch::tensor(kTheta, torch::kFloat64); }

lopt::EstimatorConfig config(const std::string& type, int64_t n, int64_t trunc, double std, bool stagger) {
  lopt::EstimatorConfig c;
  c.type = type;
  c.num_tasks = n;
  c.trunc_length = trunc;
  c.std = std;
  c.stagger = stagger;
  return c;
}

/// Mean and standard error over `groups` independent runs of `one(seed)` (each a [D] estimate).
std::pair<torch::Tensor, torch::Tensor> mean_and_se(int groups, const std::function<torch::Tensor(uint64_t)>& one) {
  std::vector<torch::Tensor> v;
  for (int g = 0; g < groups; ++g) v.push_back(one(1000 + g));
  auto s = torch::stack(v);
  return {s.mean(0), s.std(0) / std::sqrt(static_cast<double>(groups))};
}

TEST(Estimators, TruncatedBackpropEqualsClosedFormGradient) {
  // Staggered starts, truncations that cross episode ends (T = 7, K = 5), two estimates in a
  // row (the second starts from a detached state): every case of the truncated meta-loss.
  const int64_t T = 7, K = 5, N = 4;
  lopt::QuadraticTruncatedStep step(kA, kX0, N, T);
  auto est = lopt::make_gradient_estimator(config("truncated_backprop", N, K, 0.01, true), step);
  auto theta = theta64();
  est->init(theta, 7);
  bool saw_reset = false;
  for (int call = 0; call < 3; ++call) {
    // Closed form: within a segment that starts from xs (constant), the k-th loss is
    // 1/2 sum_j a_j xs_j^2 r_j^(2k), with derivative -k a_j^2 xs_j^2 r_j^(2k-1).
    std::vector<double> ref(kA.size(), 0.0);
    for (const auto* s : est->unroll_states()) {
      int64_t inner = s->inner_step;
      auto xs_t = s->opt.params.tensors[0];
      std::vector<double> xs = {xs_t[0].item<double>(), xs_t[1].item<double>()};
      std::vector<double> g(kA.size(), 0.0);
      int64_t k = 0, count = 0;
      for (int64_t step_i = 0; step_i < K; ++step_i) {
        if (inner >= T) {  // reset step: masked, fresh x0
          xs = kX0;
          k = 0;
          inner = 0;
          saw_reset = true;
          continue;
        }
        for (size_t j = 0; j < kA.size(); ++j) {
          const double r = 1.0 - kTheta[j] * kA[j];
          if (k > 0) g[j] -= static_cast<double>(k) * kA[j] * kA[j] * xs[j] * xs[j] * std::pow(r, 2 * k - 1);
        }
        ++k;
        ++inner;
        ++count;
      }
      for (size_t j = 0; j < kA.size(); ++j) ref[j] += (count ? g[j] / static_cast<double>(count) : 0.0) / N;
    }
    auto out = est->estimate(theta, 100 + call);
    for (size_t j = 0; j < kA.size(); ++j)
      EXPECT_NEAR(out.grad[j].item<double>(), ref[j], 1e-5 * std::max(1.0, std::abs(ref[j]))) << "call " << call << " coord " << j;
  }
  EXPECT_TRUE(saw_reset) << "the test should cover a truncation that crosses an episode end";
}

TEST(Estimators, FullEsMatchesSmoothedGradient) {
  const int64_t T = 20;
  const double std = 0.05;  // large enough that smoothing visibly changes the gradient (~6 SE)
  auto [mean, se] = mean_and_se(20, [&](uint64_t seed) {
    lopt::QuadraticTruncatedStep step(kA, kX0, 1000, T);
    auto est = lopt::make_gradient_estimator(config("full_es", 1000, 1, std, false), step);
    return est->estimate(theta64(), seed).grad;
  });
  for (size_t j = 0; j < kA.size(); ++j) {
    const double smooth = smoothed_episode_grad(j, kTheta[j], T, std), exact = episode_grad(j, kTheta[j], T);
    const double m = mean[j].item<double>(), e = se[j].item<double>();
    EXPECT_LT(e, 0.05 * std::abs(smooth)) << "sample too small to test coordinate " << j;
    EXPECT_LT(std::abs(m - smooth), 4 * e) << "coord " << j << ": ES " << m << " smoothed " << smooth << " se " << e;
    // The smoothing is visible: the smoothed gradient differs from the plain one by many SEs.
    if (j == 0) {
      EXPECT_GT(std::abs(smooth - exact), 4 * e) << "smoothed " << smooth << " exact " << exact;
    }
  }
}

TEST(Estimators, PesIsUnbiasedOverAnEpisodeWhereTruncatedEsIsNot) {
  // One episode of T = 20 steps as 4 truncations of 5: the mean of the 4 estimates estimates
  // the gradient of the episode's mean loss. std is small, so smoothing is negligible (< 0.25 SE).
  const int64_t T = 20, K = 5, N = 200;
  const double std = 0.01;
  auto run = [&](const std::string& type) {
    return mean_and_se(20, [&](uint64_t seed) {
      lopt::QuadraticTruncatedStep step(kA, kX0, N, T);
      auto est = lopt::make_gradient_estimator(config(type, N, K, std, false), step);
      est->init(theta64(), seed);
      auto sum = torch::zeros({2}, torch::kFloat64);
      for (int k = 0; k < T / K; ++k) sum += est->estimate(theta64(), seed * 100 + k).grad;
      return sum / static_cast<double>(T / K);
    });
  };
  auto [pes, pes_se] = run("pes");
  auto [tes, tes_se] = run("truncated_es");
  double worst_tes = 0;
  for (size_t j = 0; j < kA.size(); ++j) {
    const double exact = smoothed_episode_grad(j, kTheta[j], T, std);
    EXPECT_NEAR(smoothed_episode_grad(j, kTheta[j], T, std), episode_grad(j, kTheta[j], T), 0.25 * pes_se[j].item<double>());
    EXPECT_LT(pes_se[j].item<double>(), 0.1 * std::abs(exact));
    EXPECT_LT(std::abs(pes[j].item<double>() - exact), 4 * pes_se[j].item<double>())
        << "coord " << j << ": PES " << pes[j].item<double>() << " exact " << exact;
    worst_tes = std::max(worst_tes, std::abs(tes[j].item<double>() - exact) / tes_se[j].item<double>());
  }
  EXPECT_GT(worst_tes, 10.0) << "truncated ES should be visibly biased: " << tes << " vs exact";
}

/// Expected estimate of one truncation for one task of the quadratic problem, given its episode
/// position `phase` and the number of updates `age` since its state was last (re)set to x0, both
/// advanced in place. Losses L_s = 1/2 a x0^2 r^(2 s) (r = 1 - theta a, s = updates since x0) are
/// differentiated through the whole trajectory since x0 (PES) or only through the truncation, the
/// state at its start held fixed (truncated ES); the reset step is masked and the mean is over the
/// unmasked steps, as the estimators normalise.
void truncation_expectation(int64_t& phase, int64_t& age, int64_t T, int64_t K, double* pes, double* tes) {
  int64_t count = 0;
  const int64_t age0 = age;
  double p[2] = {0, 0}, t[2] = {0, 0};
  int64_t start = age0;  // age at which the truncated-ES gradient starts (a reset restarts it at 0)
  for (int64_t j = 0; j < K; ++j) {
    if (phase >= T) {  // the reset step: no loss
      phase = 0;
      age = 0;
      start = 0;
      continue;
    }
    for (size_t c = 0; c < 2; ++c) {
      const double r = 1.0 - kTheta[c] * kA[c];
      const double base = kA[c] * kA[c] * kX0[c] * kX0[c] * std::pow(r, 2 * age - 1);
      p[c] -= static_cast<double>(age) * base;
      t[c] -= static_cast<double>(age - start) * base;
    }
    ++count;
    ++phase;
    ++age;
  }
  for (size_t c = 0; c < 2; ++c) {
    pes[c] = count ? p[c] / static_cast<double>(count) : 0.0;
    tes[c] = count ? t[c] / static_cast<double>(count) : 0.0;
  }
}

// Staggered starts: every task's truncations cross its episode end at a different place. Each
// group's estimates are compared with the closed form for the phases its tasks actually drew: PES
// must match the exact gradient within 4 standard errors, and the test is built so that 4 SE is
// less than half of truncated ES's bias (an estimator with half that bias would fail), while
// truncated ES itself matches its own (biased) closed form and misses the exact one. Episodes of 7
// steps against truncations of 5 put a reset in most truncations, so a PES that normalises by the
// truncation length instead of the unmasked steps, or credits post-reset losses to the old
// trajectory's perturbations in a way that changes the mean, fails. (One that merely keeps its
// accumulator across a reset has the same mean — the new task is independent of the old
// perturbations — and only more variance: a mean test cannot see that.)
TEST(Estimators, PesIsExactAcrossStaggeredEpisodeResets) {
  const int64_t T = 7, K = 5, N = 64, truncations = 6, groups = 40;
  const double std = 0.01;
  auto run = [&](const std::string& type, std::vector<double>* exact_ref, std::vector<double>* tes_ref) {
    std::vector<torch::Tensor> diffs;
    int resets = 0;
    for (int g = 0; g < groups; ++g) {
      const uint64_t seed = 5000 + static_cast<uint64_t>(g);
      lopt::QuadraticTruncatedStep step(kA, kX0, N, T);
      auto est = lopt::make_gradient_estimator(config(type, N, K, std, true), step);
      est->init(theta64(), seed);
      std::vector<int64_t> phase, age(N, 0);
      for (const auto* st : est->unroll_states()) phase.push_back(st->inner_step);
      auto sum = torch::zeros({2}, torch::kFloat64);
      double ref_exact[2] = {0, 0}, ref_tes[2] = {0, 0};
      for (int64_t k = 0; k < truncations; ++k) {
        sum += est->estimate(theta64(), seed * 100 + static_cast<uint64_t>(k)).grad;
        for (int64_t i = 0; i < N; ++i) {
          double pe[2], te[2];
          const int64_t before = phase[static_cast<size_t>(i)];
          truncation_expectation(phase[static_cast<size_t>(i)], age[static_cast<size_t>(i)], T, K, pe, te);
          resets += phase[static_cast<size_t>(i)] < before ? 1 : 0;
          for (int c = 0; c < 2; ++c) {
            ref_exact[c] += pe[c] / static_cast<double>(N * truncations);
            ref_tes[c] += te[c] / static_cast<double>(N * truncations);
          }
        }
      }
      const auto ref = type == "pes" ? ref_exact : ref_tes;
      diffs.push_back(sum / static_cast<double>(truncations) - torch::tensor({ref[0], ref[1]}, torch::kFloat64));
      exact_ref->push_back(ref_exact[0]);
      exact_ref->push_back(ref_exact[1]);
      tes_ref->push_back(ref_tes[0]);
      tes_ref->push_back(ref_tes[1]);
    }
    EXPECT_GT(resets, groups * N / 2) << "most tasks should cross an episode end";
    auto d = torch::stack(diffs);
    return std::make_pair(d.mean(0), d.std(0) / std::sqrt(static_cast<double>(groups)));
  };
  std::vector<double> exact_ref, tes_ref, unused1, unused2;
  auto [pes_diff, pes_se] = run("pes", &exact_ref, &tes_ref);
  auto [tes_diff, tes_se] = run("truncated_es", &unused1, &unused2);
  for (int c = 0; c < 2; ++c) {
    double bias = 0;  // truncated ES's bias, averaged over groups
    for (int g = 0; g < groups; ++g) bias += (tes_ref[static_cast<size_t>(2 * g + c)] - exact_ref[static_cast<size_t>(2 * g + c)]) / groups;
    const double se = pes_se[c].item<double>();
    EXPECT_LT(4 * se, 0.5 * std::abs(bias)) << "coord " << c << ": the tolerance must reject half of truncated ES's bias";
    EXPECT_LT(std::abs(pes_diff[c].item<double>()), 4 * se) << "coord " << c << ": PES - exact = " << pes_diff[c].item<double>();
    EXPECT_LT(std::abs(tes_diff[c].item<double>()), 4 * tes_se[c].item<double>())
        << "coord " << c << ": truncated ES should match its own closed form";
    EXPECT_GT(std::abs(tes_diff[c].item<double>() + bias), 8 * tes_se[c].item<double>())
        << "coord " << c << ": truncated ES should miss the exact gradient by its bias";
  }
}

TEST(Estimators, ConfigErrorsNameTheKey) {
  auto expect_path = [](const nlohmann::json& config, const std::string& path) {
    lopt_test::expect_config_error([](const nlohmann::json& j) { lopt::EstimatorConfig::from_json(j); }, config, path);
  };
  expect_path({{"type", "reinforce"}}, "/estimator/type");
  expect_path({{"std", 0.0}}, "/estimator/std");
  expect_path({{"std", -1.0}}, "/estimator/std");
  expect_path({{"trunc_length", 0}}, "/estimator/trunc_length");
  expect_path({{"num_tasks", 0}}, "/estimator/num_tasks");
  expect_path({{"sdt", 0.1}}, "/estimator/sdt");
}

}  // namespace
