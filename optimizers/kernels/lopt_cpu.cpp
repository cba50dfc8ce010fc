// Highway kernels of the fused small_fc_lopt / muLO step (interface and layouts: lopt_cpu.h; the
// maths: optimizers/small_fc_lopt/small_fc_lopt.h, after PyLO's MuLO_naive). This file is compiled once per
// target by hwy/foreach_target.h and dispatched at run time.
//
// Design: elements along lanes; a block of kB = kV * Lanes() elements builds its 16 per-element
// features (18 for Celo2) in an L1 buffer [feature][kB], then runs the MLP with a register tile of kJ units x kV
// vectors (kJ = 8 where the target has 32 vector registers, 4 where it has 16: no spills). The 12
// features that depend only on an Adafactor row or column entry are not recomputed per element: in
// the rows layout the driver has folded them (and the time features) into a per-row bias and a
// per-column bias; in the generic layout each lane gathers them and the first layer takes 28 inputs.
// ReLU is written so that NaN propagates (v < 0 ? 0 : v), as torch.relu does.

// SSSE3 adds nothing over SSE4 here; SVE/RVV vectors are sizeless and cannot form the register tile
// arrays (ARM64 runs the NEON target).
#ifndef HWY_DISABLED_TARGETS
#define HWY_DISABLED_TARGETS (HWY_SSSE3 | HWY_SVE | HWY_SVE2 | HWY_SVE_256 | HWY_SVE2_128 | HWY_RVV)
#endif
// Every attainable target, the scalar baseline included (by default Highway drops targets below
// the compiler's baseline, and tests must be able to run each one).
#ifndef HWY_COMPILE_ALL_ATTAINABLE
#define HWY_COMPILE_ALL_ATTAINABLE
#endif

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "optimizers/kernels/lopt_cpu.cpp"
#include "hwy/foreach_target.h"  // IWYU pragma: keep

#include "hwy/aligned_allocator.h"
#include "hwy/contrib/math/math-inl.h"
#include "hwy/highway.h"
#include "optimizers/kernels/lopt_cpu.h"
#include "optimizers/lopt_eps.h"

#ifndef LOPT_KERNELS_LOPT_CPU_ONCE
#define LOPT_KERNELS_LOPT_CPU_ONCE
#include <algorithm>
#include <cstring>
#include <vector>

namespace lopt::kernels::detail {
/// Generic layout: an odometer over the tensor's shape giving each element's Adafactor row and
/// column entry offsets (in records).
struct Cursor {
  const LoptTensor& t;
  std::vector<int64_t> idx;
  int64_t roff = 0, coff = 0;
  Cursor(const LoptTensor& tensor, int64_t flat) : t(tensor), idx(static_cast<size_t>(tensor.ndim), 0) {
    for (int d = t.ndim - 1; d >= 0; --d) {
      idx[static_cast<size_t>(d)] = flat % t.sizes[d];
      flat /= t.sizes[d];
      roff += idx[static_cast<size_t>(d)] * t.row_stride[d];
      coff += idx[static_cast<size_t>(d)] * t.col_stride[d];
    }
  }
  void next() {
    for (int d = t.ndim - 1; d >= 0; --d) {
      roff += t.row_stride[d];
      coff += t.col_stride[d];
      if (++idx[static_cast<size_t>(d)] < t.sizes[d]) return;
      roff -= t.row_stride[d] * t.sizes[d];
      coff -= t.col_stride[d] * t.sizes[d];
      idx[static_cast<size_t>(d)] = 0;
    }
  }
};
}  // namespace lopt::kernels::detail
#endif  // LOPT_KERNELS_LOPT_CPU_ONCE

HWY_BEFORE_NAMESPACE();
namespace lopt::kernels {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

using D = hn::ScalableTag<float>;
using V = hn::Vec<D>;
constexpr size_t kL = hn::MaxLanes(D());
#if HWY_TARGET == HWY_AVX3 || HWY_TARGET == HWY_AVX3_DL || HWY_TARGET == HWY_NEON
constexpr int kJ = 8;  // 32 vector registers: 16 accumulators + inputs
constexpr int kV = 2;
#elif HWY_TARGET == HWY_AVX2
// 16 vector registers: 12 accumulators + 3 inputs + 1 weight. Three vectors per block rather than
// two give each broadcast weight three FMAs: measured 15-20% faster than kJ 4 x kV 2 on AVX2, for
// μLO (hidden 32) and Celo2 (hidden 8) alike.
constexpr int kJ = 4;
constexpr int kV = 3;
#else
constexpr int kJ = 4;  // 16 vector registers: 8 accumulators + inputs
constexpr int kV = 2;
#endif
constexpr size_t kB = kV * kL;  // elements per block
static_assert(kB <= static_cast<size_t>(kMaxBlock), "kMaxBlock must bound every target's block");
constexpr int kMaxAllFeatures = kMaxElemFeatures + kSideFeatures;

/// clamp(g, -clip, clip) with NaN kept (torch.clamp); clip = +inf leaves g as it is.
HWY_INLINE V ClampGrad(const V g, const float clip) {
  const D d;
  if (clip == HUGE_VALF) return g;
  const V c = hn::Set(d, clip);
  return hn::IfThenElse(hn::IsNaN(g), g, hn::Min(hn::Max(g, hn::Neg(c)), c));
}

HWY_INLINE V Relu(const V v) {
  const D d;
  return hn::IfThenZeroElse(hn::Lt(v, hn::Zero(d)), v);  // NaN stays NaN
}

/// Calls emit(f, feature f) for the 16 per-element features of one vector of elements, and with
/// kCelo2 Celo2's two more (16: clamp(g, -0.1, 0.1), 17: g * rsqrt(rms + eps)).
/// (ga, gb): the Adafactor row and column factors applied to g; (ma, mb) those applied to m.
template <bool kCelo2, class Emit>
HWY_INLINE void ElemFeatures(const V g, const V p, const V m[3], const V r, const V ga[3], const V gb[3],
                             const V ma[3], const V mb[3], const V rms_eps, const Emit& emit) {
  const D d;
  const V rsq = hn::Div(hn::Set(d, 1.0f), hn::Sqrt(hn::Add(r, rms_eps)));
  emit(0, g);
  emit(1, p);
  for (int k = 0; k < 3; ++k) emit(2 + k, m[k]);
  emit(5, r);
  for (int k = 0; k < 3; ++k) emit(6 + k, hn::Mul(m[k], rsq));
  emit(9, rsq);
  for (int k = 0; k < 3; ++k) emit(10 + k, hn::Mul(hn::Mul(g, ga[k]), gb[k]));
  for (int k = 0; k < 3; ++k) emit(13 + k, hn::Mul(hn::Mul(m[k], ma[k]), mb[k]));
  if (kCelo2) {
    // Clamp written as Min(Max) on g first, so that NaN propagates as torch.clamp does.
    emit(16, hn::IfThenElse(hn::IsNaN(g), g, hn::Min(hn::Max(g, hn::Set(d, -0.1f)), hn::Set(d, 0.1f))));
    emit(17, hn::Mul(g, rsq));
  }
}

/// Momentum and rms update of vector `v` (in place at mom / rms).
HWY_INLINE void UpdateAccumulators(const LoptTensor& t, const V g, float* HWY_RESTRICT mom, float* HWY_RESTRICT rms,
                                   V m[3], V& r) {
  const D d;
  hn::LoadInterleaved3(d, mom, m[0], m[1], m[2]);
  for (int k = 0; k < 3; ++k)
    m[k] = hn::Add(hn::Mul(hn::Set(d, t.mom_decay[k]), m[k]), hn::Mul(hn::Set(d, 1.0f - t.mom_decay[k]), g));
  r = hn::Add(hn::Mul(hn::Set(d, t.rms_decay), hn::LoadU(d, rms)), hn::Mul(hn::Set(d, 1.0f - t.rms_decay), hn::Mul(g, g)));
  hn::StoreInterleaved3(m[0], m[1], m[2], d, mom);
  hn::StoreU(r, d, rms);
}

/// Sums of squares of the kE features: a block sums into registers, blocks into float vectors, and
/// every kFlushBlocks blocks those move to double (at most kFlushBlocks * kV additions per lane in float).
template <int kE>
struct SquareAccumulator {
  static constexpr int kFlushBlocks = 16;
  HWY_ALIGN float acc[kE][kL];
  int blocks = 0;
  double* out;
  explicit SquareAccumulator(double* sumsq) : out(sumsq) { clear(); }
  void clear() { std::fill(&acc[0][0], &acc[0][0] + kE * kL, 0.0f); }
  HWY_INLINE void add_block(const V* block) {
    const D d;
    for (int f = 0; f < kE; ++f) hn::Store(hn::Add(hn::Load(d, acc[f]), block[f]), d, acc[f]);
    if (++blocks % kFlushBlocks == 0) flush();
  }
  void flush() {
    const D d;
    for (int f = 0; f < kE; ++f) out[f] += static_cast<double>(hn::GetLane(hn::SumOfLanes(d, hn::Load(d, acc[f]))));
    clear();
  }
};

/// out[j][e] = relu(init(j, vector) + sum_k w[j][k] in[k][e]) for j < rows, k < cols; in/out are
/// [*][kB]. The register tile is kJ units x kV vectors.
template <class Init>
HWY_INLINE void Dense(const float* HWY_RESTRICT w, int rows, int cols, const float* HWY_RESTRICT in,
                      float* HWY_RESTRICT out, const Init& init) {
  const D d;
  int j = 0;
  for (; j + kJ <= rows; j += kJ) {
    V acc[kJ][kV];
    for (int jj = 0; jj < kJ; ++jj)
      for (size_t v = 0; v < kV; ++v) acc[jj][v] = init(j + jj, v);
    const float* wj = w + static_cast<size_t>(j) * static_cast<size_t>(cols);
    for (int k = 0; k < cols; ++k) {
      V xk[kV];
      for (size_t v = 0; v < kV; ++v) xk[v] = hn::Load(d, in + static_cast<size_t>(k) * kB + v * kL);
      for (int jj = 0; jj < kJ; ++jj) {
        const V wv = hn::Set(d, wj[jj * cols + k]);
        for (size_t v = 0; v < kV; ++v) acc[jj][v] = hn::MulAdd(wv, xk[v], acc[jj][v]);
      }
    }
    for (int jj = 0; jj < kJ; ++jj)
      for (size_t v = 0; v < kV; ++v) hn::Store(Relu(acc[jj][v]), d, out + static_cast<size_t>(j + jj) * kB + v * kL);
  }
  for (; j < rows; ++j) {
    V acc[kV];
    for (size_t v = 0; v < kV; ++v) acc[v] = init(j, v);
    for (int k = 0; k < cols; ++k) {
      const V wv = hn::Set(d, w[static_cast<size_t>(j) * static_cast<size_t>(cols) + static_cast<size_t>(k)]);
      for (size_t v = 0; v < kV; ++v)
        acc[v] = hn::MulAdd(wv, hn::Load(d, in + static_cast<size_t>(k) * kB + v * kL), acc[v]);
    }
    for (size_t v = 0; v < kV; ++v) hn::Store(Relu(acc[v]), d, out + static_cast<size_t>(j) * kB + v * kL);
  }
}

/// Runs the hidden layers and the output layer on h (first hidden activations, [hidden][kB]) and
/// updates kB parameters at p: step = d * exp(m * exp_mult) * step_mult; p -= lr * step; then
/// weight decay p -= lr * wd * p (of the updated p, or of the old one when decay_on_old). With
/// t.out set, the step goes to out instead.
HWY_INLINE void MlpTailAndUpdate(const LoptTensor& t, float* HWY_RESTRICT h, float* HWY_RESTRICT h2,
                                 float* HWY_RESTRICT p, float* HWY_RESTRICT out) {
  const D d;
  const int H = t.hidden;
  for (int l = 0; l < t.n_hidden; ++l) {
    const float* b = t.b_hidden[l];
    Dense(t.w_hidden[l], H, H, h, h2, [&](int j, size_t) { return hn::Set(d, b[j]); });
    std::swap(h, h2);
  }
  // Output layer (2 units): two partial sums per unit and vector so that the FMA latency is hidden.
  V acc[2][2][kV];
  for (int u = 0; u < 2; ++u)
    for (size_t v = 0; v < kV; ++v) {
      acc[u][0][v] = hn::Set(d, t.b_out[u]);
      acc[u][1][v] = hn::Zero(d);
    }
  for (int k = 0; k < H; ++k) {
    const int half = k & 1;
    for (size_t v = 0; v < kV; ++v) {
      const V hk = hn::Load(d, h + static_cast<size_t>(k) * kB + v * kL);
      for (int u = 0; u < 2; ++u)
        acc[u][half][v] = hn::MulAdd(hn::Set(d, t.w_out[u * H + k]), hk, acc[u][half][v]);
    }
  }
  const V exp_mult = hn::Set(d, t.exp_mult), step_mult = hn::Set(d, t.step_mult), lr = hn::Set(d, t.lr),
          decay = hn::Set(d, t.decay);
  for (size_t v = 0; v < kV; ++v) {
    const V dir = hn::Add(acc[0][0][v], acc[0][1][v]);
    const V mag = hn::Add(acc[1][0][v], acc[1][1][v]);
    // Celo2 with exp_mult 0 has no magnitude term at all (its tensor path skips the exp; a NaN or
    // infinite magnitude then does not reach the step); small_fc_lopt always applies it.
    const bool no_mag = t.celo2_features && t.exp_mult == 0.0f;
    const V step = hn::Mul(no_mag ? dir : hn::Mul(dir, hn::Exp(d, hn::Mul(mag, exp_mult))), step_mult);
    if (out != nullptr) {
      hn::StoreU(step, d, out + v * kL);
      continue;
    }
    const V p_old = hn::LoadU(d, p + v * kL);
    V pn = hn::Sub(p_old, hn::Mul(lr, step));
    if (t.decay != 0.0f) pn = hn::Sub(pn, hn::Mul(decay, t.decay_on_old ? p_old : pn));
    hn::StoreU(pn, d, p + v * kL);
  }
}

/// Element data of one block: direct pointers for a full block, zero-padded copies for a partial one.
struct BlockData {
  HWY_ALIGN float g[kB], p[kB], mom[3 * kB], rms[kB], out[kB];
  const float* gp;
  float *pp, *mp, *rp, *op;
  size_t n;
  void load(const LoptTensor& t, int64_t e, size_t count) {
    n = count;
    if (n == kB) {
      gp = t.g + e;
      pp = t.p + e;
      mp = t.mom + 3 * e;
      rp = t.rms + e;
      op = t.out == nullptr ? nullptr : t.out + e;
      return;
    }
    op = t.out == nullptr ? nullptr : out;
    std::fill(g, g + kB, 0.0f);
    std::fill(p, p + kB, 0.0f);
    std::fill(mom, mom + 3 * kB, 0.0f);
    std::fill(rms, rms + kB, 0.0f);
    std::memcpy(g, t.g + e, n * sizeof(float));
    std::memcpy(p, t.p + e, n * sizeof(float));
    std::memcpy(mom, t.mom + 3 * e, 3 * n * sizeof(float));
    std::memcpy(rms, t.rms + e, n * sizeof(float));
    gp = g;
    pp = p;
    mp = mom;
    rp = rms;
  }
  /// Copies what the kernel wrote into a partial block's buffers back to the tensors.
  void store_accumulators(const LoptTensor& t, int64_t e) const {
    if (n == kB) return;
    std::memcpy(t.mom + 3 * e, mom, 3 * n * sizeof(float));
    std::memcpy(t.rms + e, rms, n * sizeof(float));
  }
  void store_params(const LoptTensor& t, int64_t e) const {
    if (n == kB) return;
    if (t.out != nullptr) std::memcpy(t.out + e, out, n * sizeof(float));
    else std::memcpy(t.p + e, p, n * sizeof(float));
  }
};

/// Factors of vector v of a rows-layout block (row r, columns c0...): (row entry, column entry).
HWY_INLINE void RowsFactors(const LoptTensor& t, int64_t r, int64_t c0, size_t v, V a[3], V b[3]) {
  const D d;
  for (int k = 0; k < 3; ++k) {
    const V by_row = hn::Set(d, t.fac_by_row[3 * r + k]);
    const V by_col = hn::LoadU(d, t.fac_by_col + k * t.stride + c0 + static_cast<int64_t>(v * kL));
    a[k] = t.row_entry_by_col ? by_col : by_row;
    b[k] = t.row_entry_by_col ? by_row : by_col;
  }
}

/// The Adafactor factors of vector v of a block: applied to g (ga row, gb column) and to m (ma, mb).
/// Rows layout: from the tables (one factor serves g and m for matrices); generic: gathered into fac.
HWY_INLINE void BlockFactors(const LoptTensor& t, int64_t r, int64_t c0, size_t v, const float (*fac)[kB], V ga[3],
                             V gb[3], V ma[3], V mb[3]) {
  const D d;
  if (t.rows) {
    RowsFactors(t, r, c0, v, ga, gb);
    for (int k = 0; k < 3; ++k) ma[k] = ga[k], mb[k] = gb[k];
    return;
  }
  for (int k = 0; k < 3; ++k) {
    ga[k] = hn::Load(d, fac[k] + v * kL);
    gb[k] = hn::Load(d, fac[3 + k] + v * kL);
    ma[k] = hn::Load(d, fac[6 + k] + v * kL);
    mb[k] = hn::Load(d, fac[9 + k] + v * kL);
  }
}

/// Generic layout: gathers the side records of n elements from the cursor into the block's side
/// feature rows x[E..E+11] (E = t.elem_features()) and the factor buffers (zero-padded to kB).
HWY_INLINE void GatherSide(const LoptTensor& t, detail::Cursor& cur, size_t n, float* HWY_RESTRICT x,
                           float (*fac)[kB]) {
  x += static_cast<size_t>(t.elem_features()) * kB;  // the side rows
  for (int q = 0; q < kSideFeatures; ++q) std::fill(x + q * kB, x + (q + 1) * kB, 0.0f);
  for (int q = 0; q < 12; ++q) std::fill(fac[q], fac[q] + kB, 0.0f);
  for (size_t i = 0; i < n; ++i) {
    const float* R = t.row_tab + cur.roff * kSideRecord;
    const float* C = t.col_tab + cur.coff * kSideRecord;
    for (int k = 0; k < 3; ++k) {
      x[k * kB + i] = R[k];            // row
      x[(3 + k) * kB + i] = C[k];      // col
      x[(6 + k) * kB + i] = R[3 + k];  // rsqrt(row + 1e-8)
      x[(9 + k) * kB + i] = C[3 + k];  // rsqrt(col + 1e-8)
      fac[k][i] = R[6 + k];             // factors applied to g (row, col)
      fac[3 + k][i] = C[6 + k];
      fac[6 + k][i] = R[9 + k];         // factors applied to m (row, col)
      fac[9 + k][i] = C[9 + k];
    }
    cur.next();
  }
}

/// Runs body(e, n, r, c0) over the blocks of units [begin, end): rows (rows layout) or elements.
template <class Body>
HWY_INLINE void ForEachBlock(const LoptTensor& t, int64_t begin, int64_t end, const Body& body) {
  if (t.rows) {
    for (int64_t r = begin; r < end; ++r)
      for (int64_t c0 = 0; c0 < t.n_cols; c0 += static_cast<int64_t>(kB))
        body(r * t.n_cols + c0, static_cast<size_t>(std::min<int64_t>(kB, t.n_cols - c0)), r, c0);
  } else {
    for (int64_t e = begin; e < end; e += static_cast<int64_t>(kB))
      body(e, static_cast<size_t>(std::min<int64_t>(kB, end - e)), int64_t(0), int64_t(0));
  }
}

template <bool kCelo2>
void Accumulate(const LoptTensor& t, int64_t begin, int64_t end, double* sumsq) {
  constexpr int kE = kCelo2 ? kCelo2ElemFeatures : kElemFeatures;
  const D d;
  const V rms_eps = hn::Set(d, t.rms_eps);
  HWY_ALIGN float x[kMaxAllFeatures * kB];
  HWY_ALIGN float fac[12][kB];
  BlockData bd;
  SquareAccumulator<kE> squares(sumsq);
  detail::Cursor cur(t, t.rows ? 0 : begin);
  ForEachBlock(t, begin, end, [&](int64_t e, size_t n, int64_t r, int64_t c0) {
    bd.load(t, e, n);
    if (!t.rows) GatherSide(t, cur, n, x, fac);
    V sq[kE];  // vector 0 initialises, later vectors accumulate
    for (size_t v = 0; v < kV; ++v) {
      const V g = ClampGrad(hn::LoadU(d, bd.gp + v * kL), t.grad_clip);
      V m[3], rms, ga[3], gb[3], ma[3], mb[3];
      UpdateAccumulators(t, g, bd.mp + 3 * v * kL, bd.rp + v * kL, m, rms);
      BlockFactors(t, r, c0, v, fac, ga, gb, ma, mb);
      const V p = hn::LoadU(d, bd.pp + v * kL);
      if (n == kB) {
        ElemFeatures<kCelo2>(g, p, m, rms, ga, gb, ma, mb, rms_eps,
                             [&](int f, V xf) { sq[f] = v == 0 ? hn::Mul(xf, xf) : hn::MulAdd(xf, xf, sq[f]); });
      } else {  // padding lanes must not count
        const auto valid = hn::FirstN(d, n > v * kL ? n - v * kL : 0);
        ElemFeatures<kCelo2>(g, p, m, rms, ga, gb, ma, mb, rms_eps, [&](int f, V xf) {
          xf = hn::IfThenElseZero(valid, xf);
          sq[f] = v == 0 ? hn::Mul(xf, xf) : hn::MulAdd(xf, xf, sq[f]);
        });
      }
    }
    bd.store_accumulators(t, e);
    squares.add_block(sq);
  });
  squares.flush();
}

template <bool kCelo2>
void Apply(const LoptTensor& t, int64_t begin, int64_t end) {
  constexpr int kE = kCelo2 ? kCelo2ElemFeatures : kElemFeatures;
  const D d;
  const V rms_eps = hn::Set(d, t.rms_eps);
  const int H = t.hidden;
  HWY_ALIGN float x[kMaxAllFeatures * kB];
  HWY_ALIGN float fac[12][kB];
  auto h1 = hwy::AllocateAligned<float>(static_cast<size_t>(H) * kB);
  auto h2 = hwy::AllocateAligned<float>(static_cast<size_t>(H) * kB);
  BlockData bd;
  detail::Cursor cur(t, t.rows ? 0 : begin);
  ForEachBlock(t, begin, end, [&](int64_t e, size_t n, int64_t r, int64_t c0) {
    bd.load(t, e, n);
    if (!t.rows) GatherSide(t, cur, n, x, fac);
    for (size_t v = 0; v < kV; ++v) {
      V m[3], ga[3], gb[3], ma[3], mb[3];
      hn::LoadInterleaved3(d, bd.mp + 3 * v * kL, m[0], m[1], m[2]);
      BlockFactors(t, r, c0, v, fac, ga, gb, ma, mb);
      float* xv = x + v * kL;
      ElemFeatures<kCelo2>(ClampGrad(hn::LoadU(d, bd.gp + v * kL), t.grad_clip), hn::LoadU(d, bd.pp + v * kL), m, hn::LoadU(d, bd.rp + v * kL),
                           ga, gb, ma, mb, rms_eps, [&](int f, V xf) { hn::Store(xf, d, xv + f * kB); });
    }
    if (t.rows) {
      const float* bias_row = t.b_in + r * H;
      const float* bias_col = t.col_bias + c0;
      Dense(t.w_in, H, kE, x, h1.get(), [&](int j, size_t v) {
        return hn::Add(hn::Set(d, bias_row[j]), hn::LoadU(d, bias_col + j * t.stride + static_cast<int64_t>(v * kL)));
      });
    } else {
      Dense(t.w_in, H, kE + kSideFeatures, x, h1.get(), [&](int j, size_t) { return hn::Set(d, t.b_in[j]); });
    }
    MlpTailAndUpdate(t, h1.get(), h2.get(), bd.pp, bd.op);
    bd.store_params(t, e);
  });
}

void AccumulateImpl(const LoptTensor& t, int64_t begin, int64_t end, double* sumsq) {
  if (t.celo2_features) Accumulate<true>(t, begin, end, sumsq);
  else Accumulate<false>(t, begin, end, sumsq);
}

void ApplyImpl(const LoptTensor& t, int64_t begin, int64_t end) {
  if (t.celo2_features) Apply<true>(t, begin, end);
  else Apply<false>(t, begin, end);
}

void SquareSumsImpl(const float* g, int64_t rows, int64_t cols, double* row_sum, double* col_sum, float clip) {
  std::fill(col_sum, col_sum + cols, 0.0);
  int64_t c_vec = 0;
#if HWY_TARGET != HWY_SCALAR
  const D d;
  const hn::Half<D> dh;
  const hn::Repartition<double, D> dd;
  constexpr int64_t kLd = static_cast<int64_t>(hn::MaxLanes(dd));
  c_vec = cols - cols % static_cast<int64_t>(kL);
#endif
  for (int64_t r = 0; r < rows; ++r) {
    const float* gr = g + r * cols;
    double s = 0;
#if HWY_TARGET != HWY_SCALAR
    auto acc = hn::Zero(dd);
    for (int64_t c = 0; c < c_vec; c += static_cast<int64_t>(kL)) {
      const V x = ClampGrad(hn::LoadU(d, gr + c), clip);
      const V sq = hn::Add(hn::Mul(x, x), hn::Set(d, lo_eps::kGradSqF));
      const auto lo = hn::PromoteTo(dd, hn::LowerHalf(dh, sq));
      const auto hi = hn::PromoteTo(dd, hn::UpperHalf(dh, sq));
      acc = hn::Add(acc, hn::Add(lo, hi));
      hn::StoreU(hn::Add(hn::LoadU(dd, col_sum + c), lo), dd, col_sum + c);
      hn::StoreU(hn::Add(hn::LoadU(dd, col_sum + c + kLd), hi), dd, col_sum + c + kLd);
    }
    s = hn::GetLane(hn::SumOfLanes(dd, acc));
#endif
    for (int64_t c = c_vec; c < cols; ++c) {
      const float x = clip == HUGE_VALF || std::isnan(gr[c]) ? gr[c] : std::min(std::max(gr[c], -clip), clip);
      const float v = x * x + lo_eps::kGradSqF;
      s += v;
      col_sum[c] += v;
    }
    row_sum[r] = s;
  }
}

int64_t BlockElementsImpl() { return static_cast<int64_t>(kB); }
int64_t TargetImpl() { return HWY_TARGET; }

}  // namespace HWY_NAMESPACE
}  // namespace lopt::kernels
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
#include <cstdlib>
#include <mutex>

#include "common/errors.h"

namespace lopt::kernels {

HWY_EXPORT(AccumulateImpl);
HWY_EXPORT(ApplyImpl);
HWY_EXPORT(SquareSumsImpl);
HWY_EXPORT(BlockElementsImpl);
HWY_EXPORT(TargetImpl);

void accumulate(const LoptTensor& t, int64_t begin, int64_t end, double* sumsq) {
  HWY_DYNAMIC_DISPATCH(AccumulateImpl)(t, begin, end, sumsq);
}
void apply(const LoptTensor& t, int64_t begin, int64_t end) { HWY_DYNAMIC_DISPATCH(ApplyImpl)(t, begin, end); }
void square_sums(const float* g, int64_t rows, int64_t cols, double* row_sum, double* col_sum, float clip) {
  HWY_DYNAMIC_DISPATCH(SquareSumsImpl)(g, rows, cols, row_sum, col_sum, clip);
}
int64_t block_elements() { return HWY_DYNAMIC_DISPATCH(BlockElementsImpl)(); }

std::string target_name(int64_t target) { return hwy::TargetName(target); }
std::string dispatched_target() { return target_name(HWY_DYNAMIC_DISPATCH(TargetImpl)()); }

std::vector<int64_t> available_targets() {
  // Computed once, before any force_target() (which would restrict what the CPU reports).
  static const std::vector<int64_t> targets = hwy::SupportedAndGeneratedTargets();
  return targets;
}

void force_target(int64_t target) {
  available_targets();
  hwy::SetSupportedTargetsForTest(target);
}

void apply_target_from_env() {
  // Re-read on every call (cheap), applied only when the value changes.
  static std::mutex mu;
  static std::string applied = "\x01";  // no value yet
  const char* env = std::getenv("LOPT_SIMD_TARGET");
  const std::string want = env == nullptr || std::string(env) == "best" ? "" : env;
  std::lock_guard<std::mutex> lock(mu);
  if (want == applied) return;
  if (want.empty()) {
    if (applied != "\x01") force_target(0);
    applied = want;
    return;
  }
  std::string names;
  for (int64_t t : available_targets()) {
    if (target_name(t) == want) {
      force_target(t);
      applied = want;
      return;
    }
    names += ", " + target_name(t);
  }
  throw UsageError("LOPT_SIMD_TARGET=" + want + " is not a SIMD target of this CPU (valid: best" + names + ")");
}

}  // namespace lopt::kernels
#endif  // HWY_ONCE
