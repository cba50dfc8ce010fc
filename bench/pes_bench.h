#pragma once
// Shared by the CPU and GPU meta-training benchmarks.
#include <benchmark/benchmark.h>

#include "common/rng.h"
#include "meta/estimators.h"
#include "meta/truncated_step.h"
#include "optimizers/learned_optimizer.h"

namespace lopt_bench {

/// Times PES estimates of `sc` (num_tasks tasks x antithetic pair, `trunc_length` inner steps each)
/// after one warm-up estimate (first CUDA calls, allocator). Counter: member inner steps/s.
inline void time_pes_estimates(benchmark::State& state, const lopt::LoptTruncatedStepConfig& sc, int64_t trunc_length) {
  lopt::LoptTruncatedStep step(sc);
  lopt::EstimatorConfig ec;
  ec.type = "pes";
  ec.trunc_length = trunc_length;
  ec.num_tasks = sc.num_tasks;
  ec.population = sc.population;
  auto est = lopt::make_gradient_estimator(ec, step);
  auto gen = lopt::make_generator(0);
  auto theta = step.learned_optimizer().init_theta(gen);
  est->init(theta, 1);
  int64_t inner = 0;
  uint64_t seed = 0;
  est->estimate(theta, ++seed);
  for (auto _ : state) inner += est->estimate(theta, ++seed).inner_steps;
  state.counters["inner_steps/s"] = benchmark::Counter(static_cast<double>(inner), benchmark::Counter::kIsRate);
}

/// PES estimates (8 tasks x antithetic pair = 16 members, 10 inner steps) on muP MLPs of `width`
/// (depth 2, 8x8 synthetic images, batch 64), members stacked into one computation (`population`) or
/// run one at a time, on the current compute device. Counter: member inner steps/s.
inline void run_pes_estimates(benchmark::State& state, int64_t width, bool population) {
  lopt::LoptTruncatedStepConfig sc;
  sc.task_family = {{"type", "mlp_family"}, {"widths", {width}}, {"depths", {2}}, {"batch_sizes", {64}},
                    {"image_sizes", {8}}, {"dataset", "synthetic"}, {"parametrization", {{"type", "mup"}, {"base_width", 32}}}};
  sc.lopt = {{"type", "mulo"}};
  sc.truncation = {{"type", "constant"}, {"length", 1000000}};
  sc.num_tasks = 8;
  sc.population = population;
  time_pes_estimates(state, sc, 10);
}

/// The Celo2 recipe's meta-training step (experiments/configs/meta_celo2_recipe.json): PES with
/// truncation 50 and 32 tasks (8 per dataset) x antithetic pair on MLPs 64-32-10 over the four 8x8
/// datasets, a global reparameterisation scale per task, learned optimizer `lopt_type` (celo2,
/// celo2_base, mulo), members stacked. Counter: inner steps/s (member steps).
inline void run_recipe_estimates(benchmark::State& state, const std::string& lopt_type) {
  lopt::LoptTruncatedStepConfig sc;
  sc.task_family = {{"type", "mlp_family"}, {"widths", {32}}, {"depths", {1}}, {"batch_sizes", {64}}, {"image_sizes", {8}},
                    {"datasets", {"digits", "fashion_mnist", "fashion_mnist_pixperm", "fashion_mnist_classperm"}},
                    {"dataset_per_slot", true}, {"parametrization", {{"type", "sp"}}}, {"reparam_scale_range", {1e-3, 1e3}}};
  sc.lopt = {{"type", lopt_type}};
  sc.truncation = {{"type", "log_uniform"}, {"min_length", 100}, {"max_length", 2000}};
  sc.num_tasks = 32;
  sc.population = true;
  time_pes_estimates(state, sc, 50);
}

}  // namespace lopt_bench
