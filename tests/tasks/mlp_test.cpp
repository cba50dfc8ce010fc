#include "tasks/mlp.h"

#include <gtest/gtest.h>

#include "common/errors.h"
#include "common/rng.h"
#include "optimizers/optimizer.h"
#include "support.h"

namespace {
lopt::MlpConfig small_config(const std::string& par = "mup", int64_t width = 32) {
  lopt::MlpConfig c;
  c.width = width;
  c.depth = 2;
  c.image_size = 4;
  c.batch_size = 8;
  c.dataset = "synthetic";
  c.parametrization = {{"type", par}, {"base_width", 16}, {"zero_init_readout", false}};
  if (par == "sp") c.parametrization.erase("zero_init_readout");
  return c;
}
}  // namespace

TEST(MlpTask, LossMatchesAFloat64ComputationIncludingTheMupReadoutMultiplier) {
  lopt::MlpTask task(small_config("mup", 32));
  auto gen = lopt::make_generator(0);
  auto p = task.init(gen);
  ASSERT_EQ(p.size(), 6u);
  EXPECT_EQ(p.info[0].role, lopt::ParamRole::input_weight);
  EXPECT_EQ(p.info[2].role, lopt::ParamRole::hidden_weight);
  EXPECT_EQ(p.info[4].role, lopt::ParamRole::output_weight);
  for (auto& t : p.tensors) t.add_(0.1 * torch::randn(t.sizes(), gen));  // nonzero biases too
  auto batch = task.sample_batch(lopt::Split::train, gen);
  double loss = task.loss(p, batch).item<double>();

  auto d = [&](int i) { return p.tensors[i].to(torch::kFloat64); };
  auto x = batch.at("x").to(torch::kFloat64);
  auto h = torch::relu(x.matmul(d(0).t()) + d(1));
  h = torch::relu(h.matmul(d(2).t()) + d(3));
  auto logits = h.matmul(d(4).t()) * (16.0 / 32.0) + d(5);  // width_mult = 2
  auto logp = logits - logits.logsumexp(1, true);
  double ref = -logp.gather(1, batch.at("y").unsqueeze(1)).mean().item<double>();
  EXPECT_NEAR(loss, ref, 1e-5 * std::abs(ref));
}

TEST(MlpTask, TrainsOnSyntheticDataAndEvaluates) {
  auto c = small_config("sp", 64);
  c.batch_size = 64;
  lopt::MlpTask task(c);
  auto gen = lopt::make_generator(1);
  auto opt = lopt::make_optimizer({{"type", "adam"}, {"lr", 1e-2}});
  auto state = opt->init(task.init(gen));
  double first = task.evaluate(state.params, lopt::Split::test).at("loss");
  for (int s = 0; s < 200; ++s) {
    auto p = state.params.detached_requiring_grad();
    auto loss = task.loss(p, task.sample_batch(lopt::Split::train, gen));
    opt->update_(state, torch::autograd::grad({loss}, p.tensors), loss);
  }
  auto m = task.evaluate(state.params, lopt::Split::test);
  EXPECT_LT(m.at("loss"), 0.5 * first);
  EXPECT_GT(m.at("accuracy"), 0.6);  // 10-class linear teacher, chance is 0.1
}

TEST(MlpTask, ConfigValidationNamesTheKey) {
  auto expect_path = [](const nlohmann::json& config, const std::string& path) {
    lopt_test::expect_config_error([](const nlohmann::json& j) { lopt::resolve_task_config(j); }, config, path);
  };
  expect_path({{"width", 0}}, "/task/width");
  expect_path({{"activation", "swish"}}, "/task/activation");
  expect_path({{"widht", 3}}, "/task/widht");
  expect_path({{"type", "cnn"}}, "/task/type");
  expect_path({{"parametrization", {{"type", "ntk"}}}}, "/task/parametrization/type");
  auto resolved = lopt::resolve_task_config({{"width", 96}});
  EXPECT_EQ(resolved["width"], 96);
  EXPECT_EQ(resolved["parametrization"]["type"], "mup");
  EXPECT_EQ(resolved["depth"], 2);
}

TEST(MlpFamily, SamplingIsSeededAndStaysInRange) {
  nlohmann::json fam = {{"type", "mlp_family"}, {"width_range", {32, 512}}, {"depths", {1, 2, 3}},
                        {"batch_sizes", {16, 32}}, {"image_sizes", {8, 16}}, {"activations", {"relu", "tanh"}},
                        {"dataset", "synthetic"}};
  auto family = lopt::make_task_family(fam);
  auto g1 = lopt::make_generator(3), g2 = lopt::make_generator(3);
  std::set<int64_t> depths;
  for (int i = 0; i < 50; ++i) {
    auto a = family->sample(g1), b = family->sample(g2);
    EXPECT_EQ(a, b);
    EXPECT_GE(a["width"].get<int64_t>(), 32);
    EXPECT_LE(a["width"].get<int64_t>(), 512);
    depths.insert(a["depth"].get<int64_t>());
  }
  EXPECT_EQ(depths.size(), 3u);
  auto task = lopt::make_task(family->sample(g1));
  EXPECT_EQ(task->hyperparams()["type"], "mlp");
  EXPECT_THROW(lopt::make_task_family({{"widths", nlohmann::json::array()}}), lopt::ConfigError);
  EXPECT_THROW(lopt::make_task_family({{"depths", {0}}}), lopt::ConfigError);
}

// The MLP's written-out population backward equals autograd's (float64, muP multipliers, relu and
// tanh, depth 1 and 3), and its losses equal population_loss.
TEST(MlpTask, PopulationGradsMatchAutograd) {
  for (const std::string act : {"relu", "tanh"}) {
    for (int64_t depth : {1, 3}) {
      auto task = lopt::make_task({{"type", "mlp"}, {"width", 12}, {"depth", depth}, {"batch_size", 5}, {"image_size", 4},
                                   {"dataset", "synthetic"}, {"activation", act},
                                   {"parametrization", {{"type", "mup"}, {"base_width", 4}}}});
      auto gen = lopt::make_generator(4);
      const int64_t P = 3;
      std::vector<std::vector<torch::Tensor>> members(P);
      for (int64_t p = 0; p < P; ++p) members[static_cast<size_t>(p)] = task->init(gen).tensors;
      auto proto = task->init(gen);
      std::vector<torch::Tensor> stacked;
      for (size_t i = 0; i < proto.size(); ++i) {
        std::vector<torch::Tensor> parts;
        for (int64_t p = 0; p < P; ++p) parts.push_back(members[static_cast<size_t>(p)][i] + 0.3 * torch::randn(proto.tensors[i].sizes(), gen));
        stacked.push_back(torch::stack(parts).to(torch::kFloat64));
      }
      std::vector<lopt::Batch> bs;
      for (int64_t p = 0; p < P; ++p) bs.push_back(task->sample_batch(lopt::Split::train, gen));
      auto batch = lopt::Batch::stack(bs);
      batch.tensors["x"] = batch.at("x").to(torch::kFloat64);
      auto params = proto.with_tensors(stacked);
      std::vector<torch::Tensor> manual, reference;
      auto loss = task->population_loss_and_grads(params, batch, &manual);
      auto ref_loss = task->lopt::Task::population_loss_and_grads(params, batch, &reference);
      const std::string where = act + " depth " + std::to_string(depth);
      EXPECT_TRUE(torch::allclose(loss, ref_loss, 1e-12, 1e-12)) << where;
      ASSERT_EQ(manual.size(), reference.size());
      for (size_t i = 0; i < manual.size(); ++i)
        EXPECT_TRUE(torch::allclose(manual[i], reference[i], 1e-10, 1e-12)) << where << " tensor " << i << "\n"
                                                                            << (manual[i] - reference[i]).abs().max();
    }
  }
}
