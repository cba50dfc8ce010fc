#include "optimizers/batched_gemm.h"

#include <dlfcn.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <climits>

#include "common/parallel.h"
#include "optimizers/muon.h"

namespace lopt {

namespace {
// The Fortran BLAS entry point LibTorch itself calls (LP64: 32-bit integers), with the two hidden
// character-length arguments gfortran-built BLAS libraries take.
using Sgemm = void (*)(const char* transa, const char* transb, const int* m, const int* n, const int* k,
                       const float* alpha, const float* a, const int* lda, const float* b, const int* ldb,
                       const float* beta, float* c, const int* ldc, size_t, size_t);

Sgemm sgemm() {
  // LibTorch links the BLAS: its sgemm_ is in the process's global scope (no link-time dependency
  // of ours, so a LibTorch built without BLAS simply takes the fallback).
  static const Sgemm f = reinterpret_cast<Sgemm>(dlsym(RTLD_DEFAULT, "sgemm_"));
  return f;
}

/// One operand's layout: 'N' with leading dimension ld for a row-major matrix, 'T' for a
/// transposed view; false when neither of its last two strides is 1.
bool layout(const torch::Tensor& t, char& op, int& ld) {
  const int64_t s0 = t.stride(1), s1 = t.stride(2);
  if (s1 == 1 || t.size(2) == 1) {
    op = 'N';
    ld = static_cast<int>(std::max<int64_t>({s0, t.size(2), 1}));
    return s0 <= INT_MAX;
  }
  if (s0 == 1 || t.size(1) == 1) {
    op = 'T';
    ld = static_cast<int>(std::max<int64_t>({s1, t.size(1), 1}));
    return s1 <= INT_MAX;
  }
  return false;
}
}  // namespace

bool batched_sgemm_available() { return sgemm() != nullptr; }

bool batched_sgemm(const torch::Tensor& a, const torch::Tensor& b, torch::Tensor& c, float alpha, float beta) {
  const Sgemm f = sgemm();
  if (f == nullptr) return false;
  for (const torch::Tensor* t : {&a, &b, static_cast<const torch::Tensor*>(&c)})
    if (t->dim() != 3 || !t->device().is_cpu() || t->scalar_type() != torch::kFloat32 || t->requires_grad()) return false;
  const int64_t P = a.size(0), M = a.size(1), K = a.size(2), N = b.size(2);
  if (b.size(0) != P || b.size(1) != K || c.size(0) != P || c.size(1) != M || c.size(2) != N || !c.is_contiguous())
    return false;
  if (std::max({M, N, K}) > INT_MAX / 2 || P == 0 || M == 0 || N == 0) return P == 0 || M == 0 || N == 0;
  // Row-major C = A B is column-major C^T = B^T A^T: BLAS gets (b, a) with the dimensions swapped.
  char op_a, op_b;
  int ld_a, ld_b;
  if (!layout(a, op_a, ld_a) || !layout(b, op_b, ld_b)) return false;
  const int m = static_cast<int>(N), n = static_cast<int>(M), k = static_cast<int>(K), ldc = static_cast<int>(std::max<int64_t>(N, 1));
  const float* pa = a.data_ptr<float>();
  const float* pb = b.data_ptr<float>();
  float* pc = c.data_ptr<float>();
  const int64_t sa = a.stride(0), sb = b.stride(0), sc = M * N;
  if (K == 0) {  // BLAS leaves C untouched only for beta == 1
    c.mul_(beta);
    return true;
  }
  const int64_t chunks = std::min<int64_t>(P, at::get_num_threads());
  parallel_items(chunks, [&](int64_t ch) {
    for (int64_t p = ch * P / chunks; p < (ch + 1) * P / chunks; ++p)
      f(&op_b, &op_a, &m, &n, &k, &alpha, pb + p * sb, &ld_b, pa + p * sa, &ld_a, &beta, pc + p * sc, &ldc, 1, 1);
  });
  return true;
}

torch::Tensor newton_schulz_batched(const torch::Tensor& g, int64_t steps, const std::array<double, 3>& coeffs, double eps) {
  const bool grad = torch::GradMode::is_enabled() && g.requires_grad();
  if (g.dim() != 3 || grad || !g.device().is_cpu() || g.scalar_type() != torch::kFloat32 || sgemm() == nullptr)
    return newton_schulz(g, steps, coeffs, eps);
  const bool tall = g.size(1) > g.size(2);
  auto x = tall ? g.transpose(1, 2) : g;
  x = (x / (x.norm(2, {1, 2}, /*keepdim=*/true) + eps)).contiguous();
  const int64_t P = x.size(0), m = x.size(1);
  const float c0 = static_cast<float>(coeffs[0]), c1 = static_cast<float>(coeffs[1]), c2 = static_cast<float>(coeffs[2]);
  auto a = torch::empty({P, m, m}, x.options());
  for (int64_t it = 0; it < steps; ++it) {
    // a = x x^T;  bm = c1 a + c2 a a;  x = c0 x + bm x.
    TORCH_CHECK(batched_sgemm(x, x.transpose(1, 2), a, 1.0f, 0.0f), "newton_schulz_batched: sgemm refused x x^T");
    auto bm = a.clone();
    TORCH_CHECK(batched_sgemm(a, a, bm, c2, c1), "newton_schulz_batched: sgemm refused a a");
    auto next = x.clone();
    TORCH_CHECK(batched_sgemm(bm, x, next, 1.0f, c0), "newton_schulz_batched: sgemm refused bm x");
    x = next;
  }
  return tall ? x.transpose(1, 2) : x;
}

}  // namespace lopt
