#pragma once
/// Portable SIMD kernels of the fused small_fc_lopt / muLO step, written once on Google Highway and
/// compiled for every x86 target (AVX-512, AVX2, SSE4, scalar) and ARM NEON, dispatched at run
/// time. Plain pointers only: the driver (optimizers/small_fc_lopt/fused.cpp) builds the per-tensor
/// Adafactor tables and the folded first layer, and calls these on ranges from its parallel loop.
///
/// Elements run along SIMD lanes; a block is kV vectors (kV * Lanes() elements), and the MLP's
/// register tile is kJ units x kV vectors, sized per target so that no target spills.
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

namespace lopt::kernels {

/// Features computed per element: g, p, m x3, rms, m*rsqrt(rms) x3, rsqrt(rms), Adafactor-
/// preconditioned g x3, m * row * col factor x3 (learned_optimization order 0-12, 25-27).
constexpr int kElemFeatures = 16;
/// Celo2 adds two per-element features after those 16: clamp(g, -0.1, 0.1) and g * rsqrt(rms).
constexpr int kCelo2ElemFeatures = 18;
constexpr int kMaxElemFeatures = kCelo2ElemFeatures;
/// Features that depend only on an element's Adafactor row or column entry: row x3, col x3,
/// rsqrt(row) x3, rsqrt(col) x3 (order 13-24).
constexpr int kSideFeatures = 12;
/// Per-entry record of the generic layout's side tables: feat[3], rsqrt(feat + 1e-8)[3],
/// factor applied to g [3], factor applied to m [3].
constexpr int kSideRecord = 12;
/// Upper bound of the elements per block over all targets; the rows layout pads its tables to it.
constexpr int64_t kMaxBlock = 64;

/// One parameter tensor's step, as the kernels see it.
struct LoptTensor {
  int64_t n = 0;             ///< elements
  float* p = nullptr;        ///< [n] parameters, updated in place by apply()
  const float* g = nullptr;  ///< [n] gradient
  float* mom = nullptr;      ///< [n, 3] momenta, updated by accumulate()
  float* rms = nullptr;      ///< [n] rms, updated by accumulate()
  float mom_decay[3] = {0, 0, 0};
  float rms_decay = 0;
  float rms_eps = 1e-6f;        ///< rsqrt(rms + rms_eps): 1e-6 for small_fc_lopt / muLO, 1e-8 for Celo2
  bool celo2_features = false;  ///< the 18 per-element features (kCelo2ElemFeatures) instead of 16
  float grad_clip = HUGE_VALF;  ///< g is read as clamp(g, -grad_clip, grad_clip) (NaN kept); +inf: as it is

  /// Rows layout: a row-major 2-D tensor [n_rows, n_cols]; a block never crosses a row, so the
  /// Adafactor entry indexed by the row is one value per block and the one indexed by the column is
  /// a contiguous load. Otherwise (generic layout) each lane looks up its entries.
  bool rows = false;
  int64_t n_rows = 0, n_cols = 0;
  int64_t stride = 0;                ///< rows: padded length of the column-indexed tables (>= n_cols + kMaxBlock)
  const float* fac_by_row = nullptr;  ///< rows: [n_rows][3] Adafactor factor of the entry indexed by the row
  const float* fac_by_col = nullptr;  ///< rows: [3][stride] factor of the entry indexed by the column
  bool row_entry_by_col = false;      ///< rows: the Adafactor *row* entry follows the column index

  /// Generic layout: an odometer over `sizes` gives each element's entry offsets.
  int ndim = 0;
  const int64_t* sizes = nullptr;
  const int64_t* row_stride = nullptr;  ///< offset of the Adafactor row entry per index of each dim
  const int64_t* col_stride = nullptr;
  const float* row_tab = nullptr;  ///< [row entries][kSideRecord]
  const float* col_tab = nullptr;  ///< [col entries][kSideRecord]

  /// MLP with the feature normalisation folded into the first layer and the time features into
  /// its bias (filled in by the driver between accumulate() and apply()).
  int hidden = 0, n_hidden = 0;
  const float* w_in = nullptr;       ///< rows: [hidden][E]; generic: [hidden][E + 12] (E = elem_features() element + 12 side features)
  const float* b_in = nullptr;       ///< rows: [n_rows][hidden] (bias + side features of the row-indexed entry); generic: [hidden]
  const float* col_bias = nullptr;   ///< rows: [hidden][stride] side features of the column-indexed entry
  const float* const* w_hidden = nullptr;  ///< n_hidden layers [hidden][hidden]
  const float* const* b_hidden = nullptr;  ///< n_hidden layers [hidden]
  const float* w_out = nullptr;      ///< [2][hidden]
  const float* b_out = nullptr;      ///< [2]
  float exp_mult = 0, step_mult = 0, lr = 0;
  float decay = 0;  ///< lr * weight_decay; 0 = none
  bool decay_on_old = false;  ///< ELO: p - lr step - decay p_old (else the decay applies to the updated p)
  /// When set ([n]), apply() writes the step d * exp(m * exp_mult) * step_mult here and leaves p
  /// unchanged (Celo2: the step is orthogonalised and normalised over the tensor before it is applied).
  float* out = nullptr;

  int elem_features() const { return celo2_features ? kCelo2ElemFeatures : kElemFeatures; }
};

/// Pass one over units [begin, end) (rows in the rows layout, elements otherwise): updates momentum
/// and rms and adds the sums of squares of the t.elem_features() per-element features to sumsq (double).
void accumulate(const LoptTensor& t, int64_t begin, int64_t end, double* sumsq);
/// Pass two over the same units: features, MLP, parameter update (or the step into t.out).
void apply(const LoptTensor& t, int64_t begin, int64_t end);
/// For a row-major [rows, cols] g: row_sum[r] = sum_c (g^2 + 1e-30), col_sum[c] = sum_r (g^2 + 1e-30),
/// accumulated in double (col_sum is overwritten); g clamped to [-clip, clip] first (NaN kept).
void square_sums(const float* g, int64_t rows, int64_t cols, double* row_sum, double* col_sum, float clip = HUGE_VALF);
/// Elements per block of the target dispatched now.
int64_t block_elements();

/// Name of the target the kernels dispatch to now (e.g. "AVX3", "AVX2", "NEON").
std::string dispatched_target();
/// Every target compiled into the kernels and supported by this CPU (Highway target bits).
std::vector<int64_t> available_targets();
std::string target_name(int64_t target);
/// Restricts dispatch to `target` (one of available_targets()); 0 restores the CPU's best.
/// For tests and benchmarks: it changes a process-wide setting.
void force_target(int64_t target);
/// Applies the environment variable LOPT_SIMD_TARGET (a target name such as AVX2, or unset / "best")
/// whenever its value has changed, e.g. to run an AVX-512 machine as an AVX2-only one. Throws lopt::UsageError
/// naming the valid targets for an unknown or unsupported name.
void apply_target_from_env();

}  // namespace lopt::kernels
