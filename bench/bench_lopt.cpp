// lopt_bench: learned-optimizer step cost against the GEMM rate and AdamW, measured in one run.
// Run: build/lopt_bench [--benchmark_filter=...]; figures go to results/ and the README.
#include <ATen/Parallel.h>
#include <benchmark/benchmark.h>
#include <torch/torch.h>

#include <thread>

#include "common/rng.h"
#include "meta/estimators.h"
#include "optimizers/optimizer.h"
#include "optimizers/small_fc_lopt.h"

namespace {

// FLOPs per element of the 39 -> 32 -> 32 -> 2 MLP: 2 * (39*32 + 32*32 + 32*2).
constexpr double kLoptFlopsPerElement = 2.0 * (39 * 32 + 32 * 32 + 32 * 2);

void set_threads() { at::set_num_threads(static_cast<int>(std::max(1u, std::thread::hardware_concurrency()))); }

void BM_Gemm(benchmark::State& state) {
  set_threads();
  const int64_t n = state.range(0);
  auto a = torch::randn({n, n}), b = torch::randn({n, n}), c = torch::empty({n, n});
  for (auto _ : state) {
    torch::mm_out(c, a, b);
    benchmark::DoNotOptimize(c.data_ptr());
  }
  state.counters["GFLOP/s"] = benchmark::Counter(2.0 * n * n * n * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
}
BENCHMARK(BM_Gemm)->Arg(2048)->Unit(benchmark::kMillisecond)->UseRealTime();

/// Parameter sets: 0 = list of 1024x1024 matrices (arg1 million elements); 1 = MLP 784-1024-1024-10 (~1.9M).
lopt::ParamSet make_params(int64_t kind, int64_t millions) {
  lopt::ParamSet p;
  auto add = [&](std::vector<int64_t> s, lopt::ParamRole role) {
    p.tensors.push_back(torch::randn(s) * 0.05);
    p.info.push_back({"t", role, s.size() > 1 ? s[1] : 1, s[0], 8.0});
  };
  if (kind == 0) {
    for (int64_t i = 0; i < millions; ++i) add({1024, 1024}, lopt::ParamRole::hidden_weight);
  } else {
    add({1024, 784}, lopt::ParamRole::input_weight);
    add({1024}, lopt::ParamRole::bias);
    add({1024, 1024}, lopt::ParamRole::hidden_weight);
    add({1024}, lopt::ParamRole::bias);
    add({10, 1024}, lopt::ParamRole::output_weight);
    add({10}, lopt::ParamRole::bias);
  }
  return p;
}

void run_step(benchmark::State& state, const lopt::Optimizer& opt, int64_t kind, int64_t millions, bool lopt_flops) {
  set_threads();
  auto params = make_params(kind, millions);
  auto s = opt.init(params);
  std::vector<torch::Tensor> grads;
  for (const auto& t : params.tensors) grads.push_back(torch::randn(t.sizes()) * 1e-2);
  auto loss = torch::zeros({});
  opt.update_(s, grads, loss);  // warm up
  for (auto _ : state) opt.update_(s, grads, loss);
  const double n = static_cast<double>(params.numel());
  state.counters["elements"] = n;
  state.counters["ns/element"] = benchmark::Counter(n * 1e-9, benchmark::Counter::kIsIterationInvariantRate |
                                                                  benchmark::Counter::kInvert);
  if (lopt_flops)
    state.counters["GFLOP/s"] = benchmark::Counter(n * kLoptFlopsPerElement * 1e-9,
                                                   benchmark::Counter::kIsIterationInvariantRate);
  state.counters["state_floats/element"] = [&] {
    double floats = 0;
    for (const auto& [name, v] : s.slots)
      for (const auto& t : v) floats += static_cast<double>(t.numel());
    return floats / n;
  }();
}

void BM_LoptFused(benchmark::State& state) {
  auto lo = lopt::make_learned_optimizer({{"type", "mulo"}, {"impl", "fused"}});
  auto gen = lopt::make_generator(0);
  auto opt = lo->bind(lo->init_theta(gen));
  run_step(state, *opt, state.range(0), state.range(1), true);
}
void BM_LoptTensorOps(benchmark::State& state) {
  auto lo = lopt::make_learned_optimizer({{"type", "mulo"}, {"impl", "tensor"}});
  auto gen = lopt::make_generator(0);
  auto opt = lo->bind(lo->init_theta(gen));
  run_step(state, *opt, state.range(0), state.range(1), true);
}
void BM_AdamW(benchmark::State& state) {
  auto opt = lopt::make_optimizer({{"type", "adamw"}, {"lr", 1e-3}});
  run_step(state, *opt, state.range(0), state.range(1), false);
}

// Args: {kind, millions}: {0, 1} = 1M elements of matrices, {0, 5} = 5M, {1, 0} = 1.9M-parameter MLP.
BENCHMARK(BM_LoptFused)->Args({0, 1})->Args({0, 5})->Args({1, 0})->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_LoptTensorOps)->Args({0, 1})->Args({0, 5})->Args({1, 0})->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_AdamW)->Args({0, 1})->Args({0, 5})->Args({1, 0})->Unit(benchmark::kMillisecond)->UseRealTime();

}  // namespace

/// One PES estimate (8 tasks x antithetic pair = 16 members, 10 inner steps) on MLPs of width
/// arg1 (depth 2, 8x8 synthetic images, batch 64), with the members of one shape stacked into one
/// bmm computation (arg0 = 1) or run one at a time (arg0 = 0). Counter: member inner steps/s.
void BM_PesEstimate(benchmark::State& state) {
  set_threads();
  const bool population = state.range(0) != 0;
  const int64_t width = state.range(1);
  lopt::LoptTruncatedStepConfig sc;
  sc.task_family = {{"type", "mlp_family"}, {"widths", {width}}, {"depths", {2}}, {"batch_sizes", {64}},
                    {"image_sizes", {8}}, {"dataset", "synthetic"}, {"parametrization", {{"type", "mup"}, {"base_width", 32}}}};
  sc.lopt = {{"type", "mulo"}};
  sc.truncation = {{"type", "constant"}, {"length", 1000000}};
  sc.num_tasks = 8;
  sc.population = population;
  lopt::LoptTruncatedStep step(sc);
  lopt::EstimatorConfig ec;
  ec.type = "pes";
  ec.trunc_length = 10;
  ec.num_tasks = 8;
  ec.population = population;
  auto est = lopt::make_gradient_estimator(ec, step);
  auto gen = lopt::make_generator(0);
  auto theta = step.learned_optimizer().init_theta(gen);
  est->init(theta, 1);
  int64_t inner = 0;
  uint64_t seed = 0;
  for (auto _ : state) inner += est->estimate(theta, ++seed).inner_steps;
  state.counters["inner_steps/s"] = benchmark::Counter(static_cast<double>(inner), benchmark::Counter::kIsRate);
}
BENCHMARK(BM_PesEstimate)->Args({0, 32})->Args({1, 32})->Args({0, 128})->Args({1, 128})->Unit(benchmark::kMillisecond)->UseRealTime();

BENCHMARK_MAIN();
