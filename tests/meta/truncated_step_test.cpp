// Truncation schedules and the learned-optimizer truncated step: resets, masks, shared data of
// antithetic members, staggered starts; MLP population loss equals the per-member loss.
#include <gtest/gtest.h>
#include <torch/torch.h>
#include <ATen/Parallel.h>

#include <cmath>
#include <set>

#include "common/config.h"
#include "common/errors.h"
#include "common/rng.h"
#include "meta/truncated_step.h"
#include "optimizers/learned_optimizer.h"
#include "tasks/data/image_dataset.h"
#include "tasks/mlp.h"
#include "tasks/task.h"
#include "support.h"

namespace {

TEST(TruncationSchedule, LogUniformStaysInRangeAndIsSeeded) {
  auto s = lopt::make_truncation_schedule({{"type", "log_uniform"}, {"min_length", 100}, {"max_length", 1000}});
  auto g1 = lopt::make_generator(4), g2 = lopt::make_generator(4);
  int below_316 = 0;
  for (int i = 0; i < 400; ++i) {
    auto a = s->sample_length(g1);
    EXPECT_EQ(a, s->sample_length(g2));
    EXPECT_GE(a, 100);
    EXPECT_LE(a, 1000);
    below_316 += a < 316 ? 1 : 0;
  }
  // log-uniform: half the mass below sqrt(100 * 1000) = 316 (binomial sd 10).
  EXPECT_NEAR(below_316, 200, 45);
  auto c = lopt::make_truncation_schedule({{"type", "constant"}, {"length", 7}});
  EXPECT_EQ(c->sample_length(g1), 7);
  auto expect_path = [](const nlohmann::json& config, const std::string& path) {
    lopt_test::expect_config_error([](const nlohmann::json& j) { lopt::make_truncation_schedule(j); }, config, path);
  };
  expect_path({{"type", "cosine"}}, "/truncation/type");
  expect_path({{"type", "constant"}}, "/truncation/length");
  expect_path({{"type", "constant"}, {"length", 0}}, "/truncation/length");
  expect_path({{"type", "log_uniform"}, {"min_length", 10}, {"max_length", 5}}, "/truncation/max_length");
}

TEST(MlpTask, PopulationLossEqualsPerMemberLoss) {
  lopt::MlpConfig c;
  c.width = 12;
  c.depth = 3;
  c.image_size = 4;
  c.batch_size = 5;
  c.dataset = "synthetic";
  c.parametrization = {{"type", "mup"}, {"base_width", 4}};  // forward multipliers != 1
  c.activation = "gelu";
  lopt::MlpTask task(c);
  std::vector<lopt::ParamSet> members;
  std::vector<lopt::Batch> bs;
  std::vector<torch::Tensor> ref;
  for (int m = 0; m < 3; ++m) {
    auto gen = lopt::make_generator(10 + m);
    auto p = task.init(gen);
    for (auto& t : p.tensors) t = t + 0.1 * torch::randn(t.sizes(), gen);  // nonzero readout
    auto b = task.sample_batch(lopt::Split::train, gen);
    ref.push_back(task.loss(p, b));
    members.push_back(p);
    bs.push_back(b);
  }
  std::vector<torch::Tensor> stacked;
  for (size_t k = 0; k < members[0].size(); ++k)
    stacked.push_back(torch::stack({members[0].tensors[k], members[1].tensors[k], members[2].tensors[k]}));
  auto pop = task.population_loss(members[0].with_tensors(stacked), lopt::Batch::stack(bs));
  ASSERT_EQ(pop.sizes(), torch::IntArrayRef({3}));
  for (int m = 0; m < 3; ++m) EXPECT_NEAR(pop[m].item<double>(), ref[m].item<double>(), 1e-5);
}

lopt::LoptTruncatedStepConfig step_config(int64_t length) {
  lopt::LoptTruncatedStepConfig sc;
  sc.task_family = {{"type", "mlp_family"}, {"widths", {8, 16}}, {"depths", {2}}, {"batch_sizes", {8}},
                    {"image_sizes", {4}}, {"dataset", "synthetic"}};
  sc.lopt = {{"type", "mulo"}};
  sc.truncation = {{"type", "constant"}, {"length", length}};
  sc.num_tasks = 4;
  return sc;
}

TEST(LoptTruncatedStep, ResetsMasksAndSharedDataOfAntitheticMembers) {
  lopt::LoptTruncatedStep step(step_config(3));
  auto gen = lopt::make_generator(0);
  auto theta = step.learned_optimizer().init_theta(gen);
  // Two members on slot 0 (same theta: they must stay identical), one on slot 1.
  auto a = step.init_state(theta, 0, 11, false);
  auto b = a.clone();
  auto c = step.init_state(theta, 1, 12, false);
  std::vector<lopt::InnerState*> ptrs = {&a, &b, &c};
  std::vector<torch::Tensor> thetas = {theta, theta, theta};
  std::vector<int64_t> tasks = {0, 0, 1};
  for (int t = 0; t < 4; ++t) {
    auto out = step.step(thetas, ptrs, tasks, 100 + t, false);
    EXPECT_EQ(out.loss[0].item<double>(), out.loss[1].item<double>()) << "step " << t;
    if (t < 3) {
      EXPECT_EQ(out.mask[0].item<double>(), 1.0);
      EXPECT_EQ(out.done[0], t == 2) << "episode of 3 steps ends with its third step";
      EXPECT_GT(out.loss[0].item<double>(), 0.0);
      EXPECT_LE(out.loss[0].item<double>(), 1.5 * std::log(10.0) + 1e-12);
    } else {
      EXPECT_TRUE(out.was_reset[0] && out.was_reset[1] && out.was_reset[2]);
      EXPECT_EQ(out.mask[0].item<double>(), 0.0) << "a reset step carries no loss";
      EXPECT_EQ(a.inner_step, 0);
      EXPECT_EQ(a.task, b.task) << "antithetic members reset to the same task";
    }
  }
  for (size_t k = 0; k < a.opt.params.size(); ++k) EXPECT_TRUE(torch::equal(a.opt.params.tensors[k], b.opt.params.tensors[k]));
  // The task-cache key travels with the task: through a reset, a clone and a checkpoint round trip.
  EXPECT_EQ(a.task_key, a.task.dump());
  EXPECT_EQ(b.task_key, b.task.dump());
  EXPECT_EQ(c.task_key, c.task.dump());
  lopt::SafeTensors saved;
  const auto meta = lopt::save_inner_states({a, c}, "inner", saved);
  const auto loaded = lopt::load_inner_states(meta, "inner", saved, "in-memory");
  ASSERT_EQ(loaded.size(), 2u);
  EXPECT_EQ(loaded[1].task, c.task);
  EXPECT_EQ(loaded[1].task_key, c.task.dump());
}

TEST(Task, PopulationKeyLeavesOutDataAndReparamScaleOnly) {
  const nlohmann::json base = {{"type", "mlp"}, {"width", 8}, {"depth", 1}, {"batch_size", 8}, {"image_size", 4},
                               {"dataset", "synthetic"}, {"parametrization", {{"type", "sp"}}}};
  const auto plain = lopt::make_task(base);
  auto scaled_cfg = base;
  scaled_cfg["reparam_scale"] = 5.0;
  const auto scaled = lopt::make_task(scaled_cfg);
  EXPECT_EQ(plain->reparam_scale(), 1.0);
  EXPECT_EQ(&plain->unscaled(), plain.get());
  EXPECT_EQ(scaled->reparam_scale(), 5.0);
  EXPECT_EQ(scaled->unscaled().reparam_scale(), 1.0);
  EXPECT_EQ(scaled->population_key(), plain->population_key());
  // Another dataset of the same input size and classes: the same key (the batch carries the data).
  auto other = lopt::MlpConfig::from_json(base, "/task");
  other.dataset = "digits";
  const lopt::MlpTask other_data(other, std::make_shared<const lopt::ImageSource>(
                                            lopt::make_synthetic_dataset(64, 16, 4, 10, 99)));
  EXPECT_EQ(other_data.population_key(), plain->population_key());
  EXPECT_NE(other_data.hyperparams(), plain->hyperparams());
  // Anything that changes the computation changes the key.
  for (const auto& [key, value] : std::vector<std::pair<std::string, nlohmann::json>>{
           {"width", 16}, {"depth", 2}, {"image_size", 8}, {"activation", "tanh"}, {"batch_size", 4}}) {
    auto c = base;
    c[key] = value;
    EXPECT_NE(lopt::make_task(c)->population_key(), plain->population_key()) << key;
  }
}

// Members whose tasks differ only in their global reparameterisation scale (the Celo2 recipe's
// augmentation) go through one stacked computation: every member's state after a few steps must
// equal the one-member-at-a-time computation (each through its own ReparamTask).
TEST(LoptTruncatedStep, StackedReparamScalesMatchOneMemberAtATime) {
  for (const char* lopt_type : {"celo2", "mulo"}) {
    auto sc = step_config(50);
    sc.task_family = {{"type", "mlp_family"}, {"widths", {8}}, {"depths", {1}}, {"batch_sizes", {8}}, {"image_sizes", {4}},
                      {"dataset", "synthetic"}, {"parametrization", {{"type", "sp"}}}, {"reparam_scale_range", {1e-2, 1e2}}};
    sc.lopt = {{"type", lopt_type}};
    auto single_cfg = sc;
    single_cfg.population = false;
    lopt::LoptTruncatedStep stacked(sc), single(single_cfg);
    auto gen = lopt::make_generator(4);
    auto theta = stacked.learned_optimizer().init_theta(gen);
    std::vector<torch::Tensor> thetas;
    std::vector<lopt::InnerState> a, b;
    std::vector<int64_t> tasks;
    for (int64_t k = 0; k < 4; ++k) {
      thetas.push_back(theta + 0.01 * torch::randn(theta.sizes(), gen));
      a.push_back(stacked.init_state(thetas.back(), k, 40 + static_cast<uint64_t>(k), false));
      b.push_back(a.back().clone());
      tasks.push_back(k);
    }
    std::set<double> scales;
    for (const auto& s : a) scales.insert(s.task.at("reparam_scale").get<double>());
    ASSERT_EQ(scales.size(), 4u) << "each task draws its own scale";
    EXPECT_EQ(stacked.task(a[0].task).population_key(), stacked.task(a[3].task).population_key());
    std::vector<lopt::InnerState*> pa, pb;
    for (size_t k = 0; k < a.size(); ++k) {
      pa.push_back(&a[k]);
      pb.push_back(&b[k]);
    }
    for (int t = 0; t < 3; ++t) {
      auto oa = stacked.step(thetas, pa, tasks, 7 + t, false);
      auto ob = single.step(thetas, pb, tasks, 7 + t, false);
      for (int64_t k = 0; k < 4; ++k)
        EXPECT_NEAR(oa.loss[k].item<double>(), ob.loss[k].item<double>(), 1e-6) << lopt_type << " step " << t;
    }
    for (size_t k = 0; k < a.size(); ++k)
      for (size_t i = 0; i < a[k].opt.params.size(); ++i)
        EXPECT_LT(lopt_test::max_rel_error(a[k].opt.params.tensors[i], b[k].opt.params.tensors[i], 1e-6), 1e-5)
            << lopt_type << " member " << k << " tensor " << i;
  }
}

TEST(LoptTruncatedStep, ThreadsSplitThePopulationWithoutChangingAnyMember) {
  // Several intra-op threads run whole task slots of the population step each (loss, gradients,
  // update); every member's state, loss, mask and reset must be bit for bit the one-thread step's.
  // Two population groups (widths 8 and 16), per-task reparameterisation scales, antithetic pairs
  // (shared slot and batch, +/- theta) and episodes of 3 steps, so resets happen on the way.
  struct Threads {
    int before = at::get_num_threads();
    explicit Threads(int n) { at::set_num_threads(n); }
    ~Threads() { at::set_num_threads(before); }
  };
  for (const char* lopt_type : {"celo2", "celo2_base", "mulo"}) {
    auto sc = step_config(3);
    sc.task_family["reparam_scale_range"] = {1e-2, 1e2};
    sc.lopt = {{"type", lopt_type}};
    sc.num_tasks = 6;
    lopt::LoptTruncatedStep one(sc), many(sc);
    auto gen = lopt::make_generator(9);
    auto theta = one.learned_optimizer().init_theta(gen);
    std::vector<torch::Tensor> thetas;
    std::vector<lopt::InnerState> a, b;
    std::vector<int64_t> tasks;
    for (int64_t k = 0; k < 6; ++k) {
      const auto eps = 0.01 * torch::randn(theta.sizes(), gen);
      a.push_back(one.init_state(theta + eps, k, 70 + static_cast<uint64_t>(k), true));
      a.push_back(a.back().clone());
      thetas.push_back(theta + eps);
      thetas.push_back(theta - eps);
      tasks.insert(tasks.end(), {k, k});
    }
    for (const auto& s : a) b.push_back(s.clone());
    std::vector<lopt::InnerState*> pa, pb;
    for (size_t k = 0; k < a.size(); ++k) {
      pa.push_back(&a[k]);
      pb.push_back(&b[k]);
    }
    int resets = 0;
    for (int t = 0; t < 5; ++t) {
      const int n = 2 + t % 2;  // 2 and 3 threads: chunks of equal and unequal size
      lopt::UnrollOut oa, ob;
      {
        Threads single(1);
        oa = one.step(thetas, pa, tasks, 30 + t, false);
      }
      {
        Threads several(n);
        ob = many.step(thetas, pb, tasks, 30 + t, false);
      }
      EXPECT_TRUE(torch::equal(oa.loss, ob.loss)) << lopt_type << " step " << t;
      EXPECT_TRUE(torch::equal(oa.mask, ob.mask)) << lopt_type << " step " << t;
      EXPECT_EQ(oa.done, ob.done) << lopt_type << " step " << t;
      EXPECT_EQ(oa.was_reset, ob.was_reset) << lopt_type << " step " << t;
      for (bool r : oa.was_reset) resets += r;
      for (size_t k = 0; k < a.size(); ++k) {
        ASSERT_EQ(a[k].task, b[k].task);
        EXPECT_EQ(a[k].inner_step, b[k].inner_step);
        EXPECT_EQ(a[k].opt.step, b[k].opt.step);
        for (size_t i = 0; i < a[k].opt.params.size(); ++i)
          EXPECT_TRUE(torch::equal(a[k].opt.params.tensors[i], b[k].opt.params.tensors[i]))
              << lopt_type << " step " << t << " member " << k << " tensor " << i;
        for (const auto& [name, v] : a[k].opt.slots)
          for (size_t i = 0; i < v.size(); ++i)
            if (v[i].defined()) {
              EXPECT_TRUE(torch::equal(v[i], b[k].opt.slots.at(name)[i])) << lopt_type << " slot " << name;
            }
      }
    }
    EXPECT_GT(resets, 0) << "the episodes must end and reset within the test";
    std::set<std::string> keys;
    for (const auto& s : a) keys.insert(one.task(s.task).population_key().dump());
    EXPECT_EQ(keys.size(), 2u) << "both widths sampled: two population groups";
  }
}

TEST(LoptTruncatedStep, StaggeredStartsSpreadOverTheEpisode) {
  lopt::LoptTruncatedStep step(step_config(1000));
  auto gen = lopt::make_generator(0);
  auto theta = step.learned_optimizer().init_theta(gen);
  std::set<int64_t> starts;
  for (int i = 0; i < 8; ++i) {
    auto s = step.init_state(theta, i, 100 + i, true);
    EXPECT_GE(s.inner_step, 0);
    EXPECT_LT(s.inner_step, s.length);
    starts.insert(s.inner_step);
  }
  EXPECT_GE(starts.size(), 7u);
  EXPECT_EQ(step.init_state(theta, 0, 5, false).inner_step, 0);
}

TEST(LoptTruncatedStep, NormaliserClipsAndReplacesNonFinite) {
  auto l = torch::tensor(std::vector<double>{-1.0, 0.5, 10.0, std::nan(""), HUGE_VAL}, torch::kFloat64);
  auto n = lopt::normalize_classifier_loss(l, 10);
  const double max = 1.5 * std::log(10.0);
  EXPECT_DOUBLE_EQ(n[0].item<double>(), 0.0);
  EXPECT_DOUBLE_EQ(n[1].item<double>(), 0.5);
  for (int i = 2; i < 5; ++i) EXPECT_DOUBLE_EQ(n[i].item<double>(), max);
}

}  // namespace
