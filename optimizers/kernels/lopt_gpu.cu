// CUDA kernels of the fused small_fc_lopt / muLO step: the phases of lopt_gpu.h, each one launch over
// every tensor of the step (blocks never span two tensors; a block finds its tensor by binary search
// over the per-tensor block offsets). Exact fp32 arithmetic, reductions in double.
#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

#include "optimizers/kernels/lopt_gpu.h"

namespace lopt::kernels::gpu {
namespace {

struct AtomicAdd {
  __device__ void operator()(double* dst, double v) const { atomicAdd(dst, v); }
};

/// The tensor owning block b: the largest t with offsets[t] <= b (tensors without blocks share
/// their successor's offset and are skipped).
__device__ int tensor_of(const int64_t* offsets, int count, int64_t b) {
  int lo = 0, hi = count - 1;
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (offsets[mid] <= b) lo = mid;
    else hi = mid - 1;
  }
  return lo;
}

/// Adds every thread's m[kFeatures] into dst[kFeatures]: warp shuffles, shared-memory atomics, then
/// one global atomic per feature and block.
__device__ void block_add(double* m, double* dst) {
  __shared__ double acc[kFeatures];
  for (int f = threadIdx.x; f < kFeatures; f += blockDim.x) acc[f] = 0;
  __syncthreads();
  for (int f = 0; f < kFeatures; ++f) {
    double v = m[f];
    for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
    if ((threadIdx.x & 31) == 0 && v != 0) atomicAdd(&acc[f], v);
  }
  __syncthreads();
  for (int f = threadIdx.x; f < kFeatures; f += blockDim.x)
    if (acc[f] != 0) atomicAdd(&dst[f], acc[f]);
}

template <int Phase>
__global__ void __launch_bounds__(kThreads) items_kernel(const Tensor* ts, int count, const int64_t* offsets) {
  const int ti = tensor_of(offsets, count, blockIdx.x);
  const Tensor& t = ts[ti];
  const int64_t begin = (static_cast<int64_t>(blockIdx.x) - offsets[ti]) * kItemsPerBlock;
  const int64_t n = Phase == 2 ? entries(t) : t.n;
  const int64_t end = begin + kItemsPerBlock < n ? begin + kItemsPerBlock : n;
  double m[kFeatures];
#pragma unroll
  for (int f = 0; f < kFeatures; ++f) m[f] = 0;
  for (int64_t i = begin + threadIdx.x; i < end; i += blockDim.x) {
    if (Phase == 1) phase1(t, i, m, AtomicAdd());
    else if (Phase == 2) phase2(t, i, m, AtomicAdd());
    else phase3(t, i, m);
  }
  block_add(m, t.moments);
}

__global__ void fold_kernel(const Tensor* ts) {
  const Tensor& t = ts[blockIdx.x];
  for (int item = threadIdx.x; item < phase4_items(t); item += blockDim.x) phase4(t, item);
}

template <int H>
__global__ void __launch_bounds__(kThreads) apply_kernel(const Tensor* ts, int count, const int64_t* offsets) {
  // Shared memory: the first layer's feature weights [H][kFeatures] (rows 16-byte aligned), the rest
  // of the MLP as packed (hidden layers, output), scale [kFeatures], bias0 [H].
  extern __shared__ __align__(16) float smem[];
  const int ti = tensor_of(offsets, count, blockIdx.x);
  const Tensor& t = ts[ti];
  const int64_t first = static_cast<int64_t>(H) * kInputs + H;  // packed w_in and b_in
  const int64_t n_rest = mlp_floats(H, t.n_hidden) - first;
  float* w_in = smem;
  float* rest = w_in + H * kFeatures;
  float* scale = rest + n_rest;
  float* bias0 = scale + kFeatures;
  for (int q = threadIdx.x; q < H * kFeatures; q += blockDim.x) w_in[q] = t.mlp[(q / kFeatures) * kInputs + q % kFeatures];
  for (int64_t q = threadIdx.x; q < n_rest; q += blockDim.x) rest[q] = t.mlp[first + q];
  for (int q = threadIdx.x; q < kFeatures; q += blockDim.x) scale[q] = t.scale[q];
  for (int q = threadIdx.x; q < H; q += blockDim.x) bias0[q] = t.bias0[q];
  __syncthreads();
  const int64_t begin = (static_cast<int64_t>(blockIdx.x) - offsets[ti]) * kItemsPerBlock;
  const int64_t end = begin + kItemsPerBlock < t.n ? begin + kItemsPerBlock : t.n;
  for (int64_t i = begin + threadIdx.x; i < end; i += blockDim.x) phase5<H, kFeatures>(t, i, w_in, rest, scale, bias0);
}

void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) throw std::runtime_error(std::string("CUDA error in the fused learned-optimizer step (") + what + "): " + cudaGetErrorString(e));
}

template <int H>
void launch_apply(const Tensor* device, int count, const int64_t* element_blocks, int64_t blocks, int n_hidden,
                  cudaStream_t s) {
  const size_t smem = static_cast<size_t>(H * kFeatures + mlp_floats(H, n_hidden) - (H * kInputs + H) + kFeatures + H) * sizeof(float);
  if (smem > 48 * 1024) check(cudaFuncSetAttribute(apply_kernel<H>, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)), "shared memory");
  apply_kernel<H><<<static_cast<unsigned>(blocks), kThreads, smem, s>>>(device, count, element_blocks);
}

}  // namespace

bool compiled() { return true; }

void launch(const Tensor* host, const Tensor* device, int count, const int64_t* element_blocks,
            const int64_t* entry_blocks, int64_t total_element_blocks, int64_t total_entry_blocks, void* stream) {
  if (count == 0) return;
  auto s = static_cast<cudaStream_t>(stream);
  const int hidden = host[0].hidden, n_hidden = host[0].n_hidden;
  for (int i = 1; i < count; ++i)
    if (host[i].hidden != hidden || host[i].n_hidden != n_hidden)
      throw std::runtime_error("fused learned-optimizer step on the GPU: every tensor of a launch needs the same MLP geometry");
  if (total_element_blocks > 0) items_kernel<1><<<static_cast<unsigned>(total_element_blocks), kThreads, 0, s>>>(device, count, element_blocks);
  if (total_entry_blocks > 0) items_kernel<2><<<static_cast<unsigned>(total_entry_blocks), kThreads, 0, s>>>(device, count, entry_blocks);
  if (total_element_blocks > 0) items_kernel<3><<<static_cast<unsigned>(total_element_blocks), kThreads, 0, s>>>(device, count, element_blocks);
  fold_kernel<<<static_cast<unsigned>(count), 128, 0, s>>>(device);
  check(cudaGetLastError(), "accumulate");
  if (total_element_blocks == 0) return;
  switch (hidden) {
    case 16: launch_apply<16>(device, count, element_blocks, total_element_blocks, n_hidden, s); break;
    case 32: launch_apply<32>(device, count, element_blocks, total_element_blocks, n_hidden, s); break;
    case 64: launch_apply<64>(device, count, element_blocks, total_element_blocks, n_hidden, s); break;
    default: throw std::runtime_error("fused learned-optimizer step on the GPU: hidden_size must be 16, 32 or 64 (use impl \"tensor\")");
  }
  check(cudaGetLastError(), "apply");
}

}  // namespace lopt::kernels::gpu
