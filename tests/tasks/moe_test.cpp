// Mixture-of-experts layers: dropless routing (every token reaches exactly its k experts), gates,
// the auxiliary and z losses against their closed forms, Sinkhorn balancing, router gradients, and a
// tiny MoE language model that learns a tiny text.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <filesystem>
#include <fstream>

#include "common/errors.h"
#include "common/rng.h"
#include "experiments/train.h"
#include "tasks/moe.h"
#include "tasks/transformer.h"
#include "support.h"

namespace {

TEST(Moe, TopKGatesAreRenormalisedAndEveryTokenReachesItsExperts) {
  auto gen = lopt::make_generator(1);
  const int64_t N = 13, d = 6, E = 5, h = 7;
  auto x = torch::randn({N, d}, gen).to(torch::kFloat64);
  auto w1 = torch::randn({E, h, d}, gen).to(torch::kFloat64), b1 = torch::randn({E, h}, gen).to(torch::kFloat64);
  auto w2 = torch::randn({E, d, h}, gen).to(torch::kFloat64), b2 = torch::randn({E, d}, gen).to(torch::kFloat64);
  auto logits = torch::randn({N, E}, gen).to(torch::kFloat64);
  for (int64_t k : {1, 2, 3}) {
    auto r = lopt::route_topk(logits, k);
    ASSERT_EQ(r.experts.sizes(), torch::IntArrayRef({N, k}));
    auto probs = torch::softmax(logits, -1);
    for (int64_t t = 0; t < N; ++t) {
      // The k chosen experts are distinct and are the k most probable.
      auto chosen = std::get<0>(r.experts[t].sort());
      EXPECT_EQ(std::get<0>(torch::_unique(chosen)).numel(), k);
      EXPECT_GE(probs[t].index_select(0, r.experts[t]).min().item<double>(), std::get<0>(probs[t].topk(k)).min().item<double>());
    }
    if (k > 1) EXPECT_LT((r.gates.sum(1) - 1).abs().max().item<double>(), 1e-12);
    else EXPECT_LT((r.gates.squeeze(1) - std::get<0>(probs.max(1))).abs().max().item<double>(), 1e-12);
    // Dropless: the layer equals, token by token, the gated sum over its k experts.
    auto y = lopt::experts_forward(x, r, w1, b1, w2, b2);
    for (int64_t t = 0; t < N; ++t) {
      auto ref = torch::zeros({d}, torch::kFloat64);
      for (int64_t j = 0; j < k; ++j) {
        const int64_t e = r.experts[t][j].item<int64_t>();
        auto hid = torch::matmul(w1[e], x[t]) + b1[e];
        hid = 0.5 * hid * (1 + torch::erf(hid / std::sqrt(2.0)));
        ref += r.gates[t][j] * (torch::matmul(w2[e], hid) + b2[e]);
      }
      EXPECT_LT((y[t] - ref).abs().max().item<double>(), 1e-10) << "token " << t << " k " << k;
    }
  }
}

TEST(Moe, AuxAndZLossesEqualTheirClosedForms) {
  // Hand-made: 4 tokens, 2 experts, top-1.
  auto logits = torch::tensor({{2.0, 0.0}, {1.0, 0.0}, {0.0, 3.0}, {0.5, 0.0}}, torch::kFloat64);
  auto r = lopt::route_topk(logits, 1);
  // Tokens 0, 1, 3 -> expert 0, token 2 -> expert 1: f = (3/4, 1/4).
  auto p = torch::softmax(logits, -1).mean(0);
  const double expected = 2 * (0.75 * p[0].item<double>() + 0.25 * p[1].item<double>());
  EXPECT_NEAR(lopt::load_balancing_loss(logits, r.experts).item<double>(), expected, 1e-12);
  double z = 0;
  for (auto row : {std::pair<double, double>{2, 0}, {1, 0}, {0, 3}, {0.5, 0}}) {
    const double lse = std::log(std::exp(row.first) + std::exp(row.second));
    z += lse * lse / 4;
  }
  EXPECT_NEAR(lopt::router_z_loss(logits).item<double>(), z, 1e-12);
  // Perfect balance with uniform probabilities gives exactly 1.
  auto uniform = torch::zeros({4, 2}, torch::kFloat64);
  auto idx = torch::tensor({{0}, {1}, {0}, {1}}, torch::kInt64);
  EXPECT_NEAR(lopt::load_balancing_loss(uniform, idx).item<double>(), 1.0, 1e-12);
  // MRI: the fraction of tokens whose set includes the busiest expert.
  EXPECT_NEAR(lopt::expert_token_fractions(r.experts, 2).max().item<double>(), 0.75, 1e-12);
}

TEST(Moe, SinkhornBalancesSkewedLogitsWhereTopKDoesNot) {
  auto gen = lopt::make_generator(3);
  const int64_t N = 512, E = 8;
  // Expert 0 is favoured by every token.
  auto logits = torch::randn({N, E}, gen);
  logits.select(1, 0).add_(3.0);
  for (int64_t k : {1, 2}) {
    auto plain = lopt::route_topk(logits, k);
    auto sk = lopt::route_sinkhorn(logits, k, /*training=*/true);
    const double plain_max = lopt::expert_token_fractions(plain.experts, E).max().item<double>();
    const double sk_max = lopt::expert_token_fractions(sk.experts, E).max().item<double>();
    const double uniform = static_cast<double>(k) / E;
    EXPECT_GT(plain_max, 0.8) << "k " << k;
    EXPECT_LT(sk_max, 1.6 * uniform) << "k " << k;
    // Gates come from the raw logits: sigmoid for k = 1, softmax of the chosen experts for k > 1.
    auto act = k == 1 ? torch::sigmoid(logits) : torch::softmax(logits, -1);
    EXPECT_TRUE(torch::allclose(sk.gates, act.gather(1, sk.experts)));
    // In evaluation the same router is plain top-k of that activation.
    auto ev = lopt::route_sinkhorn(logits, k, /*training=*/false);
    EXPECT_TRUE(torch::equal(std::get<0>(ev.experts.sort(1)), std::get<0>(std::get<1>(act.topk(k)).sort(1))));
  }
  // The scaled matrix has near-uniform row and column sums.
  auto s = lopt::sinkhorn(logits);
  EXPECT_LT((s.sum(0) * E - 1).abs().max().item<double>(), 1e-2);
}

/// A folder with one small text file of repeated phrases.
std::string tiny_text(const lopt_test::TempDir& dir) {
  const std::string root = dir.path("text");
  std::filesystem::create_directories(root);
  std::ofstream out(root + "/a");
  for (int i = 0; i < 300; ++i) out << "the cat sat on the mat. the dog ran home.\n";
  return root;
}

nlohmann::json moe_task(const std::string& data, const nlohmann::json& moe) {
  return {{"type", "transformer_lm"}, {"width", 32}, {"depth", 2}, {"heads", 2}, {"context", 16}, {"batch_size", 8},
          {"data_dir", data},         {"moe", moe},  {"parametrization", {{"type", "sp"}}}};
}

TEST(Moe, RouterGetsGradientsAndAuxLossJoinsTheTrainingLoss) {
  lopt_test::TempDir dir;
  for (const std::string router : {"aux", "sinkhorn"}) {
    SCOPED_TRACE(router);
    auto cfg = lopt::TransformerConfig::from_json(
        moe_task(tiny_text(dir), {{"experts", 4}, {"top_k", 2}, {"shared_experts", 1}, {"router", router}}));
    lopt::TransformerLmTask task(cfg);
    auto gen = lopt::make_generator(2);
    auto p = task.init(gen).detached_requiring_grad();
    auto batch = task.sample_batch(lopt::Split::train, gen);
    auto out = task.loss_and_metrics(p, batch);
    for (const char* m : {"aux_loss", "z_loss", "mri", "mri_0", "mri_1"}) EXPECT_TRUE(out.metrics.count(m)) << m;
    const double data_loss = out.metrics.at("loss").item<double>();
    const double extra = out.loss.item<double>() - data_loss;
    if (router == "aux")
      EXPECT_NEAR(extra, 0.01 * out.metrics.at("aux_loss").item<double>() + 0.001 * out.metrics.at("z_loss").item<double>(), 1e-5);
    else
      EXPECT_EQ(extra, 0.0);
    auto grads = torch::autograd::grad({out.loss}, p.tensors);
    for (size_t k = 0; k < p.size(); ++k) {
      if (p.info[k].name.find("router") != std::string::npos) {
        EXPECT_GT(grads[k].abs().sum().item<double>(), 0.0) << p.info[k].name;
      }
    }
    // Shapes: experts stacked in front; the FLOP-matched expert width is mlp_ratio * width / (k + shared).
    for (size_t k = 0; k < p.size(); ++k) {
      if (p.info[k].name == "block_0.moe.experts.fc_1.weight") {
        EXPECT_EQ(p.tensors[k].sizes(), torch::IntArrayRef({4, 4 * 32 / 3, 32}));
      }
    }
  }
  lopt_test::expect_config_error([](const nlohmann::json& j) { lopt::TransformerConfig::from_json(j); },
                                 moe_task("x", {{"experts", 4}, {"top_k", 5}}), "/task/moe/top_k");
  lopt_test::expect_config_error([](const nlohmann::json& j) { lopt::TransformerConfig::from_json(j); },
                                 moe_task("x", {{"experts", 4}, {"router", "hash"}}), "/task/moe/router");
}

TEST(Moe, TinyMoeLearnsATinyText) {
  lopt_test::TempDir dir;
  for (const std::string router : {"aux", "sinkhorn"}) {
    SCOPED_TRACE(router);
    nlohmann::json cfg = {{"task", moe_task(tiny_text(dir), {{"experts", 4}, {"top_k", 1}, {"router", router}})},
                          {"optimizer", {{"type", "adam"}, {"lr", 3e-3}}},
                          {"steps", 150},
                          {"eval_every", 150},
                          {"eval_examples", 30}};
    auto res = lopt::run_train(cfg, lopt::ProgressMode::quiet);
    // ln 256 = 5.55 nats at the start; a phrase repeated 300 times is nearly memorised.
    EXPECT_GT(res.train_loss.front(), 4.5);
    EXPECT_LT(res.final_train_loss(), 1.0);
    EXPECT_LT(res.eval_metrics.at("loss").back(), 1.0);
    EXPECT_GE(res.eval_metrics.at("mri").back(), 0.25 - 1e-9);  // at least 1/E
  }
}

}  // namespace

namespace {

// Replay: a fixed share of every batch from the old corpus, total unchanged, resumable by position.
TEST(Replay, MixtureGivesTheReplayShareOfEveryBatch) {
  lopt_test::TempDir dir;
  const std::string a = dir.path("a"), b = dir.path("b");
  std::filesystem::create_directories(a);
  std::filesystem::create_directories(b);
  {
    std::ofstream fa(a + "/x"), fb(b + "/x");
    for (int i = 0; i < 4000; ++i) fa << "aaaa";  // corpus A: only 'a'
    for (int i = 0; i < 4000; ++i) fb << "bbbb";  // corpus B: only 'b'
  }
  auto task_cfg = moe_task(a, {});
  task_cfg.erase("moe");
  task_cfg["batch_size"] = 10;
  task_cfg["replay_corpus"] = "english";
  task_cfg["replay_data_dir"] = b;
  task_cfg["replay_fraction"] = 0.3;
  lopt::TransformerLmTask task(lopt::TransformerConfig::from_json(task_cfg));
  lopt::BatchStream s(task.data(), lopt::Split::train, 10, 4);
  for (int i = 0; i < 3; ++i) {
    auto tok = s.next().at("tokens");
    ASSERT_EQ(tok.size(0), 10);
    // 0.3 * 10 = 3 rows of B, last; 7 of A.
    EXPECT_TRUE((tok.narrow(0, 0, 7) == 'a').all().item<bool>());
    EXPECT_TRUE((tok.narrow(0, 7, 3) == 'b').all().item<bool>());
  }
  auto st = s.state();
  auto next = s.next().at("tokens");
  lopt::BatchStream again(task.data(), lopt::Split::train, 10, 4);
  again.restore(st);
  EXPECT_TRUE(torch::equal(again.next().at("tokens"), next));
  // Evaluation reads the current corpus only.
  auto ev = task.data()->examples(lopt::Split::validation, 0, 2).at("tokens");
  EXPECT_TRUE((ev == 'a').all().item<bool>());
  task_cfg["replay_fraction"] = 1.0;
  lopt_test::expect_config_error([](const nlohmann::json& j) { lopt::TransformerConfig::from_json(j); }, task_cfg,
                                 "/task/replay_fraction");
  task_cfg["replay_fraction"] = 0.1;
  task_cfg["replay_corpus"] = "";
  lopt_test::expect_config_error([](const nlohmann::json& j) { lopt::TransformerConfig::from_json(j); }, task_cfg,
                                 "/task/replay_corpus");
}

}  // namespace
