// The role-routed composite optimizer: routing, shared lr / schedule, equivalence with Muon (which
// routes internally), bad routes.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "common/config.h"
#include "optimizers/composite.h"
#include "support.h"

using lopt::json;

namespace {
lopt::ParamSet params() {
  auto gen = torch::make_generator<at::CPUGeneratorImpl>(5);
  lopt::ParamSet p;
  p.tensors = {torch::randn({6, 10}, gen), torch::randn({10, 10}, gen), torch::randn({10}, gen), torch::randn({3, 10}, gen)};
  p.info = {{"in", lopt::ParamRole::input_weight, 6, 10, 1.0},
            {"hidden", lopt::ParamRole::hidden_weight, 10, 10, 1.0},
            {"bias", lopt::ParamRole::bias, 1, 10, 1.0},
            {"readout", lopt::ParamRole::output_weight, 10, 3, 1.0}};
  return p;
}

std::vector<torch::Tensor> grads(int64_t step) {
  auto gen = torch::make_generator<at::CPUGeneratorImpl>(50 + step);
  std::vector<torch::Tensor> g;
  for (const auto& t : params().tensors) g.push_back(torch::randn(t.sizes(), gen));
  return g;
}

const json kSchedule = {{"type", "warmup_cosine"}, {"warmup_steps", 1}, {"total_steps", 4}};
}  // namespace

// Muon routes hidden matrices to itself and the rest to AdamW at lr x ratio: the composite built
// from a matrices-only Muon and an AdamW route with lr_mult = ratio is the same optimizer (and hands
// the same directions to Newton–Schulz).
TEST(Composite, MuonPlusAdamwRoutesEqualMuon) {
  const double lr = 0.05, ratio = 0.2, wd = 0.1;
  auto muon = lopt::make_optimizer(
      {{"type", "muon"}, {"lr", lr}, {"adamw_lr_ratio", ratio}, {"weight_decay", wd}, {"schedule", kSchedule}});
  auto comp = lopt::make_optimizer(
      {{"type", "composite"},
       {"lr", lr},
       {"schedule", kSchedule},
       {"routes",
        {{{"roles", {"hidden_weight"}}, {"optimizer", {{"type", "muon"}, {"weight_decay", wd}}}},
         {{"optimizer", {{"type", "adamw"}, {"beta2", 0.95}, {"eps", 1e-10}, {"weight_decay", wd}}}, {"lr_mult", ratio}}}}});
  auto a = muon->init(params().clone()), b = comp->init(params().clone()), c = comp->init(params().clone());
  for (int64_t s = 0; s < 3; ++s) {
    // The diagnostics' pre-orthogonalisation directions come from the route that steps each tensor.
    const auto da = muon->pre_orthogonal_directions(a, grads(s), torch::tensor(1.0));
    const auto db = comp->pre_orthogonal_directions(b, grads(s), torch::tensor(1.0));
    ASSERT_EQ(db.size(), da.size());
    EXPECT_TRUE(da[1].defined());  // the hidden matrix
    for (size_t i = 0; i < da.size(); ++i) {
      ASSERT_EQ(db[i].defined(), da[i].defined()) << "step " << s << " tensor " << i;
      if (da[i].defined()) {
        EXPECT_LT(lopt_test::max_rel_error(db[i], da[i], 1e-3), 1e-6) << "step " << s << " tensor " << i;
      }
    }
    a = muon->update(a, grads(s), torch::tensor(1.0));
    b = comp->update(b, grads(s), torch::tensor(1.0));
    comp->update_(c, grads(s), torch::tensor(1.0));
  }
  EXPECT_EQ(b.step, 3);
  EXPECT_EQ(c.step, 3);
  for (size_t i = 0; i < a.params.size(); ++i) {
    EXPECT_LT(lopt_test::max_rel_error(b.params.tensors[i], a.params.tensors[i], 1e-3), 1e-6) << "tensor " << i;
    EXPECT_TRUE(torch::equal(c.params.tensors[i], b.params.tensors[i])) << "update_ vs update, tensor " << i;
  }
  const auto hidden = params().info[1], bias = params().info[2];
  EXPECT_DOUBLE_EQ(comp->lr_at(2, hidden), muon->lr_at(2, hidden));
  EXPECT_DOUBLE_EQ(comp->lr_at(2, bias), muon->lr_at(2, bias));
  // hyperparams() rebuilds it.
  EXPECT_EQ(lopt::make_optimizer(comp->hyperparams())->hyperparams(), comp->hyperparams());
}

// Routing by rank, with each route's own lr multiplier, equals the inner optimizers run separately
// on their tensors; a learned optimizer can be a route.
TEST(Composite, RoutesByRankWithTheirOwnLrMultipliers) {
  auto comp = lopt::make_optimizer({{"type", "composite"},
                                    {"lr", 0.1},
                                    {"routes",
                                     {{{"rank", "matrix"}, {"optimizer", {{"type", "sgd"}, {"momentum", 0.9}}}, {"lr_mult", 2.0}},
                                      {{"rank", "vector"}, {"optimizer", {{"type", "adam"}}}}}}});
  auto sgd = lopt::make_optimizer({{"type", "sgd"}, {"momentum", 0.9}, {"lr", 0.2}});
  auto adam = lopt::make_optimizer({{"type", "adam"}, {"lr", 0.1}});
  auto p = params();
  lopt::ParamSet mats, vecs;
  for (size_t i : {0, 1, 3}) mats.tensors.push_back(p.tensors[i].clone()), mats.info.push_back(p.info[i]);
  vecs.tensors.push_back(p.tensors[2].clone());
  vecs.info.push_back(p.info[2]);
  auto s = comp->init(p.clone()), sm = sgd->init(mats), sv = adam->init(vecs);
  for (int64_t k = 0; k < 3; ++k) {
    const auto g = grads(k);
    comp->update_(s, g, torch::tensor(1.0));
    sgd->update_(sm, {g[0], g[1], g[3]}, torch::tensor(1.0));
    adam->update_(sv, {g[2]}, torch::tensor(1.0));
  }
  EXPECT_TRUE(torch::equal(s.params.tensors[0], sm.params.tensors[0]));
  EXPECT_TRUE(torch::equal(s.params.tensors[1], sm.params.tensors[1]));
  EXPECT_TRUE(torch::equal(s.params.tensors[3], sm.params.tensors[2]));
  EXPECT_TRUE(torch::equal(s.params.tensors[2], sv.params.tensors[0]));

  auto mixed = lopt::make_optimizer({{"type", "composite"},
                                     {"routes",
                                      {{{"roles", {"hidden_weight"}}, {"optimizer", {{"type", "mulo"}, {"theta_seed", 1}}}},
                                       {{"optimizer", {{"type", "adamw"}}}, {"lr_mult", 1e-3}}}}});
  auto m = mixed->init(params().clone());
  mixed->update_(m, grads(0), torch::tensor(1.0));
  for (size_t i = 0; i < m.params.size(); ++i) EXPECT_FALSE(torch::equal(m.params.tensors[i], params().tensors[i])) << i;
}

TEST(Composite, BadRoutesNameTheKey) {
  auto make = [](const json& c) { lopt::make_optimizer(c); };
  const json adamw = {{"type", "adamw"}};
  lopt_test::expect_config_error(make, {{"type", "composite"}}, "/optimizer/routes");
  lopt_test::expect_config_error(make, {{"type", "composite"}, {"routes", json::array()}}, "/optimizer/routes");
  lopt_test::expect_config_error(make, {{"type", "composite"}, {"routes", {{{"roles", {"hiden_weight"}}, {"optimizer", adamw}}}}},
                                 "/optimizer/routes/0/roles");
  lopt_test::expect_config_error(make, {{"type", "composite"}, {"routes", {{{"rank", "tensor"}, {"optimizer", adamw}}}}},
                                 "/optimizer/routes/0/rank");
  lopt_test::expect_config_error(make, {{"type", "composite"}, {"routes", {{{"optimizer", {{"type", "adamw"}, {"lr", 0.1}}}}}}},
                                 "/optimizer/routes/0/optimizer/lr");
  lopt_test::expect_config_error(make, {{"type", "composite"}, {"routes", {{{"optimizer", {{"type", "adamx"}}}}}}},
                                 "/optimizer/routes/0/optimizer/type");
  lopt_test::expect_config_error(make, {{"type", "composite"}, {"routes", {{{"optimizer", adamw}, {"lr_mult", -1}}}}},
                                 "/optimizer/routes/0/lr_mult");
  lopt_test::expect_config_error(make, {{"type", "composite"}, {"routes", {{{"optimizer", adamw}, {"roels", {"bias"}}}}}},
                                 "/optimizer/routes/0/roels");
  // A tensor no route takes: the error names the tensor and the routes key when the optimizer meets the model.
  auto only_matrices = lopt::make_optimizer({{"type", "composite"}, {"routes", {{{"rank", "matrix"}, {"optimizer", adamw}}}}});
  try {
    only_matrices->init(params());
    FAIL() << "expected a ConfigError";
  } catch (const lopt::ConfigError& e) {
    EXPECT_EQ(e.path(), "/optimizer/routes");
    EXPECT_NE(std::string(e.what()).find("'bias'"), std::string::npos) << e.what();
  }
}
