#include "optimizers/lo_features.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "optimizers/lopt_eps.h"

namespace lopt::lo {

std::pair<int64_t, int64_t> factored_dims(const std::vector<int64_t>& shape) {
  TORCH_CHECK(shape.size() >= 2, "factored_dims: needs rank >= 2");
  std::vector<int64_t> order(shape.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return shape[a] < shape[b]; });
  return {order[order.size() - 2], order[order.size() - 1]};
}

std::vector<int64_t> accumulator_shape(const torch::Tensor& p) {
  return p.dim() == 0 ? std::vector<int64_t>{1} : p.sizes().vec();
}

torch::Tensor rolling_average(const torch::Tensor& acc, const torch::Tensor& x, const torch::Tensor& decay) {
  return acc * decay + (1 - decay) * x;
}

namespace {
std::vector<int64_t> with_last(std::vector<int64_t> s, int64_t n) {
  s.push_back(n);
  return s;
}
std::vector<int64_t> without(std::vector<int64_t> s, int64_t d) {
  s.erase(s.begin() + d);
  return s;
}
}  // namespace

void append_accumulator_slots(const torch::Tensor& p, int64_t n_mom, int64_t n_rms, int64_t n_fac,
                              std::map<std::string, std::vector<torch::Tensor>>& slots) {
  const auto shape = accumulator_shape(p);
  const auto on = torch::TensorOptions().dtype(torch::kFloat32).device(p.device());  // state lives with p
  slots["mom"].push_back(torch::zeros(with_last(shape, n_mom), on));
  slots["rms"].push_back(torch::zeros(with_last(shape, n_rms), on));
  if (shape.size() >= 2) {
    auto [d1, d0] = factored_dims(shape);
    slots["fac_vec_row"].push_back(torch::zeros(with_last(without(shape, d0), n_fac), on));
    slots["fac_vec_col"].push_back(torch::zeros(with_last(without(shape, d1), n_fac), on));
    slots["fac_vec_v"].push_back(torch::zeros({0}, on));
  } else {
    slots["fac_vec_row"].push_back(torch::zeros({0}, on));
    slots["fac_vec_col"].push_back(torch::zeros({0}, on));
    slots["fac_vec_v"].push_back(torch::zeros(with_last(shape, n_fac), on));
  }
}

FactoredMoments factored_moments(const torch::Tensor& g, const torch::Tensor& row, const torch::Tensor& col,
                                 const torch::Tensor& v, const torch::Tensor& decay, int64_t batch_dims) {
  FactoredMoments m;
  const auto all = g.sizes().vec();
  TORCH_CHECK(batch_dims >= 0 && batch_dims <= static_cast<int64_t>(all.size()), "factored_moments: bad batch_dims");
  const std::vector<int64_t> shape(all.begin() + batch_dims, all.end());
  auto g2 = g.square() + lo_eps::kGradSq;
  if (shape.size() >= 2) {
    m.factored = true;
    std::tie(m.d1, m.d0) = factored_dims(shape);
    m.d1 += batch_dims;
    m.d0 += batch_dims;
    m.row = rolling_average(row, g2.mean(m.d0).unsqueeze(-1), decay);
    m.col = rolling_average(col, g2.mean(m.d1).unsqueeze(-1), decay);
    const int64_t reduced_d1 = m.d1 > m.d0 ? m.d1 - 1 : m.d1;  // d1's index in row (d0 removed)
    m.row_factor = (m.row / (m.row.mean(reduced_d1, true) + lo_eps::kFactor)).clamp_min(lo_eps::kFactor).rsqrt();
    m.col_factor = m.col.clamp_min(lo_eps::kFactor).rsqrt();
  } else {
    m.v = rolling_average(v, g2.unsqueeze(-1), decay);
    m.row_factor = (m.v + lo_eps::kFactor).clamp_min(lo_eps::kFactor).rsqrt();
  }
  return m;
}

torch::Tensor FactoredMoments::scale(const torch::Tensor& x) const {
  if (!factored) return x * row_factor;
  return x * row_factor.unsqueeze(d0) * col_factor.unsqueeze(d1);
}

torch::Tensor FactoredMoments::row_feature(const std::vector<int64_t>& shape) const {
  if (!factored) return v;
  return row.unsqueeze(d0).expand(with_last(shape, row.size(-1)));
}

torch::Tensor FactoredMoments::col_feature(const std::vector<int64_t>& shape) const {
  if (!factored) return v;
  return col.unsqueeze(d1).expand(with_last(shape, col.size(-1)));
}

const std::array<double, kTimeFeatures> kTimescales = {1, 3, 10, 30, 100, 300, 1e3, 3e3, 1e4, 3e4, 1e5};

std::array<double, kTimeFeatures> time_features(double t) {
  std::array<double, kTimeFeatures> f{};
  for (size_t s = 0; s < f.size(); ++s) f[s] = std::tanh(t / kTimescales[s] - 1.0);
  return f;
}

torch::Tensor second_moment_normalize(const torch::Tensor& x, const std::vector<int64_t>& dims, double eps) {
  return x * (x.square().mean(dims, true) + eps).rsqrt();
}

}  // namespace lopt::lo
