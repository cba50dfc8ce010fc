// Fused CPU kernel for the no-grad small_fc_lopt / muLO step (see small_fc_lopt.h for the maths).
//
// Per tensor: (1) the factored / 1-D Adafactor accumulators are updated with tensor ops (their
// size is rows + columns, or they are 1-D); (2) pass one updates momentum and rms element-wise and
// sums the squares of the 28 features; (3) pass two rebuilds the features block by block in a
// feature-major buffer (elements along SIMD lanes), folds the per-tensor normalisation into the
// first layer's weights and the time features into its bias, runs the MLP without leaving L1 and
// updates the parameter. The [N, 39] feature matrix is never materialised.
#include <ATen/Parallel.h>
#include <torch/torch.h>

#include <cmath>
#include <cstring>
#include <vector>

#include "optimizers/small_fc_lopt.h"

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define LOPT_TARGET_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define LOPT_TARGET_CLONES
#endif

namespace lopt {
namespace detail {

namespace {

constexpr int kBlk = 16;   // elements per block (one AVX-512 / two AVX2 vectors)
constexpr int kJb = 8;     // output units computed together (register blocking)
constexpr int kF = 28;     // tensor features
constexpr int kSide = 12;  // per row/col entry: feat[3], rsqrt(feat+1e-8)[3], factor_g[3], factor_m[3]

/// Where each element's row-side and column-side entries live (odometer over the shape).
struct Indexer {
  std::vector<int64_t> sizes, row_stride, col_stride;
  /// Offsets (in entries) of flat element `start`, and a cursor to advance.
  struct Cursor {
    std::vector<int64_t> idx;
    int64_t roff = 0, coff = 0;
  };
  Cursor at(int64_t flat) const {
    Cursor c;
    c.idx.assign(sizes.size(), 0);
    for (int64_t d = static_cast<int64_t>(sizes.size()) - 1; d >= 0; --d) {
      c.idx[d] = flat % sizes[d];
      flat /= sizes[d];
      c.roff += c.idx[d] * row_stride[d];
      c.coff += c.idx[d] * col_stride[d];
    }
    return c;
  }
  void next(Cursor& c) const {
    for (int64_t d = static_cast<int64_t>(sizes.size()) - 1; d >= 0; --d) {
      c.roff += row_stride[d];
      c.coff += col_stride[d];
      if (++c.idx[d] < sizes[d]) return;
      c.roff -= row_stride[d] * sizes[d];
      c.coff -= col_stride[d] * sizes[d];
      c.idx[d] = 0;
    }
  }
};

struct KernelArgs {
  const float* g;
  float* p;
  float* mom;  // [N, 3]
  float* rms;  // [N]
  const float* row;  // [rows, kSide]
  const float* col;  // [cols, kSide]
  float bm[3], br;
  bool update_accumulators;
};

/// Builds the 28 raw features of up to kBlk elements into x[kF][kBlk] (feature-major).
inline void build_features(const KernelArgs& a, int64_t e0, int n, const Indexer& ix, Indexer::Cursor& cur,
                           float (*x)[kBlk]) {
  for (int i = 0; i < n; ++i) {
    const int64_t e = e0 + i;
    const float gv = a.g[e];
    float m[3];
    float r;
    if (a.update_accumulators) {
      for (int k = 0; k < 3; ++k) m[k] = a.bm[k] * a.mom[3 * e + k] + (1 - a.bm[k]) * gv;
      r = a.br * a.rms[e] + (1 - a.br) * gv * gv;
      for (int k = 0; k < 3; ++k) a.mom[3 * e + k] = m[k];
      a.rms[e] = r;
    } else {
      for (int k = 0; k < 3; ++k) m[k] = a.mom[3 * e + k];
      r = a.rms[e];
    }
    const float* R = a.row + cur.roff * kSide;
    const float* C = a.col + cur.coff * kSide;
    const float rsq = 1.0f / std::sqrt(r + 1e-6f);
    x[0][i] = gv;
    x[1][i] = a.p[e];
    x[5][i] = r;
    x[9][i] = rsq;
    for (int k = 0; k < 3; ++k) {
      x[2 + k][i] = m[k];
      x[6 + k][i] = m[k] * rsq;
      x[10 + k][i] = gv * R[6 + k] * C[6 + k];
      x[13 + k][i] = R[k];
      x[16 + k][i] = C[k];
      x[19 + k][i] = R[3 + k];
      x[22 + k][i] = C[3 + k];
      x[25 + k][i] = m[k] * R[9 + k] * C[9 + k];
    }
    ix.next(cur);
  }
  for (int i = n; i < kBlk; ++i)
    for (int f = 0; f < kF; ++f) x[f][i] = 0.0f;
}

/// kBlk floats as one value (GCC/Clang vector extension): the compiler keeps it in one AVX-512,
/// two AVX2 or four NEON registers, so the register-blocked accumulators never touch memory.
typedef float VecBlk __attribute__((vector_size(kBlk * sizeof(float))));

inline VecBlk load_blk(const float* p) {
  VecBlk v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
inline void store_blk(float* p, VecBlk v, bool relu) {
  if (relu) v = v > 0.0f ? v : VecBlk{};
  std::memcpy(p, &v, sizeof v);
}

/// out[j][e] = act(b[j] + sum_k W[j][k] * in[k][e]) for j < rows, k < cols; in/out are [*, kBlk].
LOPT_TARGET_CLONES
void dense_block(const float* __restrict W, const float* __restrict b, const float* __restrict in, float* __restrict out,
                 int rows, int cols, bool relu) {
  int j = 0;
  for (; j + kJb <= rows; j += kJb) {
    VecBlk acc[kJb];
    for (int jj = 0; jj < kJb; ++jj) acc[jj] = VecBlk{} + b[j + jj];
    for (int k = 0; k < cols; ++k) {
      const VecBlk xk = load_blk(in + k * kBlk);
      for (int jj = 0; jj < kJb; ++jj) acc[jj] += W[(j + jj) * cols + k] * xk;
    }
    for (int jj = 0; jj < kJb; ++jj) store_blk(out + (j + jj) * kBlk, acc[jj], relu);
  }
  for (; j < rows; ++j) {
    VecBlk acc = VecBlk{} + b[j];
    for (int k = 0; k < cols; ++k) acc += W[j * cols + k] * load_blk(in + k * kBlk);
    store_blk(out + j * kBlk, acc, relu);
  }
}

LOPT_TARGET_CLONES
void sumsq_block(const float (*x)[kBlk], double* acc) {
  for (int f = 0; f < kF; ++f) {
    float s = 0;
    for (int e = 0; e < kBlk; ++e) s += x[f][e] * x[f][e];
    acc[f] += s;
  }
}

}  // namespace

void fused_lopt_step(const SmallFcLoptOptimizer& opt, torch::Tensor& p_ref, const torch::Tensor& g_in,
                     std::vector<torch::Tensor*> slots, double lr, int64_t step) {
  const auto& cfg = opt.config();
  TORCH_CHECK(p_ref.scalar_type() == torch::kFloat32 && p_ref.device().is_cpu(),
              "fused small_fc_lopt step needs float32 CPU parameters; use impl \"tensor\" otherwise");
  torch::Tensor p = p_ref.is_contiguous() ? p_ref : p_ref.contiguous();
  auto g = g_in.to(torch::kFloat32).contiguous();
  auto& mom = *slots[0];
  auto& rms = *slots[1];
  auto& row = *slots[2];
  auto& col = *slots[3];
  auto& v = *slots[4];
  TORCH_CHECK(mom.is_contiguous() && rms.is_contiguous(), "fused small_fc_lopt step: state must be contiguous");
  const int64_t N = p.numel();
  std::vector<int64_t> shape = p.dim() == 0 ? std::vector<int64_t>{1} : p.sizes().vec();
  const auto& K = opt.fused_constants();

  // (1) Adafactor accumulators and the row / column side tables [entries, kSide]. Vectors and
  // matrices take a plain loop (the common case, and cheap for the many small tensors of
  // meta-training); other ranks use tensor ops.
  std::vector<float> row_tab, col_tab;
  Indexer ix;
  ix.sizes = shape;
  ix.row_stride.assign(shape.size(), 0);
  ix.col_stride.assign(shape.size(), 0);
  const float* gp = g.data_ptr<float>();
  auto side = [](std::vector<float>& tab, int64_t i, const float* acc, const float* fg, const float* fm) {
    float* t = &tab[static_cast<size_t>(i) * kSide];
    for (int k = 0; k < 3; ++k) {
      t[k] = acc[k];
      t[3 + k] = 1.0f / std::sqrt(acc[k] + 1e-8f);
      t[6 + k] = fg[k];
      t[9 + k] = fm[k];
    }
  };
  if (shape.size() == 2 && row.is_contiguous() && col.is_contiguous()) {
    auto [d1, d0] = lopt_factored_dims(shape);
    const int64_t s0 = shape[0], s1 = shape[1];
    std::vector<double> sum0(static_cast<size_t>(s0), 0.0), sum1(static_cast<size_t>(s1), 0.0);
    for (int64_t r = 0; r < s0; ++r) {
      double acc = 0;
      for (int64_t c = 0; c < s1; ++c) {
        const float v = gp[r * s1 + c] * gp[r * s1 + c] + 1e-30f;
        acc += v;
        sum1[static_cast<size_t>(c)] += v;
      }
      sum0[static_cast<size_t>(r)] = acc;
    }
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
    for (int k = 0; k < 3; ++k) rm[k] = static_cast<float>(row_mean[k] / static_cast<double>(nr)) + 1e-9f;
    row_tab.resize(static_cast<size_t>(nr) * kSide);
    col_tab.resize(static_cast<size_t>(nc) * kSide);
    for (int64_t i = 0; i < nr; ++i) {
      float f[3];
      for (int k = 0; k < 3; ++k) f[k] = 1.0f / std::sqrt(std::max(R[3 * i + k] / rm[k], 1e-9f));
      side(row_tab, i, &R[3 * i], f, f);
    }
    for (int64_t i = 0; i < nc; ++i) {
      float f[3];
      for (int k = 0; k < 3; ++k) f[k] = 1.0f / std::sqrt(std::max(C[3 * i + k], 1e-9f));
      side(col_tab, i, &C[3 * i], f, f);
    }
    ix.row_stride[d1] = 1;  // the row entry follows dim d1, the column entry dim d0
    ix.col_stride[d0] = 1;
  } else if (shape.size() == 1 && v.is_contiguous()) {
    float* V = v.data_ptr<float>();
    row_tab.resize(static_cast<size_t>(N) * kSide);
    col_tab.resize(static_cast<size_t>(N) * kSide);
    const float ones[3] = {1, 1, 1};
    for (int64_t e = 0; e < N; ++e) {
      const float g2 = gp[e] * gp[e] + 1e-30f;
      float fg[3], fm[3];
      for (int k = 0; k < 3; ++k) {
        V[3 * e + k] = V[3 * e + k] * K.fac_decay[k] + g2 * (1.0f - K.fac_decay[k]);
        fg[k] = 1.0f / std::sqrt(std::max(V[3 * e + k] + 1e-9f, 1e-9f));
        fm[k] = static_cast<float>(std::pow(static_cast<double>(V[3 * e + k]) + 1e-6, -0.5));
      }
      side(row_tab, e, &V[3 * e], fg, fm);
      side(col_tab, e, &V[3 * e], ones, ones);
    }
    ix.row_stride[0] = ix.col_stride[0] = 1;
  } else {
    auto bf = torch::tensor(std::vector<float>(K.fac_decay, K.fac_decay + 3));
    auto g2 = g.reshape(shape).square().add_(1e-30);
    torch::Tensor row_side, col_side;
    if (shape.size() >= 2) {
      auto [d1, d0] = lopt_factored_dims(shape);
      row.mul_(bf).add_(g2.mean(d0).unsqueeze(-1) * (1 - bf));
      col.mul_(bf).add_(g2.mean(d1).unsqueeze(-1) * (1 - bf));
      const int64_t reduced_d1 = d1 > d0 ? d1 - 1 : d1;
      auto rf = (row / (row.mean(reduced_d1, true) + 1e-9)).clamp_min(1e-9).rsqrt();
      auto cf = col.clamp_min(1e-9).rsqrt();
      row_side = torch::cat({row, (row + 1e-8).rsqrt(), rf, rf}, -1).reshape({-1, kSide}).contiguous();
      col_side = torch::cat({col, (col + 1e-8).rsqrt(), cf, cf}, -1).reshape({-1, kSide}).contiguous();
      int64_t rs = 1, cs = 1;
      for (int64_t d = static_cast<int64_t>(shape.size()) - 1; d >= 0; --d) {
        if (d != d0) { ix.row_stride[d] = rs; rs *= shape[d]; }
        if (d != d1) { ix.col_stride[d] = cs; cs *= shape[d]; }
      }
    } else {
      v.mul_(bf).add_(g2.unsqueeze(-1) * (1 - bf));
      auto ones = torch::ones_like(v);
      row_side = torch::cat({v, (v + 1e-8).rsqrt(), (v + 1e-9).clamp_min(1e-9).rsqrt(), (v + 1e-6).pow(-0.5)}, -1)
                     .reshape({-1, kSide}).contiguous();
      col_side = torch::cat({v, (v + 1e-8).rsqrt(), ones, ones}, -1).reshape({-1, kSide}).contiguous();
      ix.row_stride[0] = ix.col_stride[0] = 1;
    }
    row_tab.assign(row_side.data_ptr<float>(), row_side.data_ptr<float>() + row_side.numel());
    col_tab.assign(col_side.data_ptr<float>(), col_side.data_ptr<float>() + col_side.numel());
  }

  KernelArgs a;
  a.g = gp;
  a.p = p.data_ptr<float>();
  a.mom = mom.data_ptr<float>();
  a.rms = rms.data_ptr<float>();
  a.row = row_tab.data();
  a.col = col_tab.data();
  for (int k = 0; k < 3; ++k) a.bm[k] = K.mom_decay[k];
  a.br = K.rms_decay;

  // (2) Pass one: accumulators and feature second moments, per chunk, reduced in order.
  const int64_t grain = 4096;
  const int64_t chunks = (N + grain - 1) / grain;
  std::vector<double> partial(static_cast<size_t>(chunks) * kF, 0.0);
  a.update_accumulators = true;
  // Runs body(chunk, first element, count, features) over every block of every chunk, in parallel.
  auto for_each_block = [&](auto&& body) {
    auto run = [&](int64_t c0, int64_t c1) {
      alignas(64) float x[kF][kBlk];
      for (int64_t c = c0; c < c1; ++c) {
        const int64_t e_end = std::min(N, (c + 1) * grain);
        auto cur = ix.at(c * grain);
        for (int64_t e = c * grain; e < e_end; e += kBlk) {
          int n = static_cast<int>(std::min<int64_t>(kBlk, e_end - e));
          build_features(a, e, n, ix, cur, x);
          body(c, e, n, x);
        }
      }
    };
    // One chunk (small tensors): no parallel region, whose start-up would dominate.
    if (chunks == 1) run(0, 1);
    else at::parallel_for(0, chunks, 1, run);
  };
  for_each_block([&](int64_t c, int64_t, int, float(*x)[kBlk]) { sumsq_block(x, &partial[static_cast<size_t>(c) * kF]); });
  double sumsq[kF] = {0};
  for (int64_t c = 0; c < chunks; ++c)
    for (int f = 0; f < kF; ++f) sumsq[f] += partial[static_cast<size_t>(c) * kF + f];

  // Fold normalisation into the first layer, the time features into its bias.
  const int H = static_cast<int>(cfg.hidden_size);
  std::vector<float> w1(static_cast<size_t>(H) * kF), b1(static_cast<size_t>(H));
  float scale[kF];
  for (int f = 0; f < kF; ++f)
    scale[f] = static_cast<float>(1.0 / std::sqrt(sumsq[f] / static_cast<double>(N) + 1e-5));
  float tfeat[kLoptTimeFeatures];
  for (int s = 0; s < kLoptTimeFeatures; ++s)
    tfeat[s] = static_cast<float>(std::tanh(static_cast<double>(step) / kLoptTimescales[s] - 1.0));
  const float* w0 = K.weights[0].data();
  for (int j = 0; j < H; ++j) {
    float b = K.biases[0][static_cast<size_t>(j)];
    for (int f = 0; f < kF; ++f) w1[j * kF + f] = w0[j * kLoptInputs + f] * scale[f];
    for (int s = 0; s < kLoptTimeFeatures; ++s) b += w0[j * kLoptInputs + kF + s] * tfeat[s];
    b1[j] = b;
  }
  const int n_hidden = static_cast<int>(K.weights.size()) - 2;  // hidden->hidden layers  // hidden->hidden layers
  const float exp_mult = static_cast<float>(cfg.exp_mult), step_mult = static_cast<float>(cfg.step_mult);
  const float flr = static_cast<float>(lr), decay = static_cast<float>(lr * cfg.weight_decay);
  const bool wd = cfg.weight_decay > 0;

  // (3) Pass two: features -> MLP -> update.
  a.update_accumulators = false;
  for_each_block([&](int64_t, int64_t e, int n, float(*x)[kBlk]) {
    // Per-thread scratch for the hidden layers, reused across blocks.
    thread_local std::vector<float> h1, h2;
    h1.resize(static_cast<size_t>(H) * kBlk);
    h2.resize(static_cast<size_t>(H) * kBlk);
    alignas(64) float out[2 * kBlk];
    dense_block(w1.data(), b1.data(), &x[0][0], h1.data(), H, kF, true);
    float* hin = h1.data();
    float* hout = h2.data();
    for (int l = 0; l < n_hidden; ++l) {
      dense_block(K.weights[l + 1].data(), K.biases[l + 1].data(), hin, hout, H, H, true);
      std::swap(hin, hout);
    }
    dense_block(K.weights.back().data(), K.biases.back().data(), hin, out, 2, H, false);
    for (int i = 0; i < n; ++i) {
      float s = out[i] * std::exp(out[kBlk + i] * exp_mult) * step_mult;
      float pn = a.p[e + i] - flr * s;
      if (wd) pn -= decay * pn;
      a.p[e + i] = pn;
    }
  });
  if (!p_ref.is_contiguous()) p_ref.copy_(p);
}

}  // namespace detail
}  // namespace lopt
