#pragma once
/// The epsilons of the per-parameter learned optimizers' features (learned_optimization
/// `learned_optimizers/common.py` and `adafac_mlp_lopt.py`, as PyLO's AdafacLO_naive has them),
/// defined once for every implementation: the tensor-op features (lo_features.cpp) and step
/// (small_fc_lopt/small_fc_lopt.cpp), the fused driver (small_fc_lopt/fused.cpp), the SIMD kernels
/// (kernels/lopt_cpu.cpp) and the CUDA kernels' shared host/device code (kernels/lopt_gpu.h). Plain
/// constexpr scalars without LibTorch, so that nvcc and the Highway per-target passes can include it. The float versions are the literals the
/// kernels always used (checked below), so switching to these names changed no result bit.
namespace lopt::lo_eps {

/// Added to g^2 in the Adafactor accumulators (row / column / full second moments).
constexpr double kGradSq = 1e-30;
/// rsqrt(rms + kRms): the rms feature and mom x rsqrt(rms) (PyLO: torch.rsqrt(rms + 1e-6)).
constexpr double kRms = 1e-6;
/// safe_rsqrt's floor max(x, 1e-9), and the offsets of the row-mean ratio and of a 1-D accumulator.
constexpr double kFactor = 1e-9;
/// rsqrt(row_feat + 1e-8), rsqrt(col_feat + 1e-8): the accumulator features.
constexpr double kFactorFeature = 1e-8;
/// (v + 1e-6)^-0.5: fac_mom_mult of a 1-D tensor.
constexpr double kVectorMom = 1e-6;
/// The per-tensor second-moment normaliser: x / sqrt(mean(x^2) + 1e-5).
constexpr double kNormalizer = 1e-5;
/// Global-norm clipping: max_norm / (norm + 1e-6), as torch.nn.utils.clip_grad_norm_.
constexpr double kClipNorm = 1e-6;

constexpr float kGradSqF = static_cast<float>(kGradSq);
constexpr float kRmsF = static_cast<float>(kRms);
constexpr float kFactorF = static_cast<float>(kFactor);
constexpr float kFactorFeatureF = static_cast<float>(kFactorFeature);

static_assert(kGradSqF == 1e-30f && kRmsF == 1e-6f && kFactorF == 1e-9f && kFactorFeatureF == 1e-8f,
              "the float epsilons must equal the literals the kernels were validated with");

}  // namespace lopt::lo_eps
