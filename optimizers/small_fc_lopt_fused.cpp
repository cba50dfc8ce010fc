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
  auto dec = opt.decays();
  auto bf = dec.fac;

  // (1) Adafactor accumulators and the row / column side tables.
  torch::Tensor row_side, col_side;
  Indexer ix;
  ix.sizes = shape;
  ix.row_stride.assign(shape.size(), 0);
  ix.col_stride.assign(shape.size(), 0);
  auto g2 = g.reshape(shape).square().add_(1e-30);
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

  KernelArgs a;
  a.g = g.data_ptr<float>();
  a.p = p.data_ptr<float>();
  a.mom = mom.data_ptr<float>();
  a.rms = rms.data_ptr<float>();
  a.row = row_side.data_ptr<float>();
  a.col = col_side.data_ptr<float>();
  auto bm = dec.mom.contiguous();
  for (int k = 0; k < 3; ++k) a.bm[k] = bm.data_ptr<float>()[k];
  a.br = dec.rms.item<float>();

  // (2) Pass one: accumulators and feature second moments, per chunk, reduced in order.
  const int64_t grain = 4096;
  const int64_t chunks = (N + grain - 1) / grain;
  std::vector<double> partial(static_cast<size_t>(chunks) * kF, 0.0);
  a.update_accumulators = true;
  // Runs body(chunk, first element, count, features) over every block of every chunk, in parallel.
  auto for_each_block = [&](auto&& body) {
    at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
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
    });
  };
  for_each_block([&](int64_t c, int64_t, int, float(*x)[kBlk]) { sumsq_block(x, &partial[static_cast<size_t>(c) * kF]); });
  double sumsq[kF] = {0};
  for (int64_t c = 0; c < chunks; ++c)
    for (int f = 0; f < kF; ++f) sumsq[f] += partial[static_cast<size_t>(c) * kF + f];

  // Fold normalisation into the first layer, the time features into its bias.
  const auto& Ws = opt.mlp_weights();
  const auto& bs = opt.mlp_biases();
  const int H = static_cast<int>(cfg.hidden_size);
  auto W0 = Ws[0].detach().contiguous();
  std::vector<float> w1(static_cast<size_t>(H) * kF), b1(static_cast<size_t>(H));
  float scale[kF];
  for (int f = 0; f < kF; ++f)
    scale[f] = static_cast<float>(1.0 / std::sqrt(sumsq[f] / static_cast<double>(N) + 1e-5));
  float tfeat[kLoptTimeFeatures];
  for (int s = 0; s < kLoptTimeFeatures; ++s)
    tfeat[s] = static_cast<float>(std::tanh(static_cast<double>(step) / kLoptTimescales[s] - 1.0));
  const float* w0 = W0.data_ptr<float>();
  auto B0 = bs[0].detach().contiguous();
  for (int j = 0; j < H; ++j) {
    float b = B0.data_ptr<float>()[j];
    for (int f = 0; f < kF; ++f) w1[j * kF + f] = w0[j * kLoptInputs + f] * scale[f];
    for (int s = 0; s < kLoptTimeFeatures; ++s) b += w0[j * kLoptInputs + kF + s] * tfeat[s];
    b1[j] = b;
  }
  std::vector<torch::Tensor> Wc, Bc;
  for (size_t l = 1; l < Ws.size(); ++l) {
    Wc.push_back(Ws[l].detach().contiguous());
    Bc.push_back(bs[l].detach().contiguous());
  }
  const int n_hidden = static_cast<int>(Wc.size()) - 1;  // hidden->hidden layers
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
      dense_block(Wc[l].data_ptr<float>(), Bc[l].data_ptr<float>(), hin, hout, H, H, true);
      std::swap(hin, hout);
    }
    dense_block(Wc.back().data_ptr<float>(), Bc.back().data_ptr<float>(), hin, out, 2, H, false);
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
