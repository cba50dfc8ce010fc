// Transformer LM training throughput (tokens/s): d_model 128, 4 blocks, 4 heads, context 128,
// batch 32, byte-level English text, one full step (forward, backward, optimizer update) per
// iteration. bench/lm_reference.py is the same model and step in PyTorch, for the side-by-side
// figure in the README. Arg: 0 = AdamW, 1 = muLO (untrained theta; its cost does not depend on theta).
#include <ATen/Parallel.h>
#include <benchmark/benchmark.h>
#include <torch/torch.h>

#include <cstdlib>
#include <thread>

#include "bench/bench_threads.h"
#include "common/rng.h"
#include "optimizers/kernels/lopt_cpu.h"
#include "optimizers/optimizer.h"
#include "tasks/moe.h"
#include "tasks/task.h"

namespace {

using lopt_bench::bench_threads;

/// One full training step (forward, backward, optimizer update) per benchmark iteration.
void train_steps(benchmark::State& state, const lopt::Task& task, const lopt::Optimizer& opt) {
  auto gen = lopt::make_generator(0);
  auto st = opt.init(task.init(gen));
  lopt::BatchStream batches(task.data(), lopt::Split::train, task.batch_size(), 1);
  for (auto _ : state) {
    auto p = st.params.detached_requiring_grad();
    auto loss = task.loss(p, batches.next());
    auto grads = torch::autograd::grad({loss}, p.tensors);
    opt.update_(st, grads, loss.detach());
  }
}

void BM_LmTrainStep(benchmark::State& state) {
  at::set_num_threads(bench_threads());
  auto task = lopt::make_task({{"type", "transformer_lm"}, {"width", 128}, {"depth", 4}, {"heads", 4}, {"context", 128},
                               {"batch_size", 32}, {"corpus", "english"}});
  auto opt = lopt::make_optimizer(state.range(0) == 0 ? nlohmann::json{{"type", "adamw"}, {"lr", 1e-3}}
                                                      : nlohmann::json{{"type", "mulo"}});
  train_steps(state, *task, *opt);
  state.SetLabel(state.range(0) == 0 ? "adamw" : "mulo/" + lopt::kernels::dispatched_target());
  state.counters["tokens/s"] = benchmark::Counter(32.0 * 128.0, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["threads"] = at::get_num_threads();
}
BENCHMARK(BM_LmTrainStep)->Arg(0)->Arg(1)->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(5.0);

// The same model with mixture-of-experts feed-forward layers in every block (AdamW, SP):
// 0 dense (the FLOP-matched reference), 1 Switch (8 experts, top-1, aux router), 2 Switch with the
// Sinkhorn router, 3 granular (16 experts, top-4, aux router), 4 granular with 1 shared expert (top-3).
void BM_MoeTrainStep(benchmark::State& state) {
  at::set_num_threads(bench_threads());
  const std::vector<std::pair<std::string, nlohmann::json>> variants = {
      {"dense", nlohmann::json::object()},
      {"switch8-aux", {{"experts", 8}, {"top_k", 1}, {"router", "aux"}}},
      {"switch8-sinkhorn", {{"experts", 8}, {"top_k", 1}, {"router", "sinkhorn"}}},
      {"granular16-top4-aux", {{"experts", 16}, {"top_k", 4}, {"router", "aux"}}},
      {"granular16-top3+1shared-aux", {{"experts", 16}, {"top_k", 3}, {"shared_experts", 1}, {"router", "aux"}}}};
  const auto& [name, moe] = variants[static_cast<size_t>(state.range(0))];
  nlohmann::json cfg = {{"type", "transformer_lm"}, {"width", 128}, {"depth", 4}, {"heads", 4}, {"context", 128},
                        {"batch_size", 32}, {"corpus", "english"}, {"parametrization", {{"type", "sp"}}}};
  if (!moe.empty()) cfg["moe"] = moe;
  auto task = lopt::make_task(cfg);
  auto opt = lopt::make_optimizer({{"type", "adamw"}, {"lr", 1e-3}});
  train_steps(state, *task, *opt);
  state.SetLabel(name);
  state.counters["tokens/s"] = benchmark::Counter(32.0 * 128.0, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["threads"] = at::get_num_threads();
}
BENCHMARK(BM_MoeTrainStep)->DenseRange(0, 4)->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(5.0);

// The router of one MoE layer on one training batch (4096 tokens x d_model 128): router matmul,
// routing, gates, auxiliary losses (aux router), and their backward to the router weight — what a
// layer adds besides the experts. Router overhead of a model = depth (4) x this / BM_MoeTrainStep.
// 0 Switch aux (8 experts, top-1), 1 Switch Sinkhorn, 2 granular aux (16 experts, top-4).
void BM_MoeRouter(benchmark::State& state) {
  at::set_num_threads(bench_threads());
  const int64_t variant = state.range(0), E = variant == 2 ? 16 : 8, k = variant == 2 ? 4 : 1;
  auto gen = lopt::make_generator(0);
  auto x = torch::randn({4096, 128}, gen);
  auto w = (torch::randn({E, 128}, gen) * 0.02).requires_grad_();
  for (auto _ : state) {
    auto logits = torch::linear(x, w);
    auto r = variant == 1 ? lopt::route_sinkhorn(logits, k, true) : lopt::route_topk(logits, k);
    auto obj = r.gates.sum();
    if (variant != 1) obj = obj + 0.01 * lopt::load_balancing_loss(logits, r.experts) + 0.001 * lopt::router_z_loss(logits);
    auto g = torch::autograd::grad({obj}, {w});
    benchmark::DoNotOptimize(g[0].data_ptr());
  }
  state.SetLabel(variant == 0 ? "switch8-aux" : variant == 1 ? "switch8-sinkhorn" : "granular16-top4-aux");
}
BENCHMARK(BM_MoeRouter)->DenseRange(0, 2)->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(2.0);

}  // namespace
