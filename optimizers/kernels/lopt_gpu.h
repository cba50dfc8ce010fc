#pragma once
/// The fused small_fc_lopt / muLO step as the GPU runs it, written once for host and device.
///
/// Plain C++ that nvcc compiles into the CUDA kernels (optimizers/kernels/lopt_gpu.cu) and the host
/// compiler into a sequential emulation (lopt_gpu_host.cpp), so that the maths, the indexing and
/// the reductions the GPU runs are tested on every machine, GPU or not; only the thread mapping and
/// the block reductions of the .cu file need a GPU to be exercised.
///
/// One step of many tensors (one run's tensors, or every tensor of every member of a population,
/// each with its own theta) in five phases, each one launch over all tensors:
///   1. elements: momentum and rms; g^2 sums per Adafactor row / column entry (factored tensors) or
///      the v accumulator (rank < 2); second moments of the features that need no Adafactor factor;
///   2. entries: row / column accumulators, their per-group sums (the row mean of the factor) and the
///      second moments of the row / column features;
///   3. elements: second moments of the Adafactor-preconditioned g and m;
///   4. tensors: normalisation scales; the 11 time features folded into the first bias;
///   5. elements: features -> normalisation -> MLP -> update.
/// Reductions run in double (atomics on the GPU: sums are not bit-reproducible there, about 1e-16
/// relative).
#include <cstdint>
#include "optimizers/lopt_eps.h"

#if defined(__CUDACC__)
#define LOPT_HD __host__ __device__ __forceinline__
#define LOPT_UNROLL _Pragma("unroll")
#else
#define LOPT_HD inline
#define LOPT_UNROLL
#endif

namespace lopt::kernels::gpu {

constexpr int kFeatures = 28;      ///< normalised per-element features (learned_optimization order)
constexpr int kTimeFeatures = 11;  ///< tanh(t / s - 1) for 11 timescales
constexpr int kInputs = kFeatures + kTimeFeatures;
constexpr int kMaxDims = 6;

/// One parameter tensor's step. Pointers address the device the step runs on.
struct Tensor {
  int64_t n = 0;              ///< elements
  float* p = nullptr;         ///< [n]
  const float* g = nullptr;   ///< [n]
  float* mom = nullptr;       ///< [n][3]
  float* rms = nullptr;       ///< [n]
  float* row = nullptr;       ///< factored: [n_row][3] Adafactor row accumulator (shape without d0)
  float* col = nullptr;       ///< factored: [n_col][3] column accumulator (shape without d1)
  float* v = nullptr;         ///< rank < 2: [n][3]
  int factored = 0;
  int ndim = 1;
  int d0 = 0, d1 = 0;  ///< factored dims: largest, second largest
  int64_t sizes[kMaxDims] = {0};
  int64_t row_stride[kMaxDims] = {0};    ///< row entry = sum_d idx[d] * row_stride[d] (0 at d0)
  int64_t col_stride[kMaxDims] = {0};    ///< column entry (0 at d1)
  int64_t group_stride[kMaxDims] = {0};  ///< group of the row mean (0 at d0 and d1)
  int64_t n_row = 0, n_col = 0, n_group = 0;

  // scratch, zeroed before phase 1
  double* row_sum = nullptr;    ///< [n_row] sum over d0 of g^2 + 1e-30
  double* col_sum = nullptr;    ///< [n_col] sum over d1
  double* group_sum = nullptr;  ///< [n_group][3] sum over d1 of the updated row accumulator
  double* moments = nullptr;    ///< [kFeatures] sums of squares (row / column features: per entry)
  float* scale = nullptr;       ///< [kFeatures] written by phase 4
  float* bias0 = nullptr;       ///< [hidden] written by phase 4

  /// theta: MLP packed as w_in [hidden][kInputs], b_in [hidden], n_hidden x (w [hidden][hidden],
  /// b [hidden]), w_out [2][hidden], b_out [2].
  const float* mlp = nullptr;
  int hidden = 0, n_hidden = 0;
  float mom_decay[3] = {0, 0, 0};
  float rms_decay = 0;
  float fac_decay[3] = {0, 0, 0};
  float time_features[kTimeFeatures] = {0};
  float lr = 0, decay = 0;  ///< decay = lr * weight_decay (0: none)
  int decay_on_old = 0;     ///< ELO: the decay of the old p (else of the updated p)
  float exp_mult = 0, step_mult = 0;
};

/// Items of each phase of a tensor: 1, 3, 5 run over elements, 2 over row then column entries.
LOPT_HD int64_t entries(const Tensor& t) { return t.factored ? t.n_row + t.n_col : 0; }

struct Index {
  int64_t row = 0, col = 0, group = 0;
};
/// Row entry, column entry and group of element i (row-major odometer over the sizes).
LOPT_HD Index index_of(const Tensor& t, int64_t i) {
  Index x;
  for (int d = t.ndim - 1; d >= 0; --d) {
    const int64_t k = i % t.sizes[d];
    i /= t.sizes[d];
    x.row += k * t.row_stride[d];
    x.col += k * t.col_stride[d];
    x.group += k * t.group_stride[d];
  }
  return x;
}
/// Group of row entry e (its index over every dim but d0, with d1 dropped).
LOPT_HD int64_t row_entry_group(const Tensor& t, int64_t e) {
  int64_t group = 0;
  for (int d = t.ndim - 1; d >= 0; --d) {
    if (d == t.d0) continue;
    const int64_t k = e % t.sizes[d];
    e /= t.sizes[d];
    group += k * t.group_stride[d];
  }
  return group;
}

LOPT_HD float rsqrt_(float x) { return 1.0f / sqrtf(x); }
LOPT_HD float max_(float a, float b) { return a > b ? a : (a == a ? b : a); }  // NaN stays NaN

/// Adafactor factors of element i applied to g (fg) and to the momenta (fm).
LOPT_HD void factors(const Tensor& t, int64_t i, const Index& x, float* fg, float* fm) {
  if (t.factored) {
    const double count = static_cast<double>(t.sizes[t.d1]);
    for (int k = 0; k < 3; ++k) {
      const float mean = static_cast<float>(t.group_sum[3 * x.group + k] / count);
      const float rf = rsqrt_(max_(t.row[3 * x.row + k] / (mean + lo_eps::kFactorF), lo_eps::kFactorF));
      const float cf = rsqrt_(max_(t.col[3 * x.col + k], lo_eps::kFactorF));
      fg[k] = fm[k] = rf * cf;
    }
  } else {
    for (int k = 0; k < 3; ++k) {
      const float v = t.v[3 * i + k];
      fg[k] = rsqrt_(max_(v + lo_eps::kFactorF, lo_eps::kFactorF));
      fm[k] = static_cast<float>(1.0 / sqrt(static_cast<double>(v) + lo_eps::kVectorMom));
    }
  }
}

/// Phase 1 on element i; adds the squares of features 0-9 (and, rank < 2, 13-24) to m[kFeatures].
/// `add` is the reduction into the per-entry sums: (double* dst, double value).
template <class Add>
LOPT_HD void phase1(const Tensor& t, int64_t i, double* m, Add add) {
  const float g = t.g[i];
  float* mom = t.mom + 3 * i;
  float mk[3];
  for (int k = 0; k < 3; ++k) mk[k] = mom[k] = mom[k] * t.mom_decay[k] + (1 - t.mom_decay[k]) * g;
  const float r = t.rms[i] = t.rms[i] * t.rms_decay + (1 - t.rms_decay) * (g * g);
  const float rsq = rsqrt_(r + lo_eps::kRmsF);
  const float p = t.p[i];
  m[0] += static_cast<double>(g) * g;
  m[1] += static_cast<double>(p) * p;
  for (int k = 0; k < 3; ++k) {
    m[2 + k] += static_cast<double>(mk[k]) * mk[k];
    const float q = mk[k] * rsq;
    m[6 + k] += static_cast<double>(q) * q;
  }
  m[5] += static_cast<double>(r) * r;
  m[9] += static_cast<double>(rsq) * rsq;
  const float g2 = g * g + lo_eps::kGradSqF;
  if (t.factored) {
    const Index x = index_of(t, i);
    add(&t.row_sum[x.row], static_cast<double>(g2));
    add(&t.col_sum[x.col], static_cast<double>(g2));
  } else {
    for (int k = 0; k < 3; ++k) {
      const float v = t.v[3 * i + k] = t.v[3 * i + k] * t.fac_decay[k] + g2 * (1 - t.fac_decay[k]);
      const float rv = rsqrt_(v + lo_eps::kFactorFeatureF);
      m[13 + k] += static_cast<double>(v) * v;  // row and column features are both v
      m[16 + k] += static_cast<double>(v) * v;
      m[19 + k] += static_cast<double>(rv) * rv;
      m[22 + k] += static_cast<double>(rv) * rv;
    }
  }
}

/// Phase 2 on entry e of a factored tensor (rows first, then columns); adds the row / column
/// features' squares (per entry: phase 4 weighs them by the elements each entry stands for).
template <class Add>
LOPT_HD void phase2(const Tensor& t, int64_t e, double* m, Add add) {
  const bool is_row = e < t.n_row;
  if (!is_row) e -= t.n_row;
  float* acc = is_row ? t.row + 3 * e : t.col + 3 * e;
  const double mean = (is_row ? t.row_sum[e] : t.col_sum[e]) / static_cast<double>(t.sizes[is_row ? t.d0 : t.d1]);
  const int64_t group = is_row ? row_entry_group(t, e) : 0;
  LOPT_UNROLL for (int k = 0; k < 3; ++k) {
    const float a = acc[k] = acc[k] * t.fac_decay[k] + static_cast<float>(mean) * (1 - t.fac_decay[k]);
    const float ra = rsqrt_(a + lo_eps::kFactorFeatureF);
    const double a2 = static_cast<double>(a) * a, ra2 = static_cast<double>(ra) * ra;
    // constant indices keep m in registers on the GPU
    if (is_row) {
      m[13 + k] += a2;
      m[19 + k] += ra2;
      add(&t.group_sum[3 * group + k], static_cast<double>(a));
    } else {
      m[16 + k] += a2;
      m[22 + k] += ra2;
    }
  }
}

/// Phase 3 on element i: squares of features 10-12 (g x factor) and 25-27 (m x factor).
LOPT_HD void phase3(const Tensor& t, int64_t i, double* m) {
  const Index x = t.factored ? index_of(t, i) : Index{};
  float fg[3], fm[3];
  factors(t, i, x, fg, fm);
  const float g = t.g[i];
  for (int k = 0; k < 3; ++k) {
    const float a = g * fg[k], b = t.mom[3 * i + k] * fm[k];
    m[10 + k] += static_cast<double>(a) * a;
    m[25 + k] += static_cast<double>(b) * b;
  }
}

/// Phase 4, feature f of the tensor (f < kFeatures) or bias unit j (j = item - kFeatures < hidden).
LOPT_HD void phase4(const Tensor& t, int item) {
  if (item < kFeatures) {
    double s = t.moments[item];
    const double n = static_cast<double>(t.n);
    if (t.factored && item >= 13 && item < 25) {
      const bool row_feature = (item >= 13 && item < 16) || (item >= 19 && item < 22);
      s *= n / static_cast<double>(row_feature ? t.n_row : t.n_col);
    }
    t.scale[item] = static_cast<float>(1.0 / sqrt(s / n + lo_eps::kNormalizer));
  } else {
    const int j = item - kFeatures;
    const float* w = t.mlp + j * kInputs;
    double b = t.mlp[t.hidden * kInputs + j];
    for (int s = 0; s < kTimeFeatures; ++s) b += static_cast<double>(w[kFeatures + s]) * t.time_features[s];
    t.bias0[j] = static_cast<float>(b);
  }
}
LOPT_HD int phase4_items(const Tensor& t) { return kFeatures + t.hidden; }

/// Phase 5 on element i: the update. `H` = t.hidden; `w_in` is the first layer's weights of the 28
/// features, row j at w_in + j * InStride (the packed MLP: InStride = kInputs; the GPU's shared-memory
/// copy: kFeatures, so rows stay 16-byte aligned for vector loads); `rest` the packed MLP after the
/// first layer (hidden layers, output layer); `scale` / `bias0` the tensor's phase-4 results.
template <int H, int InStride>
LOPT_HD void phase5(const Tensor& t, int64_t i, const float* w_in, const float* rest, const float* scale,
                    const float* bias0) {
  const Index ix = t.factored ? index_of(t, i) : Index{};
  float fg[3], fm[3];
  factors(t, i, ix, fg, fm);
  const float g = t.g[i], p = t.p[i], r = t.rms[i];
  const float rsq = rsqrt_(r + lo_eps::kRmsF);
  const float* mom = t.mom + 3 * i;
  const float* rowf = t.factored ? t.row + 3 * ix.row : t.v + 3 * i;
  const float* colf = t.factored ? t.col + 3 * ix.col : t.v + 3 * i;
  float x[kFeatures];
  x[0] = g;
  x[1] = p;
  LOPT_UNROLL for (int k = 0; k < 3; ++k) {
    x[2 + k] = mom[k];
    x[6 + k] = mom[k] * rsq;
    x[10 + k] = g * fg[k];
    x[13 + k] = rowf[k];
    x[16 + k] = colf[k];
    x[19 + k] = rsqrt_(rowf[k] + lo_eps::kFactorFeatureF);
    x[22 + k] = rsqrt_(colf[k] + lo_eps::kFactorFeatureF);
    x[25 + k] = mom[k] * fm[k];
  }
  x[5] = r;
  x[9] = rsq;
  LOPT_UNROLL for (int f = 0; f < kFeatures; ++f) x[f] *= scale[f];
  float h[H], h2[H];
  LOPT_UNROLL for (int j = 0; j < H; ++j) {
    float a = bias0[j];
    const float* wj = w_in + j * InStride;
    LOPT_UNROLL for (int f = 0; f < kFeatures; ++f) a = fmaf(wj[f], x[f], a);
    h[j] = a > 0 ? a : 0;
  }
  const float* layer = rest;
  for (int l = 0; l < t.n_hidden; ++l) {
    const float* b = layer + H * H;
    LOPT_UNROLL for (int j = 0; j < H; ++j) {
      float a = b[j];
      LOPT_UNROLL for (int q = 0; q < H; ++q) a = fmaf(layer[j * H + q], h[q], a);
      h2[j] = a > 0 ? a : 0;
    }
    LOPT_UNROLL for (int j = 0; j < H; ++j) h[j] = h2[j];
    layer = b + H;
  }
  float o[2];
  LOPT_UNROLL for (int c = 0; c < 2; ++c) {
    float a = layer[2 * H + c];
    LOPT_UNROLL for (int q = 0; q < H; ++q) a = fmaf(layer[c * H + q], h[q], a);
    o[c] = a;
  }
  const float step = o[0] * expf(o[1] * t.exp_mult) * t.step_mult;
  float pn = p - t.lr * step;
  if (t.decay > 0) pn = pn - t.decay * (t.decay_on_old ? p : pn);
  t.p[i] = pn;
}

/// Floats of the packed MLP.
LOPT_HD int64_t mlp_floats(int hidden, int n_hidden) {
  return static_cast<int64_t>(hidden) * kInputs + hidden + static_cast<int64_t>(n_hidden) * (hidden * hidden + hidden) +
         2 * hidden + 2;
}

}  // namespace lopt::kernels::gpu

namespace lopt::kernels::gpu {

constexpr int kThreads = 256;                ///< threads per block of the element / entry phases
constexpr int64_t kItemsPerBlock = 2048;     ///< elements (or entries) per block; a block never spans two tensors

/// Launches the five phases on `stream` (a cudaStream_t; nullptr = the default stream). `host` and
/// `device` are the same `count` tensors (device: in GPU memory); `element_blocks` / `entry_blocks`
/// are device arrays [count + 1] of each tensor's first block (prefix sums of ceil(items /
/// kItemsPerBlock)). Every tensor has the same hidden size (16, 32 or 64) and hidden layers.
/// Defined in lopt_gpu.cu (builds with LOPT_CUDA); throws std::runtime_error on a CUDA error.
void launch(const Tensor* host, const Tensor* device, int count, const int64_t* element_blocks,
            const int64_t* entry_blocks, int64_t total_element_blocks, int64_t total_entry_blocks, void* stream);
/// Whether this build compiled the CUDA kernels.
bool compiled();

}  // namespace lopt::kernels::gpu
