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

// Global reparameterisation (task augmentation): the task is evaluated at w * s from w0 / s, so the
// loss at init is the plain task's, and gradients are s times the plain task's at w * s — through
// loss_and_metrics (autograd) and the closed-form population backward alike.
TEST(Reparam, LossMatchesAndGradientsScale) {
  nlohmann::json cfg = {{"type", "mlp"}, {"width", 16}, {"depth", 2}, {"batch_size", 8}, {"image_size", 8},
                        {"dataset", "synthetic"}, {"parametrization", {{"type", "sp"}}}};
  auto plain = lopt::make_task(cfg);
  for (double s : {1e-3, 7.0, 1e3}) {
    auto rcfg = cfg;
    rcfg["reparam_scale"] = s;
    auto task = lopt::make_task(rcfg);
    EXPECT_EQ(task->hyperparams().at("reparam_scale").get<double>(), s);
    auto g1 = lopt::make_generator(3), g2 = lopt::make_generator(3);
    auto w = task->init(g1), w0 = plain->init(g2);
    EXPECT_LT((w.tensors[0] * s - w0.tensors[0]).abs().max().item<double>(), 1e-6 * (1 + w0.tensors[0].abs().max().item<double>()));
    auto gb = lopt::make_generator(4);
    auto batch = task->sample_batch(lopt::Split::train, gb);
    for (auto& t : w.tensors) t.requires_grad_(true);
    for (size_t i = 0; i < w0.tensors.size(); ++i) w0.tensors[i] = (w.tensors[i].detach() * s).requires_grad_(true);
    auto l = task->loss(w, batch), l0 = plain->loss(w0, batch);
    EXPECT_NEAR(l.item<double>(), l0.item<double>(), 1e-5 * std::abs(l0.item<double>()));
    auto gr = torch::autograd::grad({l}, w.tensors), gr0 = torch::autograd::grad({l0}, w0.tensors);
    for (size_t i = 0; i < gr.size(); ++i)
      EXPECT_LT((gr[i] - gr0[i] * s).abs().max().item<double>(), 1e-4 * (gr0[i] * s).abs().max().item<double>() + 1e-30)
          << "scale " << s << " tensor " << i;
    // The population path: [1, ...] stacked members.
    lopt::ParamSet stacked = w;
    for (auto& t : stacked.tensors) t = t.detach().unsqueeze(0);
    const auto pb = lopt::Batch::stack({batch});
    std::vector<torch::Tensor> pg;
    auto pl = task->population_loss_and_grads(stacked, pb, &pg);
    EXPECT_NEAR(pl[0].item<double>(), l0.item<double>(), 1e-5 * std::abs(l0.item<double>()));
    for (size_t i = 0; i < pg.size(); ++i)
      EXPECT_LT((pg[i][0] - gr0[i] * s).abs().max().item<double>(), 1e-4 * (gr0[i] * s).abs().max().item<double>() + 1e-30);
  }
  auto bad = [](const nlohmann::json& c) { lopt::make_task(c); };
  auto neg = cfg;
  neg["reparam_scale"] = -1;
  lopt_test::expect_config_error(bad, neg, "/task/reparam_scale");
}

// The family's options: datasets drawn from a list, a log-uniform reparam_scale per task; without
// them a family samples the tasks it always did (the same draws from the generator).
TEST(MlpFamily, DatasetsAndReparamScaleRange) {
  nlohmann::json base = {{"type", "mlp_family"}, {"widths", {16, 32}}, {"depths", {1, 2}}, {"image_sizes", {8}},
                         {"dataset", "synthetic"}};
  auto single = base;
  single.erase("dataset");
  single["datasets"] = {"synthetic"};
  auto f0 = lopt::make_task_family(base), f1 = lopt::make_task_family(single);
  auto g0 = lopt::make_generator(9), g1 = lopt::make_generator(9);
  for (int i = 0; i < 5; ++i) EXPECT_EQ(f0->sample(g0), f1->sample(g1));

  auto aug = base;
  aug["reparam_scale_range"] = {1e-3, 1e3};
  auto fa = lopt::make_task_family(aug);
  auto ga = lopt::make_generator(9);
  double lo = 1e9, hi = 0;
  for (int i = 0; i < 200; ++i) {
    const auto t = fa->sample(ga);
    const double s = t.at("reparam_scale");
    lo = std::min(lo, s);
    hi = std::max(hi, s);
    EXPECT_TRUE(s >= 1e-3 && s <= 1e3);
  }
  EXPECT_LT(lo, 1e-2);  // log-uniform: both decades' ends are reached
  EXPECT_GT(hi, 1e2);
  EXPECT_EQ(fa->hyperparams().at("reparam_scale_range"), nlohmann::json({1e-3, 1e3}));

  auto make = [](const nlohmann::json& c) { lopt::make_task_family(c); };
  for (const auto& range : {nlohmann::json{1e3, 1e-3}, nlohmann::json{0, 1}, nlohmann::json{2, 2}, nlohmann::json{1}}) {
    auto b = base;
    b["reparam_scale_range"] = range;
    lopt_test::expect_config_error(make, b, "/task_family/reparam_scale_range");
  }
  auto both = base;
  both["datasets"] = {"synthetic"};
  lopt_test::expect_config_error(make, both, "/task_family/dataset");
  auto unknown = single;
  unknown["datasets"] = {"synthetic", "cifar10"};
  lopt_test::expect_config_error(make, unknown, "/task_family/datasets");
  // dataset_per_slot: slot k takes datasets[k % n]; the other draws are sample()'s.
  auto per_slot = single;
  per_slot["datasets"] = {"synthetic", "fashion_mnist"};
  per_slot["dataset_per_slot"] = true;
  auto fs = lopt::make_task_family(per_slot);
  for (int64_t k = 0; k < 6; ++k) {
    auto g1 = lopt::make_generator(20 + k), g2 = lopt::make_generator(20 + k);
    auto t = fs->sample_for_slot(g1, k), u = fs->sample(g2);
    EXPECT_EQ(t.at("dataset"), k % 2 == 0 ? "synthetic" : "fashion_mnist");
    t.erase("dataset");
    u.erase("dataset");
    EXPECT_EQ(t, u);
  }
  auto lonely = base;
  lonely["dataset_per_slot"] = true;
  lopt_test::expect_config_error(make, lonely, "/task_family/dataset_per_slot");
  auto digits16 = single;
  digits16["datasets"] = {"digits"};
  digits16["image_sizes"] = {16};
  lopt_test::expect_config_error(make, digits16, "/task_family/image_sizes");
}
