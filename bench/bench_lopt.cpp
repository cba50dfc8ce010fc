// lopt_bench: learned-optimizer step cost against the GEMM rate and AdamW, measured in one run.
// Run: build/lopt_bench [--lopt_target=best|all|AVX3|AVX2|SSE4|SCALAR|...] [--benchmark_filter=...];
// figures go to results/ and the README. The fused-kernel and meta-training benchmarks carry the
// Highway target they ran on in their name (--lopt_target=all runs each compiled target this CPU has).
#include <ATen/Parallel.h>
#include <benchmark/benchmark.h>
#include <torch/torch.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <thread>

#include "bench/bench_threads.h"
#include "bench/pes_bench.h"
#include "common/parallel.h"
#include "common/rng.h"
#include "meta/estimators.h"
#include "optimizers/kernels/lopt_cpu.h"
#include "optimizers/learned_optimizer.h"
#include "optimizers/muon.h"
#include "optimizers/optimizer.h"
#include "optimizers/small_fc_lopt/small_fc_lopt.h"

namespace {

// Nominal FLOPs per element of the 39 -> 32 -> 32 -> 2 MLP: 2 * (39*32 + 32*32 + 32*2), the count
// DESIGN.md's budget uses ("GFLOP/s"). The fused kernel does fewer (time features and, for matrices,
// row/column features folded into biases): "kernel_GFLOP/s" counts what it really does.
constexpr double kLoptFlopsPerElement = 2.0 * (39 * 32 + 32 * 32 + 32 * 2);

/// Restricts kernel dispatch to one Highway target for the benchmark's lifetime (0: the CPU's best).
struct TargetScope {
  explicit TargetScope(int64_t target) : active(target != 0) {
    if (active) lopt::kernels::force_target(target);
  }
  ~TargetScope() {
    if (active) lopt::kernels::force_target(0);
  }
  bool active;
};

void set_threads() { at::set_num_threads(lopt_bench::bench_threads()); }

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

/// Kernel FLOPs per step of the fused learned step on `params` (the MLP's multiply-adds as the kernel
/// runs them; tensors it does not take count nothing): hidden units, hidden->hidden layers, Celo2's inputs.
double fused_kernel_flops(const lopt::ParamSet& params, int64_t hidden, int64_t hidden_layers, bool celo2) {
  double flops = 0;
  for (const auto& t : params.tensors)
    if (!celo2 || t.dim() == 2)
      flops += static_cast<double>(t.numel()) *
               static_cast<double>(lopt::detail::fused_mlp_flops_per_element(t.sizes().vec(), hidden, hidden_layers, celo2));
  return flops;
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
  if (lopt_flops) {
    state.counters["GFLOP/s"] = benchmark::Counter(n * kLoptFlopsPerElement * 1e-9,
                                                   benchmark::Counter::kIsIterationInvariantRate);
    state.counters["kernel_GFLOP/s"] = benchmark::Counter(fused_kernel_flops(params, 32, 1, false) * 1e-9,
                                                          benchmark::Counter::kIsIterationInvariantRate);
  }
  state.counters["state_floats/element"] = [&] {
    double floats = 0;
    for (const auto& [name, v] : s.slots)
      for (const auto& t : v) floats += static_cast<double>(t.numel());
    return floats / n;
  }();
}

void BM_LoptFused(benchmark::State& state, int64_t target) {
  TargetScope scope(target);
  state.SetLabel(lopt::kernels::dispatched_target());
  auto lo = lopt::make_small_fc_lopt({{"type", "mulo"}, {"impl", "fused"}});
  auto gen = lopt::make_generator(0);
  auto opt = lo->bind(lo->init_theta(gen));
  run_step(state, *opt, state.range(0), state.range(1), true);
}
/// One population step as meta-training takes it: 16 members (8 tasks x antithetic pair), each with
/// its own theta near `lo`'s init, of the MLP 64 -> w -> w -> 10 (depth 2 on 8x8 inputs); one
/// update_many_ call (`batched`), or each member's update_ in turn.
void run_population(benchmark::State& state, const lopt::LearnedOptimizer& lo, int64_t w, bool batched) {
  set_threads();
  auto gen = lopt::make_generator(0);
  const auto theta = lo.init_theta(gen);
  std::vector<std::unique_ptr<lopt::Optimizer>> opts;
  std::vector<lopt::OptState> states;
  std::vector<std::vector<torch::Tensor>> grads;
  double n = 0;
  for (int m = 0; m < 16; ++m) {
    opts.push_back(lo.bind(theta + 0.01 * torch::randn(theta.sizes(), gen)));
    lopt::ParamSet p;
    for (auto s : std::vector<std::vector<int64_t>>{{w, 64}, {w}, {w, w}, {w}, {10, w}, {10}}) {
      p.tensors.push_back(torch::randn(s, gen) * 0.05);
      p.info.push_back({"t", s.size() > 1 ? lopt::ParamRole::hidden_weight : lopt::ParamRole::bias, s.back(), s[0], 4.0});
      n += static_cast<double>(p.tensors.back().numel());
    }
    states.push_back(opts.back()->init(p));
    std::vector<torch::Tensor> g;
    for (const auto& t : p.tensors) g.push_back(torch::randn(t.sizes(), gen) * 1e-2);
    grads.push_back(g);
  }
  auto step = [&] {
    if (!batched) {
      for (size_t m = 0; m < opts.size(); ++m) opts[m]->update_(states[m], grads[m], torch::zeros({}));
      return;
    }
    std::vector<lopt::PopulationMember> members;
    for (size_t m = 0; m < opts.size(); ++m) members.push_back({opts[m].get(), &states[m], grads[m], torch::zeros({})});
    opts[0]->update_many_(members);
  };
  step();
  for (auto _ : state) step();
  state.counters["elements"] = n;
  state.counters["ns/element"] = benchmark::Counter(n * 1e-9, benchmark::Counter::kIsIterationInvariantRate |
                                                                  benchmark::Counter::kInvert);
  state.counters["member_steps/s"] = benchmark::Counter(16, benchmark::Counter::kIsIterationInvariantRate);
}

void BM_LoptPopulation(benchmark::State& state, int64_t target) {
  TargetScope scope(target);
  state.SetLabel(lopt::kernels::dispatched_target());
  auto lo = lopt::make_small_fc_lopt({{"type", "mulo"}, {"impl", "fused"}});
  run_population(state, *lo, state.range(0), true);
}

/// Celo2's population step: {width, batched, fused} (batched 0: one member at a time; fused 0: tensor ops).
void BM_Celo2Population(benchmark::State& state, const char* type) {
  auto lo = lopt::make_learned_optimizer({{"type", type}, {"impl", state.range(2) != 0 ? "fused" : "tensor"}});
  if (state.range(2) != 0) state.SetLabel(lopt::kernels::dispatched_target());
  run_population(state, *lo, state.range(0), state.range(1) != 0);
}

void BM_LoptTensorOps(benchmark::State& state) {
  auto lo = lopt::make_small_fc_lopt({{"type", "mulo"}, {"impl", "tensor"}});
  auto gen = lopt::make_generator(0);
  auto opt = lo->bind(lo->init_theta(gen));
  run_step(state, *opt, state.range(0), state.range(1), true);
}
void BM_AdamW(benchmark::State& state) {
  auto opt = lopt::make_optimizer({{"type", "adamw"}, {"lr", 1e-3}});
  run_step(state, *opt, state.range(0), state.range(1), false);
}

/// Muon's step (Newton-Schulz on the hidden matrices, AdamW on the rest): ns/element and the rate of
/// its Newton-Schulz matmuls (per iteration on an m x n matrix, m <= n: 4 m^2 n + 2 m^3 FLOPs), to set
/// against BM_Gemm's rate in the same run.
void BM_Muon(benchmark::State& state) {
  auto opt = lopt::make_optimizer({{"type", "muon"}, {"lr", 0.02}});
  run_step(state, *opt, state.range(0), state.range(1), false);
  const auto params = make_params(state.range(0), state.range(1));
  const auto& muon = static_cast<const lopt::Muon&>(*opt);
  double flops = 0;
  for (size_t i = 0; i < params.size(); ++i) {
    if (!muon.is_muon(params, i)) continue;
    const double a = static_cast<double>(params.tensors[i].size(0)), b = static_cast<double>(params.tensors[i].numel()) / a;
    const double m = std::min(a, b), n = std::max(a, b);
    flops += 5 * (4 * m * m * n + 2 * m * m * m);
  }
  state.counters["NS_GFLOP/s"] = benchmark::Counter(flops * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
}

/// Celo2's step on tensor ops (impl "tensor"): seeded random network; `celo2_base` without
/// Newton-Schulz. To set against BM_Muon and BM_LoptTensorOps in the same run.
void BM_Celo2TensorOps(benchmark::State& state, const char* type) {
  auto opt = lopt::make_optimizer({{"type", type}, {"theta_seed", 0}, {"impl", "tensor"}});
  run_step(state, *opt, state.range(0), state.range(1), false);
}

/// Celo2's fused step (impl "fused": features and the 30->8->8->3 network in the SIMD kernel, then
/// Newton-Schulz for celo2 and the normalisation in LibTorch) on one Highway target. kernel_GFLOP/s
/// counts the kernel's multiply-adds over the whole step's time (set it against BM_Gemm); for celo2,
/// NS_GFLOP/s its Newton-Schulz matmuls (as BM_Muon's).
void BM_Celo2Fused(benchmark::State& state, const char* type, int64_t target) {
  TargetScope scope(target);
  state.SetLabel(lopt::kernels::dispatched_target());
  auto opt = lopt::make_optimizer({{"type", type}, {"theta_seed", 0}, {"impl", "fused"}});
  run_step(state, *opt, state.range(0), state.range(1), false);
  const auto params = make_params(state.range(0), state.range(1));
  state.counters["kernel_GFLOP/s"] = benchmark::Counter(fused_kernel_flops(params, 8, 1, true) * 1e-9,
                                                        benchmark::Counter::kIsIterationInvariantRate);
  if (std::string(type) != "celo2") return;
  double flops = 0;
  for (const auto& t : params.tensors) {
    if (t.dim() != 2) continue;
    const double m = static_cast<double>(std::min(t.size(0), t.size(1))), n = static_cast<double>(std::max(t.size(0), t.size(1)));
    flops += 5 * (4 * m * m * n + 2 * m * m * m);
  }
  state.counters["NS_GFLOP/s"] = benchmark::Counter(flops * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
}

// Args: {kind, millions}: {0, 1} = 1M elements of matrices, {0, 5} = 5M, {1, 0} = 1.9M-parameter MLP.
BENCHMARK(BM_LoptTensorOps)->Args({0, 1})->Args({0, 5})->Args({1, 0})->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_AdamW)->Args({0, 1})->Args({0, 5})->Args({1, 0})->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_Muon)->Args({0, 1})->Args({0, 5})->Args({1, 0})->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK_CAPTURE(BM_Celo2TensorOps, celo2, "celo2")->Args({0, 1})->Args({1, 0})->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK_CAPTURE(BM_Celo2TensorOps, celo2_base, "celo2_base")->Args({0, 1})->Args({1, 0})->Unit(benchmark::kMillisecond)->UseRealTime();
// Args: {width, batched, fused}.
BENCHMARK_CAPTURE(BM_Celo2Population, celo2, "celo2")
    ->Args({32, 0, 0})->Args({32, 1, 0})->Args({128, 1, 0})->Args({32, 0, 1})->Args({32, 1, 1})->Args({128, 1, 1})
    ->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK_CAPTURE(BM_Celo2Population, celo2_base, "celo2_base")->Args({32, 1, 0})->Args({32, 1, 1})->Unit(benchmark::kMillisecond)->UseRealTime();

}  // namespace

/// One PES estimate (8 tasks x antithetic pair = 16 members, 10 inner steps) on MLPs of width
/// arg1 (depth 2, 8x8 synthetic images, batch 64), with the members of one shape stacked into one
/// bmm computation (arg0 = 1) or run one at a time (arg0 = 0). Counter: member inner steps/s.
void BM_PesEstimate(benchmark::State& state, int64_t target) {
  TargetScope scope(target);
  state.SetLabel(lopt::kernels::dispatched_target());
  set_threads();
  lopt_bench::run_pes_estimates(state, state.range(1), state.range(0) != 0);
}

/// The Celo2 recipe's meta-training throughput (bench/pes_bench.h run_recipe_estimates): one PES
/// estimate per iteration, 32 tasks x antithetic pair x 50 inner steps. Counter: inner steps/s.
void BM_MetaRecipe(benchmark::State& state, const char* type) {
  state.SetLabel(lopt::kernels::dispatched_target());
  set_threads();
  lopt_bench::run_recipe_estimates(state, type);
}
BENCHMARK_CAPTURE(BM_MetaRecipe, celo2, "celo2")->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(3);
BENCHMARK_CAPTURE(BM_MetaRecipe, celo2_base, "celo2_base")->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(3);
BENCHMARK_CAPTURE(BM_MetaRecipe, mulo, "mulo")->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(3);

int main(int argc, char** argv) {
  lopt::tune_allocator();
  // --lopt_target: which Highway targets the fused-kernel benchmarks run on.
  std::string which = "best";
  int kept = 1;
  for (int i = 1; i < argc; ++i) {
    if (std::strncmp(argv[i], "--lopt_target=", 14) == 0) which = argv[i] + 14;
    else argv[kept++] = argv[i];
  }
  argc = kept;
  lopt::kernels::apply_target_from_env();  // LOPT_SIMD_TARGET=AVX2 runs "best" as an AVX2-only CPU would
  std::vector<int64_t> targets;
  std::string names;
  for (int64_t t : lopt::kernels::available_targets()) {
    names += (names.empty() ? "" : ", ") + lopt::kernels::target_name(t);
    if (which == "all" || which == lopt::kernels::target_name(t)) targets.push_back(t);
  }
  if (which == "best") targets = {0};
  if (targets.empty()) {
    std::cerr << "lopt_bench: --lopt_target=" << which << " is not available here (valid: best, all, " << names << ")\n";
    return 2;
  }
  benchmark::AddCustomContext("lopt_kernel_dispatched", lopt::kernels::dispatched_target());
  benchmark::AddCustomContext("lopt_kernel_targets", names);
  for (int64_t t : targets) {
    const std::string suffix = t == 0 ? "" : "/" + lopt::kernels::target_name(t);
    // Args: {kind, millions}: {0, 1} = 1M elements of matrices, {0, 5} = 5M, {1, 0} = 1.9M-parameter MLP.
    benchmark::RegisterBenchmark(("BM_LoptFused" + suffix).c_str(), BM_LoptFused, t)
        ->Args({0, 1})->Args({0, 5})->Args({1, 0})->Unit(benchmark::kMillisecond)->UseRealTime();
    benchmark::RegisterBenchmark(("BM_LoptPopulation" + suffix).c_str(), BM_LoptPopulation, t)
        ->Arg(32)->Arg(128)->Unit(benchmark::kMillisecond)->UseRealTime();
    for (const char* type : {"celo2", "celo2_base"})
      benchmark::RegisterBenchmark(("BM_Celo2Fused/" + std::string(type) + suffix).c_str(), BM_Celo2Fused, type, t)
          ->Args({0, 1})->Args({1, 0})->Unit(benchmark::kMillisecond)->UseRealTime();
    benchmark::RegisterBenchmark(("BM_PesEstimate" + suffix).c_str(), BM_PesEstimate, t)
        ->Args({0, 32})->Args({1, 32})->Args({0, 128})->Args({1, 128})->Unit(benchmark::kMillisecond)->UseRealTime();
  }
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 2;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
