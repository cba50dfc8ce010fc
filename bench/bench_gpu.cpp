// GPU step cost of the learned optimizer (CUDA kernels, exact fp32) against AdamW on the same GPU, on
// the parameter sets of the GPU issue's PyLO table. Skipped without a CUDA device.
// Args: {kind}: 0 = 1M (4 x 512^2), 1 = MLP 784-1024-1024-10 (1.9M), 2 = 5M (5 x 1024^2), 3 = GPT-2 small (124M).
#include <benchmark/benchmark.h>
#include <torch/cuda.h>
#include <torch/torch.h>

#include <chrono>

#include "bench/pes_bench.h"
#include "common/device.h"
#include "common/rng.h"
#include "optimizers/kernels/lopt_gpu.h"
#include "optimizers/optimizer.h"
#include "optimizers/small_fc_lopt/small_fc_lopt.h"

namespace {

lopt::ParamSet gpu_params(int64_t kind) {
  lopt::ParamSet p;
  auto add = [&](std::vector<int64_t> s) {
    p.tensors.push_back((torch::randn(s) * 0.05).to(torch::kCUDA));
    p.info.push_back({"t", s.size() > 1 ? lopt::ParamRole::hidden_weight : lopt::ParamRole::bias, s.size() > 1 ? s[1] : 1, s[0], 8.0});
  };
  if (kind == 0) {
    for (int i = 0; i < 4; ++i) add({512, 512});
  } else if (kind == 1) {
    for (auto s : std::vector<std::vector<int64_t>>{{1024, 784}, {1024}, {1024, 1024}, {1024}, {10, 1024}, {10}}) add(s);
  } else if (kind == 2) {
    for (int i = 0; i < 5; ++i) add({1024, 1024});
  } else {
    const int64_t d = 768;
    add({50257, d});
    add({1024, d});
    for (int l = 0; l < 12; ++l)
      for (auto s : std::vector<std::vector<int64_t>>{{d}, {d}, {d, 3 * d}, {3 * d}, {d, d}, {d}, {d}, {d}, {d, 4 * d}, {4 * d}, {4 * d, d}, {d}})
        add(s);
    add({d});
    add({d});
  }
  return p;
}

void run_gpu_step(benchmark::State& state, const lopt::Optimizer& opt) {
  if (!torch::cuda::is_available() || !lopt::kernels::gpu::compiled()) {
    state.SkipWithError("no CUDA device, or built without LOPT_CUDA");
    return;
  }
  auto params = gpu_params(state.range(0));
  auto s = opt.init(params);
  std::vector<torch::Tensor> grads;
  for (const auto& t : params.tensors) grads.push_back(torch::randn_like(t) * 1e-2);
  auto loss = torch::zeros({});
  for (int i = 0; i < 3; ++i) opt.update_(s, grads, loss);  // warm up
  torch::cuda::synchronize();
  for (auto _ : state) {
    const auto t0 = std::chrono::steady_clock::now();
    opt.update_(s, grads, loss);
    torch::cuda::synchronize();
    state.SetIterationTime(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  const double n = static_cast<double>(params.numel());
  state.counters["elements"] = n;
  state.counters["ns/element"] =
      benchmark::Counter(n * 1e-9, benchmark::Counter::kIsIterationInvariantRate | benchmark::Counter::kInvert);
}

void BM_GpuLoptStep(benchmark::State& state) {
  auto lo = lopt::make_small_fc_lopt({{"type", "mulo"}, {"impl", "fused"}});
  auto gen = lopt::make_generator(0);
  auto opt = lo->bind(lo->init_theta(gen));
  run_gpu_step(state, *opt);
}
void BM_GpuAdamW(benchmark::State& state) {  // lopt's AdamW: LibTorch tensor ops, one op chain per tensor (not fused)
  auto opt = lopt::make_optimizer({{"type", "adamw"}, {"lr", 1e-3}});
  run_gpu_step(state, *opt);
}
/// Meta-training on the GPU: one PES estimate of the muLO_M configuration's task (8 tasks x antithetic
/// pair = 16 members of a muP MLP of width arg0, depth 2, 8x8 synthetic images, batch 64, 10 inner
/// steps), members stacked (population) and stepped by one kernel launch. Compare BM_PesEstimate/1/<width>
/// (the CPU). Counter: member inner steps/s.
void BM_GpuPesEstimate(benchmark::State& state) {
  if (!torch::cuda::is_available() || !lopt::kernels::gpu::compiled()) {
    state.SkipWithError("no CUDA device, or built without LOPT_CUDA");
    return;
  }
  lopt::DeviceScope device(torch::kCUDA);
  lopt_bench::run_pes_estimates(state, state.range(0), true);
}
BENCHMARK(BM_GpuPesEstimate)->Arg(32)->Arg(128)->Arg(256)->Unit(benchmark::kMillisecond)->UseRealTime();

BENCHMARK(BM_GpuLoptStep)->Arg(0)->Arg(1)->Arg(2)->Arg(3)->Unit(benchmark::kMillisecond)->UseManualTime()->MinTime(0.5);
BENCHMARK(BM_GpuAdamW)->Arg(0)->Arg(1)->Arg(2)->Arg(3)->Unit(benchmark::kMillisecond)->UseManualTime()->MinTime(0.5);

}  // namespace
