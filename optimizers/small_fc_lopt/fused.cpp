// Fused CPU driver of the no-grad step of small_fc_lopt / muLO / ELO and of Celo2's features and
// network (interface: optimizers/fused_step.h; the maths: small_fc_lopt.h, celo2/celo2.h; the SIMD
// kernels: kernels/lopt_cpu.{h,cpp}). It steps many tensors at once — one run's tensors, or every
// tensor of every member of a meta-training population, each member with its own theta — in four
// phases, each one parallel loop over all of them:
//   A. per tensor: Adafactor accumulators (g^2 sums in double, SIMD) and the per-entry tables;
//   B. per chunk: momentum / rms update and the sums of squares of the 16 (Celo2: 18) per-element features;
//   F. per tensor: the normalisation folded into the first layer, the time features and the 12
//      row- or column-only features folded into per-row / per-column biases;
//   C. per chunk: features -> MLP -> update (or the step into job.out), without materialising the inputs.
#include <ATen/Parallel.h>
#include <torch/torch.h>

#include <cmath>
#include <vector>

#include "common/parallel.h"
#include "optimizers/lo_features.h"
#include "optimizers/kernels/lopt_cpu.h"
#include "optimizers/lopt_eps.h"
#include "optimizers/fused_step.h"
#include "optimizers/small_fc_lopt/small_fc_lopt.h"

namespace lopt {
namespace detail {

namespace {

using kernels::kMaxElemFeatures;
using kernels::kSideFeatures;
using kernels::kSideRecord;
constexpr int kMaxF = kMaxElemFeatures + kSideFeatures;
/// Elements per parallel chunk (a multiple of every target's block).
constexpr int64_t kGrain = 8192;

/// A matrix with rows of `n_cols` takes the rows layout unless padding its rows to whole blocks
/// would leave more than a quarter of the lanes idle.
bool rows_fit(int64_t n_cols, int64_t block) {
  const int64_t padded = (n_cols + block - 1) / block * block;
  return 4 * (padded - n_cols) <= padded;
}

/// One tensor's step in preparation.
struct Work {
  const FusedJob* job = nullptr;
  torch::Tensor p, g;  // contiguous float32
  std::vector<int64_t> shape, row_stride, col_stride;
  std::vector<float> row_rec, col_rec;  // Adafactor row / column entries [entries][kSideRecord]
  int64_t n_row_entries = 0, n_col_entries = 0;
  std::vector<float> fac_by_row, fac_by_col;  // rows layout
  int d0 = 0, d1 = 0;                         // factored dims (largest, second largest)
  kernels::LoptTensor kt;
  std::vector<float> w_in, b_in, col_bias;
  std::vector<const float*> w_hidden, b_hidden;
  int64_t first_chunk = 0, n_chunks = 0, units = 0, units_per_chunk = 0;
};

/// Adafactor record of one entry: value, rsqrt(value + 1e-8), factor for g, factor for m.
void put_record(float* rec, const float* acc, const float* fg, const float* fm) {
  for (int k = 0; k < 3; ++k) {
    rec[k] = acc[k];
    rec[3 + k] = 1.0f / std::sqrt(acc[k] + lo_eps::kFactorFeatureF);
    rec[6 + k] = fg[k];
    rec[9 + k] = fm[k];
  }
}

/// Phase A: Adafactor accumulators, entry records and the layout of one tensor.
void prepare(Work& w, int64_t block) {
  const FusedJob& job = *w.job;
  const FusedNet& K = *job.net;
  torch::Tensor& p_ref = *job.p;
  w.p = p_ref.is_contiguous() ? p_ref : p_ref.contiguous();
  w.g = job.g.to(torch::kFloat32).contiguous();
  auto& mom = *job.slots[0];
  auto& rms = *job.slots[1];
  auto& row = *job.slots[2];
  auto& col = *job.slots[3];
  auto& v = *job.slots[4];
  TORCH_CHECK(mom.is_contiguous() && rms.is_contiguous(), "fused learned-optimizer step: state must be contiguous");
  TORCH_CHECK(job.out == nullptr || (w.p.dim() == 2 && row.is_contiguous() && col.is_contiguous()),
              "fused learned-optimizer step: a job with a step output must be a matrix with contiguous state");
  const int64_t N = w.p.numel();
  w.shape = w.p.dim() == 0 ? std::vector<int64_t>{1} : w.p.sizes().vec();
  const auto& shape = w.shape;
  w.row_stride.assign(shape.size(), 0);
  w.col_stride.assign(shape.size(), 0);
  const float* gp = w.g.data_ptr<float>();
  bool rows_layout = false, matrix_moments = false;

  if (shape.size() == 2 && row.is_contiguous() && col.is_contiguous()) {
    auto [d1, d0] = lo::factored_dims(shape);
    w.d0 = static_cast<int>(d0);
    w.d1 = static_cast<int>(d1);
    const int64_t s0 = shape[0], s1 = shape[1];
    std::vector<double> sum0(static_cast<size_t>(s0)), sum1(static_cast<size_t>(s1));
    kernels::square_sums(gp, s0, s1, sum0.data(), sum1.data(), job.grad_clip);
    // row: indexed by dim d1, mean over d0; col: indexed by dim d0, mean over d1.
    const std::vector<double>& row_sum = d1 == 0 ? sum0 : sum1;
    const std::vector<double>& col_sum = d0 == 0 ? sum0 : sum1;
    const double row_n = static_cast<double>(shape[d0]), col_n = static_cast<double>(shape[d1]);
    const int64_t nr = shape[d1], nc = shape[d0];
    float* R = row.data_ptr<float>();
    float* C = col.data_ptr<float>();
    double row_mean[3] = {0, 0, 0};
    for (int64_t i = 0; i < nr; ++i)
      for (int k = 0; k < 3; ++k) {
        R[3 * i + k] = R[3 * i + k] * K.fac_decay[k] + static_cast<float>(row_sum[i] / row_n) * (1.0f - K.fac_decay[k]);
        row_mean[k] += R[3 * i + k];
      }
    for (int64_t i = 0; i < nc; ++i)
      for (int k = 0; k < 3; ++k)
        C[3 * i + k] = C[3 * i + k] * K.fac_decay[k] + static_cast<float>(col_sum[i] / col_n) * (1.0f - K.fac_decay[k]);
    float rm[3];
    for (int k = 0; k < 3; ++k) rm[k] = static_cast<float>(row_mean[k] / static_cast<double>(nr)) + lo_eps::kFactorF;
    w.row_rec.resize(static_cast<size_t>(nr) * kSideRecord);
    w.col_rec.resize(static_cast<size_t>(nc) * kSideRecord);
    for (int64_t i = 0; i < nr; ++i) {
      float f[3];
      for (int k = 0; k < 3; ++k) f[k] = 1.0f / std::sqrt(std::max(R[3 * i + k] / rm[k], lo_eps::kFactorF));  // NaN stays NaN
      put_record(&w.row_rec[static_cast<size_t>(i) * kSideRecord], &R[3 * i], f, f);
    }
    for (int64_t i = 0; i < nc; ++i) {
      float f[3];
      for (int k = 0; k < 3; ++k) f[k] = 1.0f / std::sqrt(std::max(C[3 * i + k], lo_eps::kFactorF));
      put_record(&w.col_rec[static_cast<size_t>(i) * kSideRecord], &C[3 * i], f, f);
    }
    w.n_row_entries = nr;
    w.n_col_entries = nc;
    w.row_stride[d1] = 1;  // the row entry follows dim d1, the column entry dim d0
    w.col_stride[d0] = 1;
    rows_layout = rows_fit(s1, block);
    matrix_moments = true;
  } else if (shape.size() == 1 && v.is_contiguous()) {
    float* V = v.data_ptr<float>();
    w.row_rec.resize(static_cast<size_t>(N) * kSideRecord);
    w.col_rec.resize(static_cast<size_t>(N) * kSideRecord);
    const float ones[3] = {1, 1, 1};
    for (int64_t e = 0; e < N; ++e) {
      const float g2 = gp[e] * gp[e] + lo_eps::kGradSqF;
      float fg[3], fm[3];
      for (int k = 0; k < 3; ++k) {
        V[3 * e + k] = V[3 * e + k] * K.fac_decay[k] + g2 * (1.0f - K.fac_decay[k]);
        fg[k] = 1.0f / std::sqrt(std::max(V[3 * e + k] + lo_eps::kFactorF, lo_eps::kFactorF));
        fm[k] = static_cast<float>(1.0 / std::sqrt(static_cast<double>(V[3 * e + k]) + lo_eps::kVectorMom));  // (v + 1e-6)^-0.5
      }
      put_record(&w.row_rec[static_cast<size_t>(e) * kSideRecord], &V[3 * e], fg, fm);
      put_record(&w.col_rec[static_cast<size_t>(e) * kSideRecord], &V[3 * e], ones, ones);
    }
    w.n_row_entries = w.n_col_entries = N;
    w.row_stride[0] = w.col_stride[0] = 1;
  } else {
    // Other ranks (and non-contiguous state): tensor ops, same maths as SmallFcLoptOptimizer::step.
    auto bf = torch::tensor(std::vector<float>(K.fac_decay, K.fac_decay + 3));
    const auto fac = lo::factored_moments(w.g.reshape(shape), row, col, v, bf);
    torch::Tensor row_side, col_side;
    if (fac.factored) {
      row.copy_(fac.row);
      col.copy_(fac.col);
      row_side = torch::cat({fac.row, (fac.row + lo_eps::kFactorFeature).rsqrt(), fac.row_factor, fac.row_factor}, -1)
                     .reshape({-1, kSideRecord}).contiguous();
      col_side = torch::cat({fac.col, (fac.col + lo_eps::kFactorFeature).rsqrt(), fac.col_factor, fac.col_factor}, -1)
                     .reshape({-1, kSideRecord}).contiguous();
      int64_t rs = 1, cs = 1;
      for (int64_t d = static_cast<int64_t>(shape.size()) - 1; d >= 0; --d) {
        if (d != fac.d0) { w.row_stride[d] = rs; rs *= shape[d]; }
        if (d != fac.d1) { w.col_stride[d] = cs; cs *= shape[d]; }
      }
    } else {
      v.copy_(fac.v);
      auto ones = torch::ones_like(fac.v);
      row_side = torch::cat({fac.v, (fac.v + lo_eps::kFactorFeature).rsqrt(), fac.row_factor,
                             (fac.v + lo_eps::kVectorMom).pow(-0.5)}, -1)
                     .reshape({-1, kSideRecord}).contiguous();
      col_side = torch::cat({fac.v, (fac.v + lo_eps::kFactorFeature).rsqrt(), ones, ones}, -1).reshape({-1, kSideRecord}).contiguous();
      w.row_stride[0] = w.col_stride[0] = 1;
    }
    w.row_rec.assign(row_side.data_ptr<float>(), row_side.data_ptr<float>() + row_side.numel());
    w.col_rec.assign(col_side.data_ptr<float>(), col_side.data_ptr<float>() + col_side.numel());
    w.n_row_entries = row_side.size(0);
    w.n_col_entries = col_side.size(0);
  }

  kernels::LoptTensor& t = w.kt;
  t.n = N;
  t.p = w.p.data_ptr<float>();
  t.g = gp;
  t.mom = mom.data_ptr<float>();
  t.rms = rms.data_ptr<float>();
  for (int k = 0; k < 3; ++k) t.mom_decay[k] = K.mom_decay[k];
  t.rms_decay = K.rms_decay;
  t.rms_eps = K.rms_eps;
  t.celo2_features = K.celo2_features;
  t.grad_clip = job.grad_clip;
  TORCH_CHECK(job.grad_clip == HUGE_VALF || matrix_moments,
              "fused learned-optimizer step: a gradient clamp in the kernel needs a matrix");
  if (job.out != nullptr) {
    TORCH_CHECK(job.out->scalar_type() == torch::kFloat32 && job.out->is_contiguous() && job.out->numel() == N,
                "fused learned-optimizer step: the step output must be a contiguous float32 tensor of the parameter's size");
    t.out = job.out->data_ptr<float>();
  }
  if (rows_layout) {
    // Lanes run along dim 1: the entry indexed by dim 0 is one value per block, the entry indexed by
    // dim 1 a contiguous load from a table padded by one block.
    t.rows = true;
    t.n_rows = shape[0];
    t.n_cols = shape[1];
    t.stride = t.n_cols + kernels::kMaxBlock;
    t.row_entry_by_col = w.d1 == 1;
    const std::vector<float>& by_row = t.row_entry_by_col ? w.col_rec : w.row_rec;
    const std::vector<float>& by_col = t.row_entry_by_col ? w.row_rec : w.col_rec;
    w.fac_by_row.resize(static_cast<size_t>(t.n_rows) * 3);
    w.fac_by_col.assign(static_cast<size_t>(3 * t.stride), 0.0f);
    for (int64_t r = 0; r < t.n_rows; ++r)
      for (int k = 0; k < 3; ++k) w.fac_by_row[static_cast<size_t>(3 * r + k)] = by_row[static_cast<size_t>(r * kSideRecord + 6 + k)];
    for (int64_t c = 0; c < t.n_cols; ++c)
      for (int k = 0; k < 3; ++k) w.fac_by_col[static_cast<size_t>(k * t.stride + c)] = by_col[static_cast<size_t>(c * kSideRecord + 6 + k)];
    t.fac_by_row = w.fac_by_row.data();
    t.fac_by_col = w.fac_by_col.data();
    w.units = t.n_rows;
    w.units_per_chunk = std::max<int64_t>(1, kGrain / std::max<int64_t>(1, t.n_cols));
  } else {
    t.ndim = static_cast<int>(shape.size());
    t.sizes = w.shape.data();
    t.row_stride = w.row_stride.data();
    t.col_stride = w.col_stride.data();
    t.row_tab = w.row_rec.data();
    t.col_tab = w.col_rec.data();
    w.units = N;
    w.units_per_chunk = kGrain;
  }
  w.n_chunks = (w.units + w.units_per_chunk - 1) / w.units_per_chunk;
}

/// Phase F: normalisation scales from the feature second moments, folded into the first layer.
void fold(Work& w, const double* elem_sumsq) {
  const FusedJob& job = *w.job;
  const FusedNet& net = *job.net;
  kernels::LoptTensor& t = w.kt;
  const int E = t.elem_features(), F = E + kSideFeatures;
  const double N = static_cast<double>(t.n);
  // Second moments of all F features (kernel order): per-element ones from phase B; the side ones
  // from the entry records, each entry standing for N / entries elements.
  double sumsq[kMaxF] = {0};
  for (int i = 0; i < E; ++i) sumsq[i] = elem_sumsq[i];
  // Side features: row x3 at E, col x3 at E + 3, rsqrt(row) x3 at E + 6, rsqrt(col) x3 at E + 9.
  const int kRow = E, kCol = E + 3, kRsqRow = E + 6, kRsqCol = E + 9;
  auto side = [&](const std::vector<float>& rec, int64_t entries, int feat0, int rsq0) {
    double s[6] = {0};
    for (int64_t e = 0; e < entries; ++e)
      for (int q = 0; q < 6; ++q) {
        const double x = rec[static_cast<size_t>(e * kSideRecord + q)];
        s[q] += x * x;
      }
    const double count = N / static_cast<double>(entries);
    for (int k = 0; k < 3; ++k) {
      sumsq[feat0 + k] = s[k] * count;
      sumsq[rsq0 + k] = s[3 + k] * count;
    }
  };
  side(w.row_rec, w.n_row_entries, kRow, kRsqRow);
  side(w.col_rec, w.n_col_entries, kCol, kRsqCol);
  double scale[kMaxF];
  for (int f = 0; f < F; ++f) scale[f] = 1.0 / std::sqrt(sumsq[f] / N + net.normalizer_eps);

  const int H = net.hidden;
  auto w0at = [&](int j, int f) { return static_cast<double>(net.w_in[static_cast<size_t>(j * F + f)]); };
  std::vector<double> b0(static_cast<size_t>(H));
  for (int j = 0; j < H; ++j) {
    double b = net.b_in[static_cast<size_t>(j)];
    for (int s = 0; s < net.n_extra; ++s)
      b += static_cast<double>(net.w_extra[static_cast<size_t>(j * net.n_extra + s)]) * job.extra[static_cast<size_t>(s)];
    b0[static_cast<size_t>(j)] = b;
  }
  const int n_in = t.rows ? E : F;
  w.w_in.resize(static_cast<size_t>(H * n_in));
  for (int j = 0; j < H; ++j)
    for (int i = 0; i < n_in; ++i) w.w_in[static_cast<size_t>(j * n_in + i)] = static_cast<float>(w0at(j, i) * scale[i]);
  if (t.rows) {
    // Side features of an entry (value x3 at feat0, rsqrt x3 at rsq0; records hold them at 0..5)
    // weighted for each unit: coef[q][j] = w0[j][f_q] * scale[f_q].
    auto coefs = [&](int feat0, int rsq0) {
      std::vector<double> c(static_cast<size_t>(6 * H));
      for (int q = 0; q < 6; ++q) {
        const int f = q < 3 ? feat0 + q : rsq0 + q - 3;
        for (int j = 0; j < H; ++j) c[static_cast<size_t>(q * H + j)] = w0at(j, f) * scale[f];
      }
      return c;
    };
    const bool by_row_is_row = !t.row_entry_by_col;
    const std::vector<float>& by_row = by_row_is_row ? w.row_rec : w.col_rec;
    const std::vector<float>& by_col = by_row_is_row ? w.col_rec : w.row_rec;
    const auto row_coef = by_row_is_row ? coefs(kRow, kRsqRow) : coefs(kCol, kRsqCol);
    const auto col_coef = by_row_is_row ? coefs(kCol, kRsqCol) : coefs(kRow, kRsqRow);
    // Summed in double (cheap: rows + columns entries), rounded once to float.
    std::vector<double> acc(static_cast<size_t>(std::max<int64_t>(H, t.n_cols)));
    w.b_in.resize(static_cast<size_t>(t.n_rows * H));
    for (int64_t r = 0; r < t.n_rows; ++r) {
      const float* rec = &by_row[static_cast<size_t>(r * kSideRecord)];
      for (int j = 0; j < H; ++j) acc[static_cast<size_t>(j)] = b0[static_cast<size_t>(j)];
      for (int q = 0; q < 6; ++q)
        for (int j = 0; j < H; ++j) acc[static_cast<size_t>(j)] += row_coef[static_cast<size_t>(q * H + j)] * rec[q];
      for (int j = 0; j < H; ++j) w.b_in[static_cast<size_t>(r * H + j)] = static_cast<float>(acc[static_cast<size_t>(j)]);
    }
    w.col_bias.assign(static_cast<size_t>(H * t.stride), 0.0f);
    std::vector<double> col_vals(static_cast<size_t>(6 * t.n_cols));  // [q][c]
    for (int64_t c = 0; c < t.n_cols; ++c)
      for (int q = 0; q < 6; ++q) col_vals[static_cast<size_t>(q * t.n_cols + c)] = by_col[static_cast<size_t>(c * kSideRecord + q)];
    for (int j = 0; j < H; ++j) {
      std::fill(acc.begin(), acc.begin() + t.n_cols, 0.0);
      for (int q = 0; q < 6; ++q) {
        const double cq = col_coef[static_cast<size_t>(q * H + j)];
        const double* vals = &col_vals[static_cast<size_t>(q * t.n_cols)];
        for (int64_t c = 0; c < t.n_cols; ++c) acc[static_cast<size_t>(c)] += cq * vals[c];
      }
      float* b = &w.col_bias[static_cast<size_t>(j * t.stride)];
      for (int64_t c = 0; c < t.n_cols; ++c) b[c] = static_cast<float>(acc[static_cast<size_t>(c)]);
    }
    t.col_bias = w.col_bias.data();
  } else {
    w.b_in.resize(static_cast<size_t>(H));
    for (int j = 0; j < H; ++j) w.b_in[static_cast<size_t>(j)] = static_cast<float>(b0[static_cast<size_t>(j)]);
  }
  t.hidden = H;
  t.n_hidden = static_cast<int>(net.w_hidden.size());
  t.w_in = w.w_in.data();
  t.b_in = w.b_in.data();
  w.w_hidden.clear();
  w.b_hidden.clear();
  for (int l = 0; l < t.n_hidden; ++l) {
    w.w_hidden.push_back(net.w_hidden[static_cast<size_t>(l)].data());
    w.b_hidden.push_back(net.b_hidden[static_cast<size_t>(l)].data());
  }
  t.w_hidden = w.w_hidden.data();
  t.b_hidden = w.b_hidden.data();
  t.w_out = net.w_out.data();
  t.b_out = net.b_out.data();
  t.exp_mult = net.exp_mult;
  t.step_mult = net.step_mult;
  t.lr = static_cast<float>(job.lr);
  t.decay = net.weight_decay > 0 ? static_cast<float>(job.lr * net.weight_decay) : 0.0f;
  t.decay_on_old = net.decay_on_old;
}

}  // namespace

void fused_lopt_steps(const std::vector<FusedJob>& jobs) {
  for (const auto& j : jobs)
    if (j.p->is_cuda()) return gpu_lopt_steps(jobs);  // every tensor must then be on that GPU
  kernels::apply_target_from_env();
  std::vector<Work> works;
  works.reserve(jobs.size());
  for (const auto& j : jobs) {
    TORCH_CHECK(j.p->scalar_type() == torch::kFloat32 && j.p->device().is_cpu(),
                "fused learned-optimizer step needs float32 CPU parameters; use impl \"tensor\" otherwise");
    if (j.p->numel() == 0) continue;
    works.emplace_back();
    works.back().job = &j;
  }
  if (works.empty()) return;
  const int64_t block = kernels::block_elements();
  parallel_items(static_cast<int64_t>(works.size()), [&](int64_t i) { prepare(works[static_cast<size_t>(i)], block); });

  // Chunks of all tensors in one list: (work, first unit).
  std::vector<std::pair<size_t, int64_t>> chunks;
  for (size_t i = 0; i < works.size(); ++i) {
    works[i].first_chunk = static_cast<int64_t>(chunks.size());
    for (int64_t c = 0; c < works[i].n_chunks; ++c) chunks.emplace_back(i, c * works[i].units_per_chunk);
  }
  const int64_t n_chunks = static_cast<int64_t>(chunks.size());
  auto range = [&](int64_t c) {
    const Work& w = works[chunks[static_cast<size_t>(c)].first];
    const int64_t b = chunks[static_cast<size_t>(c)].second;
    return std::make_pair(b, std::min(w.units, b + w.units_per_chunk));
  };
  std::vector<double> partial(static_cast<size_t>(n_chunks * kMaxElemFeatures), 0.0);
  parallel_items(n_chunks, [&](int64_t c) {
    auto [b, e] = range(c);
    kernels::accumulate(works[chunks[static_cast<size_t>(c)].first].kt, b, e, &partial[static_cast<size_t>(c * kMaxElemFeatures)]);
  });
  parallel_items(static_cast<int64_t>(works.size()), [&](int64_t i) {
    Work& w = works[static_cast<size_t>(i)];
    double sumsq[kMaxElemFeatures] = {0};
    const int E = w.kt.elem_features();
    for (int64_t c = w.first_chunk; c < w.first_chunk + w.n_chunks; ++c)  // fixed order: deterministic
      for (int f = 0; f < E; ++f) sumsq[f] += partial[static_cast<size_t>(c * kMaxElemFeatures + f)];
    fold(w, sumsq);
  });
  std::vector<double> out_partial(static_cast<size_t>(n_chunks), 0.0);
  parallel_items(n_chunks, [&](int64_t c) {
    auto [b, e] = range(c);
    const Work& w = works[chunks[static_cast<size_t>(c)].first];
    kernels::apply(w.kt, b, e);
    if (w.job->out_sumsq != nullptr) {
      // The chunk's steps are still in cache: their sum of squares, for the normalisation that follows.
      const int64_t scale = w.kt.rows ? w.kt.n_cols : 1;
      out_partial[static_cast<size_t>(c)] = sum_of_squares(w.kt.out + b * scale, (e - b) * scale);
    }
  });
  for (auto& w : works) {
    if (w.job->out_sumsq != nullptr) {
      double s = 0;
      for (int64_t c = w.first_chunk; c < w.first_chunk + w.n_chunks; ++c) s += out_partial[static_cast<size_t>(c)];
      *w.job->out_sumsq = s;
    }
    if (w.job->out == nullptr && !w.job->p->is_contiguous()) w.job->p->copy_(w.p);
  }
}

double sum_of_squares(const float* x, int64_t n) {
  // Eight partial sums: independent additions (no reassociation needed to vectorise or pipeline).
  double acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int k = 0; k < 8; ++k) acc[k] += static_cast<double>(x[i + k]) * static_cast<double>(x[i + k]);
  for (; i < n; ++i) acc[0] += static_cast<double>(x[i]) * static_cast<double>(x[i]);
  return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

void apply_step_(float* p, const float* step, int64_t n, float lr, float step_scale, float weight_decay) {
  constexpr int64_t kChunk = 1 << 16;
  parallel_items((n + kChunk - 1) / kChunk, [&](int64_t c) {
    const int64_t b = c * kChunk, e = std::min(n, b + kChunk);
    for (int64_t i = b; i < e; ++i) p[i] = p[i] - lr * (step_scale * step[i] + weight_decay * p[i]);
  });
}

int64_t fused_mlp_flops_per_element(const std::vector<int64_t>& shape, int64_t hidden, int64_t hidden_layers,
                                    bool celo2) {
  const int64_t block = kernels::block_elements();
  const bool rows = shape.size() == 2 && rows_fit(shape[1], block);
  const int64_t elem = celo2 ? kernels::kCelo2ElemFeatures : kernels::kElemFeatures;
  const int64_t in = rows ? elem : elem + kSideFeatures;
  // Multiply-adds of the layers (2 FLOPs each); the rows layout adds the column bias (1 FLOP per unit).
  return 2 * (in * hidden + hidden_layers * hidden * hidden + 2 * hidden) + (rows ? hidden : 0);
}

}  // namespace detail
}  // namespace lopt
