// The optimizer registries: generated "valid:" lists, a new type as one registration, checkpoints
// refused across families, and a conformance suite every registered learned-optimizer type passes.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <filesystem>

#include "common/config.h"
#include "common/errors.h"
#include "common/registry.h"
#include "common/rng.h"
#include "meta/estimators.h"
#include "optimizers/learned_optimizer.h"
#include "optimizers/safetensors.h"
#include "optimizers/sgd.h"
#include "tasks/task.h"
#include "support.h"

using lopt::json;

namespace {
std::string config_error_message(const std::function<void()>& f) { return lopt_test::thrown_message<lopt::ConfigError>(f); }

bool contains(const std::vector<std::string>& v, const std::string& s) { return std::find(v.begin(), v.end(), s) != v.end(); }

/// Types this file registers for its own tests (the conformance suite covers the real ones).
bool registered_here(const std::string& type) { return type.rfind("test_", 0) == 0; }

lopt::ParamSet params() {
  auto gen = torch::make_generator<at::CPUGeneratorImpl>(11);
  lopt::ParamSet p;
  p.tensors = {torch::randn({8, 6}, gen) * 0.3, torch::randn({6}, gen) * 0.1, torch::randn({6, 3}, gen) * 0.3};
  p.info = {{"hidden", lopt::ParamRole::hidden_weight, 6, 8, 2.0},
            {"bias", lopt::ParamRole::bias, 1, 6, 2.0},
            {"readout", lopt::ParamRole::output_weight, 6, 3, 2.0}};
  return p;
}

std::vector<torch::Tensor> grads(int64_t step) {
  auto gen = torch::make_generator<at::CPUGeneratorImpl>(100 + step);
  std::vector<torch::Tensor> g;
  for (const auto& t : params().tensors) g.push_back(torch::randn(t.sizes(), gen) * 0.05);
  return g;
}
}  // namespace

TEST(Registry, ValidListsAreGeneratedFromTheRegisteredTypes) {
  const auto opt = lopt::optimizer_types();
  for (const char* t : {"sgd", "adam", "adamw", "muadam", "muon", "mulo", "small_fc_lopt"}) EXPECT_TRUE(contains(opt, t)) << t;
  EXPECT_TRUE(std::is_sorted(opt.begin(), opt.end()));
  for (const auto& t : lopt::learned_optimizer_types()) EXPECT_TRUE(contains(opt, t)) << "a learned type is an optimizer type: " << t;

  // The error names the key and lists exactly the registered types.
  auto msg = config_error_message([] { lopt::make_optimizer({{"type", "adamx"}}); });
  EXPECT_NE(msg.find("'/optimizer/type'"), std::string::npos) << msg;
  EXPECT_NE(msg.find("(valid: " + lopt::join_names(opt) + ")"), std::string::npos) << msg;
  msg = config_error_message([] { lopt::make_learned_optimizer({{"type", "adamw"}}, "/lopt"); });
  EXPECT_NE(msg.find("'/lopt/type'"), std::string::npos) << msg;
  EXPECT_NE(msg.find("(valid: " + lopt::join_names(lopt::learned_optimizer_types()) + ")"), std::string::npos) << msg;
  msg = config_error_message([] { lopt::EstimatorConfig::from_json({{"type", "reinforce"}}); });
  EXPECT_NE(msg.find("(valid: full_es, pes, truncated_backprop, truncated_es)"), std::string::npos) << msg;
  msg = config_error_message([] { lopt::resolve_task_config({{"type", "cnn"}}); });
  EXPECT_NE(msg.find("(valid: " + lopt::join_names(lopt::task_types()) + ")"), std::string::npos) << msg;
  lopt_test::expect_config_error([](const json& c) { lopt::make_optimizer(c); }, json{{"lr", 0.1}}, "/optimizer/type");
}

TEST(Registry, ANewOptimizerTypeIsOneRegistration) {
  // Plain SGD under another name, with its own key check: what a user adds in one file.
  lopt::register_optimizer_type("test_plain_sgd", [](const json& config, const std::string& path) -> std::unique_ptr<lopt::Optimizer> {
    lopt::ConfigReader r(config, path);
    r.require<std::string>("type");
    lopt::SgdOptions o;
    o.lr = r.get<double>("lr", 0.1);
    r.finish();
    return std::make_unique<lopt::Sgd>(o);
  });
  EXPECT_TRUE(contains(lopt::optimizer_types(), "test_plain_sgd"));
  auto opt = lopt::make_optimizer({{"type", "test_plain_sgd"}, {"lr", 0.5}});
  auto state = opt->init(params().clone());
  const auto before = state.params.tensors[0].clone();
  opt->update_(state, grads(0), torch::tensor(1.0));
  EXPECT_TRUE(torch::allclose(state.params.tensors[0], before - 0.5 * grads(0)[0]));
  lopt_test::expect_config_error([](const json& c) { lopt::make_optimizer(c); }, json{{"type", "test_plain_sgd"}, {"mom", 0.9}},
                                 "/optimizer/mom");
}

TEST(Registry, ACheckpointOfAnotherFamilyIsRefusedNamingItsType) {
  lopt_test::TempDir dir;
  // A learned-optimizer family of its own, as a Celo2 would register; its checkpoint records its type.
  lopt::register_learned_optimizer_type(
      "test_other_family", {"test_other", [](const json&, const std::string& p) { return lopt::make_learned_optimizer({{"type", "mulo"}}, p); },
                            [](const json& c, const std::string&, const std::string&) { return c; }});
  lopt::SafeTensors st;
  st.tensors["w"] = torch::zeros({2});
  st.metadata["lopt_config"] = json{{"type", "test_other_family"}}.dump();
  const auto other = dir.path("other.safetensors");
  lopt::write_safetensors(other, st);
  EXPECT_EQ(lopt::checkpoint_type(other), "test_other_family");
  auto msg = config_error_message([&] { lopt::make_optimizer({{"type", "mulo"}, {"checkpoint", other}}); });
  EXPECT_NE(msg.find("'/optimizer/type'"), std::string::npos) << msg;
  EXPECT_NE(msg.find("set \"type\": \"test_other_family\""), std::string::npos) << msg;

  // A type this build does not know at all: the error is at the checkpoint and lists what it knows.
  st.metadata["lopt_config"] = json{{"type", "celo9"}}.dump();
  const auto unknown = dir.path("unknown.safetensors");
  lopt::write_safetensors(unknown, st);
  msg = config_error_message([&] { lopt::make_optimizer({{"type", "mulo"}, {"checkpoint", unknown}}); });
  EXPECT_NE(msg.find("'/optimizer/checkpoint'"), std::string::npos) << msg;
  EXPECT_NE(msg.find("\"celo9\""), std::string::npos) << msg;

  // One family, two types (small_fc_lopt / muLO): the family check passes, the checkpoint's type
  // still decides (the config-resolution error names the override).
  auto lo = lopt::make_learned_optimizer({{"type", "mulo"}});
  auto gen = lopt::make_generator(1);
  const auto mulo = dir.path("mulo.safetensors");
  lo->save(mulo, lo->init_theta(gen));
  lopt_test::expect_config_error([](const json& c) { lopt::make_optimizer(c); },
                                 json{{"type", "small_fc_lopt"}, {"checkpoint", mulo}}, "/optimizer/type");
}

// Every registered learned-optimizer type: the three no-grad / differentiable paths agree, theta
// survives save/load exactly, the step is differentiable in theta, and hyperparams() rebuilds it.
TEST(Registry, EveryLearnedOptimizerTypeConforms) {
  int checked = 0;
  for (const auto& type : lopt::learned_optimizer_types()) {
    if (registered_here(type)) continue;
    SCOPED_TRACE(type);
    lopt_test::TempDir dir;
    auto lo = lopt::make_learned_optimizer({{"type", type}});
    EXPECT_EQ(lo->worker_inputs(), 0);
    auto gen = lopt::make_generator(7);
    const auto theta = lo->init_theta(gen);
    ASSERT_EQ(theta.numel(), lo->num_theta());

    // update (tensor ops) == update_ (the type's fast path) == update_many_ (a population of two).
    auto opt = lo->bind(theta);
    auto a = opt->init(params().clone()), b = opt->init(params().clone()), c1 = opt->init(params().clone()),
         c2 = opt->init(params().clone());
    for (int64_t s = 0; s < 3; ++s) {
      const auto g = grads(s);
      const auto loss = torch::tensor(1.0 - 0.1 * s);
      {
        torch::NoGradGuard ng;
        a = opt->update(a, g, loss);
      }
      opt->update_(b, g, loss);
      std::vector<lopt::PopulationMember> pop = {{opt.get(), &c1, g, loss}, {opt.get(), &c2, g, loss}};
      opt->update_many_(pop);
    }
    for (size_t i = 0; i < a.params.size(); ++i) {
      EXPECT_LT(lopt_test::max_rel_error(b.params.tensors[i], a.params.tensors[i], 1e-3), 1e-4) << "update_ vs update, tensor " << i;
      EXPECT_TRUE(torch::equal(c1.params.tensors[i], c2.params.tensors[i])) << "population members diverged, tensor " << i;
      EXPECT_LT(lopt_test::max_rel_error(c1.params.tensors[i], b.params.tensors[i], 1e-3), 1e-4) << "update_many_ vs update_, tensor " << i;
      EXPECT_FALSE(torch::equal(a.params.tensors[i], params().tensors[i])) << "the step did not move tensor " << i;
    }
    EXPECT_EQ(a.step, 3);

    // save / load round trip, bit-exact.
    const auto file = dir.path("theta.safetensors");
    lo->save(file, theta);
    EXPECT_TRUE(torch::equal(lo->load(file), theta));
    EXPECT_EQ(lopt::checkpoint_type(file), type);

    // d(sum of updated params)/d(theta): finite and non-zero.
    auto t = theta.detach().clone().requires_grad_(true);
    auto dopt = lo->bind(t);
    auto st = dopt->update(dopt->init(params().clone()), grads(0), torch::tensor(1.0));
    auto total = torch::zeros({}, torch::kFloat64);
    for (const auto& p : st.params.tensors) total = total + p.to(torch::kFloat64).sum();
    total.backward();
    ASSERT_TRUE(t.grad().defined());
    EXPECT_TRUE(torch::isfinite(t.grad()).all().item<bool>());
    EXPECT_GT(t.grad().abs().sum().item<double>(), 0.0);

    // hyperparams() rebuilds the same learned optimizer, and the bound one the same optimizer.
    EXPECT_EQ(lopt::make_learned_optimizer(lo->hyperparams())->hyperparams(), lo->hyperparams());
    auto seeded = lopt::make_optimizer({{"type", type}, {"theta_seed", 4}});
    auto rebuilt = lopt::make_optimizer(seeded->hyperparams());
    EXPECT_EQ(rebuilt->hyperparams(), seeded->hyperparams());
    auto s1 = seeded->init(params().clone()), s2 = rebuilt->init(params().clone());
    seeded->update_(s1, grads(1), torch::tensor(1.0));
    rebuilt->update_(s2, grads(1), torch::tensor(1.0));
    for (size_t i = 0; i < s1.params.size(); ++i) EXPECT_TRUE(torch::equal(s1.params.tensors[i], s2.params.tensors[i]));
    ++checked;
  }
  EXPECT_GE(checked, 2);
}

// export-hub takes the family from the checkpoint itself (no type assumed) and round-trips theta.
TEST(Registry, ExportHubReadsTheTypeFromTheCheckpoint) {
  lopt_test::TempDir dir;
  auto lo = lopt::make_learned_optimizer({{"type", "small_fc_lopt"}, {"hidden_size", 8}});
  auto gen = lopt::make_generator(2);
  const auto theta = lo->init_theta(gen);
  lo->save(dir.path("theta.safetensors"), theta);
  std::string out;
  ASSERT_EQ(lopt_test::run_lopt("export-hub " + dir.path("theta.safetensors") + " " + dir.path("hub"), &out), 0) << out;
  EXPECT_EQ(lopt::checkpoint_type(dir.path("hub")), "small_fc_lopt");
  EXPECT_TRUE(torch::equal(lo->load(dir.path("hub")), theta));
  // A checkpoint of a family this build does not know: exit 2, naming the type.
  lopt::SafeTensors st;
  st.tensors["w"] = torch::zeros({2});
  st.metadata["lopt_config"] = json{{"type", "celo9"}}.dump();
  lopt::write_safetensors(dir.path("celo9.safetensors"), st);
  EXPECT_EQ(lopt_test::run_lopt("export-hub " + dir.path("celo9.safetensors") + " " + dir.path("hub2"), &out), 2) << out;
  EXPECT_NE(out.find("\"celo9\""), std::string::npos) << out;
  EXPECT_FALSE(std::filesystem::exists(dir.path("hub2")));
}
