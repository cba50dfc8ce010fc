// Driver of the GPU algorithm of the fused small_fc_lopt / muLO step (kernels/lopt_gpu.h): builds one
// descriptor per tensor (pointers into the parameters, gradients, state and one scratch buffer on
// the tensors' device), then runs the five phases — as CUDA kernels for CUDA tensors, or as their
// sequential host emulation for CPU tensors (tests).
#include <torch/torch.h>

#include <cmath>
#include <cstring>
#include <vector>

#include "common/errors.h"
#include "optimizers/lo_features.h"
#include "optimizers/kernels/lopt_gpu.h"
#include "optimizers/small_fc_lopt/small_fc_lopt.h"

#if defined(LOPT_TORCH_CUDA)
#include <c10/cuda/CUDAStream.h>
#endif

namespace lopt {

#if !defined(LOPT_WITH_CUDA)
namespace kernels::gpu {
bool compiled() { return false; }
void launch(const Tensor*, const Tensor*, int, const int64_t*, const int64_t*, int64_t, int64_t, void*) {
  throw UsageError("this lopt was built without the CUDA kernels: reconfigure with -DLOPT_CUDA=ON against a "
                   "CUDA-enabled LibTorch (see DEVELOPERS.md, GPU builds)");
}
}  // namespace kernels::gpu
#endif

namespace detail {
namespace {

namespace gpu = kernels::gpu;

/// The five phases in order on the host, one item at a time (the CUDA kernels' arithmetic and
/// reduction order per item; only the summation order of the reductions differs).
void run_on_host(std::vector<gpu::Tensor>& ts) {
  auto add = [](double* dst, double v) { *dst += v; };
  for (auto& t : ts)
    for (int64_t i = 0; i < t.n; ++i) gpu::phase1(t, i, t.moments, add);
  for (auto& t : ts)
    for (int64_t e = 0; e < gpu::entries(t); ++e) gpu::phase2(t, e, t.moments, add);
  for (auto& t : ts)
    for (int64_t i = 0; i < t.n; ++i) gpu::phase3(t, i, t.moments);
  for (auto& t : ts)
    for (int item = 0; item < gpu::phase4_items(t); ++item) gpu::phase4(t, item);
  for (auto& t : ts) {
    for (int64_t i = 0; i < t.n; ++i) {
      const float* rest = t.mlp + t.hidden * gpu::kInputs + t.hidden;  // after w_in and b_in
      switch (t.hidden) {
        case 16: gpu::phase5<16, gpu::kInputs>(t, i, t.mlp, rest, t.scale, t.bias0); break;
        case 32: gpu::phase5<32, gpu::kInputs>(t, i, t.mlp, rest, t.scale, t.bias0); break;
        case 64: gpu::phase5<64, gpu::kInputs>(t, i, t.mlp, rest, t.scale, t.bias0); break;
        default: TORCH_CHECK(false, "GPU learned-optimizer step: hidden_size must be 16, 32 or 64");
      }
    }
  }
}

/// Row-major strides over the dims of `sizes` not in `skip` (0 for the skipped ones).
void strides_without(const std::vector<int64_t>& sizes, int skip_a, int skip_b, int64_t* out) {
  int64_t s = 1;
  for (int d = static_cast<int>(sizes.size()) - 1; d >= 0; --d) {
    if (d == skip_a || d == skip_b) {
      out[d] = 0;
      continue;
    }
    out[d] = s;
    s *= sizes[static_cast<size_t>(d)];
  }
}

}  // namespace

void gpu_lopt_steps(const std::vector<FusedJob>& jobs) {
  std::vector<const FusedJob*> live;
  for (const auto& j : jobs)
    if (j.p->numel() > 0) live.push_back(&j);
  if (live.empty()) return;
  const torch::Device device = live.front()->p->device();
  const bool cuda = device.is_cuda();
  std::vector<gpu::Tensor> ts(live.size());
  std::vector<torch::Tensor> keep;  // contiguous gradients and parameter copies
  // Scratch sizes: doubles (row sums, column sums, group sums, moments), floats (scale, bias0).
  int64_t n_double = 0, n_float = 0;
  std::vector<int64_t> double_at(live.size()), float_at(live.size());
  for (size_t k = 0; k < live.size(); ++k) {
    const FusedJob& j = *live[k];
    gpu::Tensor& t = ts[k];
    torch::Tensor& p = *j.p;
    TORCH_CHECK(p.scalar_type() == torch::kFloat32 && p.device() == device,
                "fused small_fc_lopt step: every tensor must be float32 on ", device.str(), " (use impl \"tensor\" otherwise)");
    TORCH_CHECK(p.is_contiguous(), "fused small_fc_lopt step on ", device.str(), ": parameters must be contiguous");
    const auto shape = p.dim() == 0 ? std::vector<int64_t>{1} : p.sizes().vec();
    TORCH_CHECK(shape.size() <= static_cast<size_t>(gpu::kMaxDims), "fused small_fc_lopt step: at most ",
                gpu::kMaxDims, " dims (use impl \"tensor\")");
    auto g = j.g.to(torch::kFloat32).contiguous();
    keep.push_back(g);
    for (auto* s : j.slots) TORCH_CHECK(s->is_contiguous(), "fused small_fc_lopt step: state must be contiguous");
    const auto& K = j.opt->fused_constants();
    const auto& cfg = j.opt->config();
    t.n = p.numel();
    t.p = p.data_ptr<float>();
    t.g = g.data_ptr<float>();
    t.mom = j.slots[0]->data_ptr<float>();
    t.rms = j.slots[1]->data_ptr<float>();
    t.ndim = static_cast<int>(shape.size());
    for (int d = 0; d < t.ndim; ++d) t.sizes[d] = shape[static_cast<size_t>(d)];
    if (shape.size() >= 2) {
      auto [d1, d0] = lo::factored_dims(shape);
      t.factored = 1;
      t.d0 = static_cast<int>(d0);
      t.d1 = static_cast<int>(d1);
      t.row = j.slots[2]->data_ptr<float>();
      t.col = j.slots[3]->data_ptr<float>();
      strides_without(shape, t.d0, -1, t.row_stride);
      strides_without(shape, t.d1, -1, t.col_stride);
      strides_without(shape, t.d0, t.d1, t.group_stride);
      t.n_row = t.n / shape[static_cast<size_t>(d0)];
      t.n_col = t.n / shape[static_cast<size_t>(d1)];
      t.n_group = t.n_row / shape[static_cast<size_t>(d1)];
    } else {
      t.v = j.slots[4]->data_ptr<float>();
    }
    t.hidden = static_cast<int>(cfg.hidden_size);
    t.n_hidden = static_cast<int>(K.weights.size()) - 2;
    for (int q = 0; q < 3; ++q) {
      t.mom_decay[q] = K.mom_decay[q];
      t.fac_decay[q] = K.fac_decay[q];
    }
    t.rms_decay = K.rms_decay;
    const auto tf = lo::time_features(static_cast<double>(cfg.time_feature_step(j.step)));
    static_assert(gpu::kTimeFeatures == lo::kTimeFeatures, "the GPU step takes lo::time_features");
    for (int s = 0; s < gpu::kTimeFeatures; ++s) t.time_features[s] = static_cast<float>(tf[static_cast<size_t>(s)]);
    t.lr = static_cast<float>(j.lr);
    t.decay = cfg.weight_decay > 0 ? static_cast<float>(j.lr * cfg.weight_decay) : 0.0f;
    t.decay_on_old = cfg.elo ? 1 : 0;
    t.exp_mult = static_cast<float>(cfg.exp_mult);
    t.step_mult = static_cast<float>(cfg.step_mult);
    auto mlp = j.opt->packed_mlp(device);
    TORCH_CHECK(mlp.numel() == gpu::mlp_floats(t.hidden, t.n_hidden), "fused small_fc_lopt step on ", device.str(),
                ": the MLP takes ", mlp.numel() / std::max(1, t.hidden), " inputs per unit; the GPU step has no worker inputs");
    keep.push_back(mlp);
    t.mlp = mlp.data_ptr<float>();
    double_at[k] = n_double;
    n_double += t.n_row + t.n_col + 3 * t.n_group + gpu::kFeatures;
    float_at[k] = n_float;
    n_float += gpu::kFeatures + t.hidden;
  }
  auto dscratch = torch::zeros({n_double}, torch::TensorOptions().dtype(torch::kFloat64).device(device));
  auto fscratch = torch::empty({n_float}, torch::TensorOptions().dtype(torch::kFloat32).device(device));
  for (size_t k = 0; k < ts.size(); ++k) {
    gpu::Tensor& t = ts[k];
    double* d = dscratch.data_ptr<double>() + double_at[k];
    t.row_sum = d;
    t.col_sum = d + t.n_row;
    t.group_sum = d + t.n_row + t.n_col;
    t.moments = d + t.n_row + t.n_col + 3 * t.n_group;
    t.scale = fscratch.data_ptr<float>() + float_at[k];
    t.bias0 = t.scale + gpu::kFeatures;
  }
  if (!cuda) {
    TORCH_CHECK(device.is_cpu(), "fused small_fc_lopt step: no kernel for device ", device.str());
    run_on_host(ts);
    return;
  }
  // Descriptors and the per-tensor block offsets go to the device in one copy.
  const int count = static_cast<int>(ts.size());
  const int64_t desc_words = static_cast<int64_t>((sizeof(gpu::Tensor) * ts.size() + 7) / 8);
  std::vector<int64_t> host(static_cast<size_t>(desc_words + 2 * (count + 1)), 0);
  std::memcpy(host.data(), ts.data(), sizeof(gpu::Tensor) * ts.size());
  int64_t* elem_off = host.data() + desc_words;
  int64_t* entry_off = elem_off + count + 1;
  auto blocks = [](int64_t items) { return (items + gpu::kItemsPerBlock - 1) / gpu::kItemsPerBlock; };
  for (int k = 0; k < count; ++k) {
    elem_off[k + 1] = elem_off[k] + blocks(ts[static_cast<size_t>(k)].n);
    entry_off[k + 1] = entry_off[k] + blocks(gpu::entries(ts[static_cast<size_t>(k)]));
  }
  auto packed = torch::from_blob(host.data(), {static_cast<int64_t>(host.size())}, torch::kInt64).pin_memory()
                    .to(device, /*non_blocking=*/true);
  const int64_t* base = packed.data_ptr<int64_t>();
  void* stream = nullptr;
#if defined(LOPT_TORCH_CUDA)
  stream = c10::cuda::getCurrentCUDAStream(device.index()).stream();
#endif
  gpu::launch(ts.data(), reinterpret_cast<const gpu::Tensor*>(base), count, base + desc_words,
              base + desc_words + count + 1, elem_off[count], entry_off[count], stream);
  // The kernels read `keep`, the scratch and the descriptors asynchronously: LibTorch's caching
  // allocator reuses their memory only for work queued later on the same stream, so dropping the
  // references here is safe.
}

}  // namespace detail
}  // namespace lopt
