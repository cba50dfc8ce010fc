#pragma once
/// The parts every per-parameter learned optimizer of the learned_optimization line builds its
/// features from (learned_optimization `learned_optimizers/common.py`; small_fc_lopt / μLO, and the
/// newer designs that keep the same state: PyLO's CELO2 and ELO), written once as tensor ops. Per
/// parameter of shape S, with K decays per accumulator:
///   rolling averages      a <- a * beta + (1 - beta) * x     (momentum of g, rms of g^2; [*S, K])
///   factored 2nd moments  Adafactor row / column accumulators of g^2 + 1e-30 over the two largest
///                         dimensions (rank >= 2), or a full accumulator (rank < 2), and the factors
///                         that scale g (and momentum) by their inverse square root.
///   time features         tanh(t / s - 1) for the timescales s = 1, 3, 10, ..., 1e5
///   normaliser            x / sqrt(mean(x^2) + eps) over chosen dimensions
/// The fast implementations of small_fc_lopt (the SIMD kernels and the CUDA kernels) compute the same
/// maths element by element and are tested against this one.
#include <torch/torch.h>

#include <array>
#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

namespace lopt::lo {

/// learned_optimization `factored_dims`: (d1, d0), d0 the largest dimension and d1 the second
/// largest (argsort order: ties keep the lower index first). Needs rank >= 2.
std::pair<int64_t, int64_t> factored_dims(const std::vector<int64_t>& shape);

/// The shape a parameter's accumulators see: rank 0 counts as [1].
std::vector<int64_t> accumulator_shape(const torch::Tensor& p);

/// `acc * decay + (1 - decay) * x`, decay broadcast over the last dimension (out of place,
/// differentiable in every argument).
torch::Tensor rolling_average(const torch::Tensor& acc, const torch::Tensor& x, const torch::Tensor& decay);

/// Zero accumulators of a parameter: "mom" [*S, n_mom], "rms" [*S, n_rms], and "fac_vec_row"
/// [S without d0, n_fac], "fac_vec_col" [S without d1, n_fac] for rank >= 2, else "fac_vec_v"
/// [*S, n_fac]; the unused ones are empty. Appended to `slots` in that order (PyLO's state names).
void append_accumulator_slots(const torch::Tensor& p, int64_t n_mom, int64_t n_rms, int64_t n_fac,
                              std::map<std::string, std::vector<torch::Tensor>>& slots);

/// Factored second moments after one step, and the factors they give.
struct FactoredMoments {
  bool factored = false;  ///< rank >= 2
  int64_t d0 = 0, d1 = 0;  ///< factored dims (largest, second largest) when factored
  torch::Tensor row, col;  ///< factored: the updated accumulators [S w/o d0, K], [S w/o d1, K]
  torch::Tensor v;         ///< not factored: the updated accumulator [*S, K]
  /// factored: rsqrt(max(row / (mean of row over d1 + 1e-9), 1e-9)) and rsqrt(max(col, 1e-9)), in
  /// the accumulators' layout; not factored: rsqrt(max(v + 1e-9, 1e-9)) in row_factor.
  torch::Tensor row_factor, col_factor;
  /// x [*S, K] times the factors: (x * row_factor) * col_factor broadcast back to S, or x * row_factor.
  torch::Tensor scale(const torch::Tensor& x) const;
  /// The accumulator values per element, broadcast to [*S, K] (row, col; both v when not factored).
  torch::Tensor row_feature(const std::vector<int64_t>& shape) const;
  torch::Tensor col_feature(const std::vector<int64_t>& shape) const;
};

/// Advances the factored accumulators of a parameter with gradient `g` (shape S) by `decay` [K];
/// `row`, `col`, `v` are the previous accumulators as append_accumulator_slots lays them out. With
/// `batch_dims` > 0 the leading dimensions of g (and of the accumulators) index independent
/// parameters of shape g.shape[batch_dims:] (a population's stacked copies of one tensor).
FactoredMoments factored_moments(const torch::Tensor& g, const torch::Tensor& row, const torch::Tensor& col,
                                 const torch::Tensor& v, const torch::Tensor& decay, int64_t batch_dims = 0);

/// learned_optimization's 11 timescales 1, 3, 10, 30, ..., 3e4, 1e5.
constexpr int64_t kTimeFeatures = 11;
extern const std::array<double, kTimeFeatures> kTimescales;
/// tanh(t / s - 1) for each timescale s, in double (callers round to their precision).
std::array<double, kTimeFeatures> time_features(double t);

/// `x * rsqrt(mean(x^2 over dims) + eps)` (learned_optimization `second_moment_normalizer`; the means
/// keep their dimensions).
torch::Tensor second_moment_normalize(const torch::Tensor& x, const std::vector<int64_t>& dims, double eps);

}  // namespace lopt::lo
