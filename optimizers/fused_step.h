#pragma once
/// The fused no-grad CPU step shared by the per-parameter learned optimizers whose features are
/// momenta, rms and Adafactor factored moments: small_fc_lopt / μLO / ELO (16 per-element features +
/// 12 row/column features + time features) and Celo2 / Celo2-base / μCelo2 (18 + 12). Driver:
/// small_fc_lopt/fused.cpp; SIMD kernels: kernels/lopt_cpu.{h,cpp}.
#include <torch/torch.h>

#include <array>
#include <cmath>
#include <cstdint>
#include <vector>

namespace lopt {

class SmallFcLoptOptimizer;

namespace detail {

/// What the fused step needs of a bound learned optimizer (built once per bound optimizer).
struct FusedNet {
  float mom_decay[3] = {0, 0, 0}, rms_decay = 0, fac_decay[3] = {0, 0, 0};
  float rms_eps = 1e-6f;          ///< rsqrt(rms + rms_eps)
  double normalizer_eps = 1e-5;   ///< each input x / sqrt(mean over the tensor of x^2 + eps)
  bool celo2_features = false;    ///< 18 per-element features (kernels::kCelo2ElemFeatures), else 16
  int hidden = 0;
  /// First layer [hidden][E + 12] in the kernel's feature order (E per-element features, then row x3,
  /// col x3, rsqrt(row + 1e-8) x3, rsqrt(col + 1e-8) x3), before normalisation.
  std::vector<float> w_in;
  /// First-layer weights [hidden][n_extra] of inputs that are the same for every element of a tensor
  /// (μLO's 11 time features); each job gives their values, folded into the bias.
  std::vector<float> w_extra;
  int n_extra = 0;
  std::vector<float> b_in;                              ///< [hidden]
  std::vector<std::vector<float>> w_hidden, b_hidden;  ///< hidden -> hidden layers [hidden * hidden], [hidden]
  std::vector<float> w_out, b_out;                      ///< [2 * hidden] (direction, magnitude), [2]
  float exp_mult = 0, step_mult = 1;
  double weight_decay = 0;
  bool decay_on_old = false;  ///< ELO: p - lr (step + wd p_old); else the decay applies to the updated p
};

/// One tensor's fused no-grad step: p and the slots (mom, rms, fac_vec_row, fac_vec_col, fac_vec_v)
/// are updated in place; with `out` set, p is left alone and the step (before lr) is written there.
struct FusedJob {
  const SmallFcLoptOptimizer* opt;  ///< small_fc_lopt's GPU path reads its config (nullptr otherwise)
  const FusedNet* net;
  torch::Tensor* p;
  torch::Tensor g;
  std::array<torch::Tensor*, 5> slots;
  double lr;     ///< lr_at(step, ParamInfo)
  int64_t step;  ///< state.step before the update (the time features' t)
  std::array<double, 16> extra{};  ///< values of the net's n_extra extra inputs
  torch::Tensor* out = nullptr;    ///< [numel] float32 contiguous: the step goes here (Celo2)
  double* out_sumsq = nullptr;     ///< with out: receives the step's sum of squares (double, fixed order)
  /// g is read as clamp(g, -grad_clip, grad_clip) (Celo2's element-wise clamp without a copy of g);
  /// matrices only (the other ranks' Adafactor moments are tensor ops on g as given).
  float grad_clip = HUGE_VALF;
};

/// Steps every job at once (small_fc_lopt/fused.cpp): one parallel loop per phase over all tensors
/// of all jobs, so that a population of small tasks is one kernel call, not one per tensor. Jobs with
/// `out` must be 2-D matrices (Celo2's fused path); others any rank.
void fused_lopt_steps(const std::vector<FusedJob>& jobs);
/// Sum of x[i]^2 in double (a fixed order: deterministic).
double sum_of_squares(const float* x, int64_t n);
/// p <- p - lr (step_scale * step + weight_decay * p) elementwise, in float32, in parallel chunks.
void apply_step_(float* p, const float* step, int64_t n, float lr, float step_scale, float weight_decay);
/// FLOPs per element the fused kernel's MLP performs on a tensor of this shape (the rows layout
/// takes E inputs per element plus a bias add, the generic layout E + 12; E = 16, or 18 for Celo2),
/// excluding padding lanes. hidden_layers counts the hidden -> hidden layers.
int64_t fused_mlp_flops_per_element(const std::vector<int64_t>& shape, int64_t hidden, int64_t hidden_layers,
                                    bool celo2 = false);

}  // namespace detail
}  // namespace lopt
