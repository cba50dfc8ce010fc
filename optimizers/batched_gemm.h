#pragma once
// Batched products of many small float32 matrices straight through BLAS. LibTorch 1.13's CPU bmm
// (without MKL) selects each member's matrices and dispatches one addmm per member: for the 32x64
// matrices of a meta-training population that dispatch costs more than the arithmetic.
#include <torch/torch.h>

#include <array>

namespace lopt {

/// c[p] = alpha * a[p] b[p] + beta * c[p] for every p, one BLAS sgemm per member. a [P, m, k],
/// b [P, k, n] and c [P, m, n] are float32 CPU tensors; a and b may be transposed views (one unit
/// stride in their last two dimensions), c must be contiguous. Members are split over the intra-op
/// threads. Returns false (and computes nothing) when the inputs do not qualify or BLAS's sgemm is
/// not reachable; the caller then uses torch::baddbmm.
bool batched_sgemm(const torch::Tensor& a, const torch::Tensor& b, torch::Tensor& c, float alpha, float beta);
/// Whether LibTorch's BLAS sgemm is reachable in this process (Debian's LibTorch: yes; a LibTorch
/// with its BLAS linked privately: no, and batched_sgemm always declines).
bool batched_sgemm_available();

/// newton_schulz (optimizers/muon.h) of a stack of matrices g [P, rows, cols] without autograd,
/// through batched_sgemm with the iteration's scalings folded into the products (alpha, beta):
/// equal to newton_schulz up to float32 rounding. Falls back to newton_schulz where batched_sgemm
/// does not apply (other types or devices, autograd).
torch::Tensor newton_schulz_batched(const torch::Tensor& g, int64_t steps, const std::array<double, 3>& coeffs, double eps);

}  // namespace lopt
