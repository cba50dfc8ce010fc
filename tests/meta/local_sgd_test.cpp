// Local SGD: rounds equal a per-worker loop, the global updates (FedAvg, SlowMo, LOpt-A, LAgg-A)
// equal their closed forms, LAgg-A sees each worker's delta, worker data streams are the same in
// one process and across ranks, and local-SGD meta-training runs PES and rejects bad configs.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>

#include "common/errors.h"
#include "common/rng.h"
#include "experiments/train.h"
#include "meta/local_sgd.h"
#include "meta/meta_trainer.h"
#include "optimizers/global_update.h"
#include "optimizers/small_fc_lopt/small_fc_lopt.h"
#include "tasks/data/image_dataset.h"
#include "tasks/mlp.h"
#include "support.h"

namespace {

lopt::MlpConfig tiny_mlp() {
  lopt::MlpConfig c;
  c.width = 10;
  c.depth = 2;
  c.image_size = 4;
  c.batch_size = 6;
  c.dataset = "synthetic";
  c.parametrization = {{"type", "sp"}};
  return c;
}

class LocalRound : public ::testing::TestWithParam<std::string> {};

// Two runs x three workers x H = 3 in one population equal, per worker, H steps of plain SGD
// through autograd (local_sgd), or the mean gradient at the global point (data_parallel).
TEST_P(LocalRound, EqualsPerWorkerLoop) {
  lopt::MlpTask task(tiny_mlp());
  lopt::LocalSgdConfig lc;
  lc.workers = 3;
  lc.local_steps = 3;
  lc.local_lr = 0.2;
  lc.mode = GetParam();
  auto gen = lopt::make_generator(5);
  std::vector<lopt::ParamSet> globals = {task.init(gen), task.init(gen)};
  // batches[h][run * W + w]
  std::vector<std::vector<lopt::Batch>> b(3);
  for (int h = 0; h < 3; ++h)
    for (int i = 0; i < 6; ++i) b[h].push_back(task.sample_batch(lopt::Split::train, gen, lopt::Shard{i % 3, 3}));
  std::vector<lopt::Batch> stacked;
  for (auto& x : b) stacked.push_back(lopt::Batch::stack(x));
  auto out = lopt::local_rounds(task, {&globals[0], &globals[1]}, 3, stacked, lc);
  ASSERT_EQ(out.size(), 2u);
  for (int r = 0; r < 2; ++r) {
    double loss_sum = 0, first_sum = 0;
    std::vector<torch::Tensor> mean(globals[r].size());
    for (int w = 0; w < 3; ++w) {
      auto p = globals[r].clone();
      std::vector<torch::Tensor> gsum(p.size());
      for (int h = 0; h < 3; ++h) {
        auto q = p.detached_requiring_grad();
        auto loss = task.loss(q, b[h][r * 3 + w]);
        loss_sum += loss.item<double>();
        if (h == 0 || lc.mode == "data_parallel") first_sum += loss.item<double>() / (h == 0 && lc.mode == "local_sgd" ? 1.0 : 3.0);
        auto g = torch::autograd::grad({loss}, q.tensors);
        for (size_t k = 0; k < p.size(); ++k) {
          if (lc.mode == "local_sgd") p.tensors[k] = p.tensors[k] - lc.local_lr * g[k];
          gsum[k] = gsum[k].defined() ? gsum[k] + g[k] : g[k];
        }
      }
      for (size_t k = 0; k < p.size(); ++k) {
        auto d = lc.mode == "local_sgd" ? globals[r].tensors[k] - p.tensors[k] : gsum[k] / 3.0;
        // A delta is a difference of float32 parameters: allow their rounding (floor 1e-2 -> 1e-6 absolute).
        EXPECT_LT(lopt_test::max_rel_error(out[r].worker_deltas[k][w], d, 1e-2), 1e-4) << "run " << r << " worker " << w;
        mean[k] = mean[k].defined() ? mean[k] + d / 3.0 : d / 3.0;
      }
    }
    EXPECT_NEAR(out[r].loss, loss_sum / 9.0, 1e-6);
    EXPECT_NEAR(out[r].global_loss, first_sum / 3.0, 1e-6);
    for (size_t k = 0; k < mean.size(); ++k) EXPECT_LT(lopt_test::max_rel_error(out[r].mean_delta[k], mean[k], 1e-2), 1e-4);
  }
}
INSTANTIATE_TEST_SUITE_P(Modes, LocalRound, ::testing::Values("local_sgd", "data_parallel"));

lopt::ParamSet one_tensor(const torch::Tensor& t) {
  lopt::ParamSet p;
  p.tensors = {t};
  p.info.resize(1);
  p.info[0].name = "w";
  p.info[0].fan_in = t.size(1);
  p.info[0].fan_out = t.size(0);
  return p;
}

TEST(GlobalUpdate, FedAvgAndSlowMoClosedForms) {
  auto gen = lopt::make_generator(1);
  auto theta0 = torch::randn({3, 4}, gen);
  auto d1 = torch::randn({3, 4}, gen), d2 = torch::randn({3, 4}, gen);
  // FedAvg: SGD lr 1 on the mean delta = the average of the workers' parameters.
  auto fedavg = lopt::make_global_update({{"type", "sgd"}, {"lr", 1.0}}, 2);
  auto s = fedavg->init(one_tensor(theta0.clone()));
  auto workers = torch::stack({theta0 - d1, theta0 - d2});
  fedavg->apply_(s, {(d1 + d2) / 2}, {}, torch::tensor(1.0));
  EXPECT_LT(lopt_test::max_rel_error(s.params.tensors[0], workers.mean(0)), 1e-5);
  // SlowMo (alpha 0.5, beta 0.7): m1 = D1, x1 = x0 - a m1; m2 = b m1 + D2, x2 = x1 - a m2.
  auto slowmo = lopt::make_global_update({{"type", "sgd"}, {"lr", 0.5}, {"momentum", 0.7}}, 2);
  EXPECT_FALSE(slowmo->needs_worker_deltas());
  auto t = slowmo->init(one_tensor(theta0.clone()));
  slowmo->apply_(t, {d1}, {}, torch::tensor(1.0));
  slowmo->apply_(t, {d2}, {}, torch::tensor(1.0));
  auto x1 = theta0 - 0.5 * d1, x2 = x1 - 0.5 * (0.7 * d1 + d2);
  EXPECT_LT(lopt_test::max_rel_error(t.params.tensors[0], x2), 1e-5);
}

TEST(GlobalUpdate, LearnedAggregationSeesEachWorkersDelta) {
  const int64_t K = 4;
  auto lagg = lopt::make_global_update({{"type", "small_fc_lopt"}, {"worker_inputs", K}, {"theta_seed", 3}}, K);
  ASSERT_TRUE(lagg->needs_worker_deltas());
  EXPECT_EQ(lagg->workers(), K);
  const auto& lo = dynamic_cast<const lopt::SmallFcLoptOptimizer&>(lagg->optimizer());
  EXPECT_EQ(lo.mlp_weights().front().size(1), lopt::kLoptInputs + K);
  auto gen = lopt::make_generator(2);
  auto theta0 = torch::randn({5, 6}, gen);
  auto deltas = torch::randn({K, 5, 6}, gen);
  // Same mean, different spread across workers.
  auto shuffled = deltas.clone();
  shuffled[0] += 0.5;
  shuffled[1] -= 0.5;
  auto run = [&](const torch::Tensor& d) {
    auto s = lagg->init(one_tensor(theta0.clone()));
    lagg->apply_(s, {d.mean(0)}, {d}, torch::tensor(1.0));
    return s.params.tensors[0];
  };
  EXPECT_GT((run(deltas) - run(shuffled)).abs().max().item<double>(), 1e-6);
  // The workers' deltas are inputs 28 .. 28 + K, each normalised by its second moment over the tensor.
  std::vector<torch::Tensor> inputs, outputs;
  auto s0 = lagg->init(one_tensor(theta0.clone()));
  std::vector<torch::Tensor> wd = {deltas};
  lo.step(s0, {deltas.mean(0)}, &inputs, &outputs, &wd);
  ASSERT_EQ(inputs[0].size(-1), lopt::kLoptInputs + K);
  for (int64_t k = 0; k < K; ++k) {
    auto dk = deltas[k];
    auto expected = dk * (dk.square().mean() + 1e-5).rsqrt();
    EXPECT_LT(lopt_test::max_rel_error(inputs[0].select(-1, lopt::kLoptTensorFeatures + k), expected, 1e-3), 1e-4) << k;
  }
  // Without the workers' deltas it refuses to step (plain update and the fused path).
  auto s1 = lagg->init(one_tensor(theta0.clone()));
  EXPECT_THROW(lo.update(s1, {deltas.mean(0)}, torch::tensor(1.0)), c10::Error);
  EXPECT_THROW(lo.update_(s1, {deltas.mean(0)}, torch::tensor(1.0)), c10::Error);
  // A worker count that differs from the aggregator's is a config error.
  lopt_test::expect_config_error(
      [](const nlohmann::json& j) { lopt::make_global_update(j, 8); },
      {{"type", "small_fc_lopt"}, {"worker_inputs", 4}}, "/optimizer/worker_inputs");
}

TEST(GlobalUpdate, LoptAIsTheLearnedOptimizerOnTheMeanDelta) {
  auto cfg = nlohmann::json{{"type", "small_fc_lopt"}, {"theta_seed", 4}};
  auto lopt_a = lopt::make_global_update(cfg, 8);
  auto direct = lopt::make_optimizer(cfg);
  auto gen = lopt::make_generator(3);
  auto theta0 = torch::randn({5, 6}, gen), mean = torch::randn({5, 6}, gen);
  auto a = lopt_a->init(one_tensor(theta0.clone()));
  auto b = direct->init(one_tensor(theta0.clone()));
  lopt_a->apply_(a, {mean}, {}, torch::tensor(1.0));
  direct->update_(b, {mean}, torch::tensor(1.0));
  EXPECT_TRUE(torch::equal(a.params.tensors[0], b.params.tensors[0]));
}

// Rank w of a multi-process run (one stream, first_worker = w) draws what worker w draws in one process.
TEST(WorkerStreams, RankStreamEqualsSingleProcessWorker) {
  lopt::MlpTask task(tiny_mlp());
  lopt::LocalSgdConfig lc;
  lc.workers = 4;
  lopt::WorkerStreams all(task.data(), 6, 9, 0, 4, lc);
  lopt::WorkerStreams rank2(task.data(), 6, 9, 2, 1, lc);
  for (int round = 0; round < 2; ++round) {
    auto a = all.next_round(3), b = rank2.next_round(3);
    for (int h = 0; h < 3; ++h)
      EXPECT_TRUE(torch::equal(a[h].at("x")[2], b[h].at("x")[0])) << "round " << round << " step " << h;
  }
  // Resume: a restored stream continues with the same batches.
  auto st = rank2.state();
  auto next = rank2.next_round(2);
  lopt::WorkerStreams again(task.data(), 6, 9, 2, 1, lc);
  again.restore(st);
  EXPECT_TRUE(torch::equal(again.next_round(2)[1].at("x"), next[1].at("x")));
}

nlohmann::json local_train_config(const std::string& out, const nlohmann::json& optimizer) {
  return {{"task", {{"type", "mlp"}, {"width", 16}, {"depth", 2}, {"batch_size", 8}, {"image_size", 4}, {"dataset", "synthetic"},
                    {"parametrization", {{"type", "sp"}}}}},
          {"local_sgd", {{"workers", 4}, {"local_steps", 3}, {"local_lr", 0.2}}},
          {"optimizer", optimizer},
          {"steps", 30},
          {"eval_every", 10},
          {"output", out}};
}

TEST(LocalSgdTrain, RoundsTrainAndBadConfigsNameTheKey) {
  lopt_test::TempDir tmp;
  auto res = lopt::run_train(local_train_config(tmp.path("fedavg.h5"), {{"type", "sgd"}, {"lr", 1.0}}), lopt::ProgressMode::quiet);
  ASSERT_EQ(res.train_loss.size(), 30u);
  EXPECT_LT(res.final_train_loss(), res.train_loss.front());
  auto lagg = lopt::run_train(local_train_config(tmp.path("lagg.h5"), {{"type", "small_fc_lopt"}, {"worker_inputs", 4}}),
                              lopt::ProgressMode::quiet);
  EXPECT_EQ(lagg.train_loss.size(), 30u);
  auto resolve = [](const nlohmann::json& j) { lopt::resolve_train_config(j); };
  lopt_test::expect_config_error(resolve, local_train_config("", {{"type", "small_fc_lopt"}, {"worker_inputs", 8}}),
                                 "/optimizer/worker_inputs");
  auto bad = local_train_config("", {{"type", "sgd"}, {"lr", 1.0}});
  bad["local_sgd"]["local_steps"] = 0;
  lopt_test::expect_config_error(resolve, bad, "/local_sgd/local_steps");
  bad["local_sgd"] = {{"mode", "fedprox"}};
  lopt_test::expect_config_error(resolve, bad, "/local_sgd/mode");
}

nlohmann::json local_meta_config(const std::string& dir, int64_t worker_inputs) {
  nlohmann::json lopt_cfg = {{"type", "small_fc_lopt"}};
  if (worker_inputs > 0) lopt_cfg["worker_inputs"] = worker_inputs;
  return {{"task_family", {{"type", "mlp_family"}, {"widths", {8}}, {"depths", {2}}, {"batch_sizes", {8}}, {"image_sizes", {4}},
                           {"dataset", "synthetic"}, {"parametrization", {{"type", "sp"}}}}},
          {"local_sgd", {{"workers", 3}, {"local_steps", 2}, {"local_lr", 0.2}}},
          {"lopt", lopt_cfg},
          {"truncation", {{"type", "log_uniform"}, {"min_length", 5}, {"max_length", 10}}},
          {"estimator", {{"type", "pes"}, {"std", 0.01}, {"trunc_length", 3}, {"num_tasks", 2}}},
          {"outer", {{"lr", 1e-2}, {"warmup_steps", 1}}},
          {"outer_steps", 4},
          {"seed", 2},
          {"checkpoint_every", 2},
          {"output_dir", dir}};
}

TEST(LocalSgdMetaTrain, PesMetaTrainsLoptAAndLaggAAndResumesExactly) {
  lopt_test::TempDir tmp;
  for (int64_t k : {0, 3}) {
    const std::string dir = tmp.path("m" + std::to_string(k));
    lopt::MetaTrainer straight(local_meta_config(dir + "a", k));
    straight.run(lopt::ProgressMode::quiet);
    ASSERT_EQ(straight.log().meta_loss.size(), 4u);
    for (double l : straight.log().meta_loss) EXPECT_TRUE(std::isfinite(l));
    EXPECT_GT(straight.log().grad_norm.back(), 0.0);
    lopt::MetaTrainer first(local_meta_config(dir + "b", k));
    first.run(lopt::ProgressMode::quiet, 2);
    lopt::MetaTrainer second(local_meta_config(dir + "b", k));
    ASSERT_TRUE(second.resume());
    second.run(lopt::ProgressMode::quiet);
    EXPECT_TRUE(torch::equal(straight.theta(), second.theta())) << "worker_inputs " << k;
  }
  auto resolve = [](const nlohmann::json& j) { lopt::resolve_meta_train_config(j); };
  lopt_test::expect_config_error(resolve, local_meta_config("x", 5), "/lopt/worker_inputs");
  auto tbp = local_meta_config("x", 0);
  tbp["estimator"]["type"] = "truncated_backprop";
  lopt_test::expect_config_error(resolve, tbp, "/estimator/type");
  auto no_local = local_meta_config("x", 3);
  no_local.erase("local_sgd");
  lopt_test::expect_config_error(resolve, no_local, "/lopt/worker_inputs");
}

}  // namespace

namespace {

// Label-skewed shards: disjoint, covering the split, skewed for small alpha and near-uniform for
// large alpha; local-SGD runs read them and text tasks refuse them.
TEST(DirichletShards, SkewGrowsAsAlphaShrinks) {
  lopt::MlpConfig c = tiny_mlp();
  lopt::MlpTask task(c);
  const auto& source = dynamic_cast<const lopt::ImageSource&>(*task.data());
  auto skew = [&](double alpha) {
    const auto& parts = source.dirichlet_partition(lopt::Split::train, lopt::Shard{0, 5, alpha, 3});
    EXPECT_EQ(parts.size(), 5u);
    auto all = torch::cat(parts);
    EXPECT_EQ(all.numel(), source.num_examples(lopt::Split::train));
    EXPECT_EQ(std::get<0>(torch::_unique(all)).numel(), all.numel());  // disjoint
    double top = 0;  // mean over workers of the largest class fraction
    const auto& y = source.dataset().train_y;
    for (const auto& p : parts) {
      if (p.numel() == 0) { top += 1.0 / 5; continue; }
      auto counts = torch::bincount(y.index_select(0, p), {}, source.dataset().num_classes).to(torch::kFloat64);
      top += (counts.max() / counts.sum()).item<double>() / 5;
    }
    return top;
  };
  const double skewed = skew(0.05), uniform = skew(1000.0);
  // IID-like parts have about the overall class frequencies; Dirichlet(0.05) parts are dominated by few classes.
  EXPECT_GT(skewed, uniform + 0.2) << "skewed " << skewed << " uniform " << uniform;
  // A worker's batches come from its part only.
  auto gen = lopt::make_generator(1);
  const lopt::Shard s{2, 5, 0.05, 3};
  const auto& mine = source.dirichlet_partition(lopt::Split::train, s)[2];
  if (mine.numel() > 0) {
    auto b = source.sample(lopt::Split::train, 50, gen, s);
    auto allowed = source.dataset().train_x.index_select(0, mine);
    for (int i = 0; i < 5; ++i)
      EXPECT_TRUE((allowed - b.at("x")[i]).abs().sum(1).min().item<double>() == 0.0);
  }
  auto cfg = local_train_config("", {{"type", "sgd"}, {"lr", 1.0}});
  cfg["local_sgd"]["dirichlet_alpha"] = 0.3;
  auto res = lopt::run_train(cfg, lopt::ProgressMode::quiet);
  EXPECT_EQ(res.train_loss.size(), 30u);
  cfg["local_sgd"]["dirichlet_alpha"] = -1;
  lopt_test::expect_config_error([](const nlohmann::json& j) { lopt::resolve_train_config(j); }, cfg, "/local_sgd/dirichlet_alpha");
}

}  // namespace
