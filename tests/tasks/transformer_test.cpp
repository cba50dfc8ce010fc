// The byte-level transformer LM and the text data source.
#include "tasks/transformer.h"

#include <gtest/gtest.h>

#include <cmath>
#include <fstream>

#include "common/errors.h"
#include "common/rng.h"
#include "experiments/coord_check.h"
#include "experiments/train.h"
#include "meta/meta_trainer.h"
#include "experiments/h5_writer.h"
#include "optimizers/optimizer.h"
#include "support.h"

namespace {

/// A folder of small "fortune" files: lines of pseudo-words, 40 KiB in all.
std::string write_corpus(const lopt_test::TempDir& dir) {
  const std::string root = dir.path("corpus");
  std::filesystem::create_directories(root);
  auto gen = lopt::make_generator(7);
  const char* words[] = {"the ", "cat ", "sat ", "on ", "a ", "mat ", "and ", "dog ", "ran ", "far ", "away ", "home "};
  for (int f = 0; f < 4; ++f) {
    std::ofstream out(root + "/file" + std::to_string(f));
    for (int i = 0; i < 1800; ++i) {
      out << words[torch::randint(12, {1}, gen).item<int64_t>()];
      if (i % 9 == 8) out << "\n%\n";
    }
  }
  std::ofstream(root + "/file0.dat") << "index file, skipped";
  return root;
}

nlohmann::json tiny_lm(const std::string& dir, const std::string& param = "mup", int64_t width = 16) {
  return {{"type", "transformer_lm"}, {"width", width}, {"depth", 2},      {"heads", 2},
          {"context", 12},            {"batch_size", 3}, {"data_dir", dir},
          {"parametrization", {{"type", param}, {"base_width", 16}}}};
}

/// An independent float64 forward: per-head loops, rotary embeddings as explicit 2-D rotations,
/// masking by -inf assignment, LayerNorm from its definition.
torch::Tensor reference_logits(const lopt::ParamSet& p, const torch::Tensor& tokens, int64_t width, int64_t depth,
                               int64_t heads, double attn_scale, double readout_mult) {
  auto d = [&](size_t i) { return p.tensors[i].to(torch::kFloat64); };
  const int64_t T = tokens.size(1), dh = width / heads, half = dh / 2;
  auto ln = [](const torch::Tensor& x, const torch::Tensor& g, const torch::Tensor& b) {
    auto mu = x.mean(-1, true);
    auto var = (x - mu).pow(2).mean(-1, true);
    return (x - mu) / (var + 1e-5).sqrt() * g + b;
  };
  auto gelu = [](const torch::Tensor& x) { return 0.5 * x * (1 + torch::erf(x / std::sqrt(2.0))); };
  auto rotate = [&](const torch::Tensor& x) {  // x [B, T, dh]
    auto out = x.clone();
    for (int64_t t = 0; t < T; ++t)
      for (int64_t i = 0; i < half; ++i) {
        const double a = static_cast<double>(t) * std::pow(10000.0, -2.0 * static_cast<double>(i) / static_cast<double>(dh));
        auto x1 = x.select(1, t).select(1, i), x2 = x.select(1, t).select(1, i + half);
        out.select(1, t).select(1, i).copy_(x1 * std::cos(a) - x2 * std::sin(a));
        out.select(1, t).select(1, i + half).copy_(x1 * std::sin(a) + x2 * std::cos(a));
      }
    return out;
  };
  auto h = d(0).index_select(0, tokens.reshape({-1})).reshape({tokens.size(0), T, width});
  size_t i = 1;
  for (int64_t l = 0; l < depth; ++l, i += 10) {
    auto a = ln(h, d(i), d(i + 1));
    auto qkv = a.matmul(d(i + 2).t());
    std::vector<torch::Tensor> outs;
    for (int64_t hd = 0; hd < heads; ++hd) {
      auto q = rotate(qkv.narrow(2, hd * dh, dh)), k = rotate(qkv.narrow(2, width + hd * dh, dh));
      auto v = qkv.narrow(2, 2 * width + hd * dh, dh);
      auto s = q.matmul(k.transpose(1, 2)) * attn_scale;
      for (int64_t r = 0; r < T; ++r)
        for (int64_t c = r + 1; c < T; ++c) s.select(1, r).select(1, c).fill_(-INFINITY);
      outs.push_back(torch::softmax(s, -1).matmul(v));
    }
    h = h + torch::cat(outs, 2).matmul(d(i + 3).t());
    auto m = ln(h, d(i + 4), d(i + 5));
    h = h + gelu(m.matmul(d(i + 6).t()) + d(i + 7)).matmul(d(i + 8).t()) + d(i + 9);
  }
  h = ln(h, d(i), d(i + 1));
  return h.matmul(d(i + 2).t()) * readout_mult + d(i + 3);
}

}  // namespace

TEST(TextSource, SplitsShardsWindowsAndResumes) {
  lopt_test::TempDir dir;
  lopt::TextSourceConfig c;
  c.dir = write_corpus(dir);
  c.context = 12;
  lopt::TextSource src(c);
  const auto& corpus = src.corpus();
  EXPECT_EQ(corpus.files, 4);  // file0.dat skipped
  const int64_t total = corpus.train.numel() + corpus.validation.numel();
  EXPECT_NEAR(static_cast<double>(corpus.validation.numel()) / static_cast<double>(total), 0.1, 0.03);
  EXPECT_FALSE(src.has_split(lopt::Split::test));
  EXPECT_EQ(src.report_split(), lopt::Split::validation);
  EXPECT_THROW(src.num_examples(lopt::Split::test), lopt::ConfigError);

  // Evaluation windows overlap by one byte: together they are the validation split's prefix.
  auto ex = src.examples(lopt::Split::validation, 0, 3).at("tokens");
  ASSERT_EQ(ex.sizes(), (std::vector<int64_t>{3, 13}));
  EXPECT_TRUE(torch::equal(ex[1][0], ex[0][12]));
  EXPECT_TRUE(torch::equal(ex[2].narrow(0, 0, 13), corpus.validation.narrow(0, 24, 13).to(torch::kInt64)));

  // Shards read disjoint contiguous parts of the train split.
  auto gen = lopt::make_generator(1);
  const int64_t n = corpus.train.numel();
  for (int64_t r = 0; r < 3; ++r) {
    auto b = src.sample(lopt::Split::train, 64, gen, {r, 3}).at("tokens");
    ASSERT_EQ(b.sizes(), (std::vector<int64_t>{64, 13}));
    // Each window is a contiguous slice of the train bytes that lies inside shard r.
    for (int64_t k = 0; k < 64; k += 13) {
      bool found = false;
      for (int64_t s = r * n / 3; s + 13 <= (r + 1) * n / 3 && !found; ++s)
        found = torch::equal(corpus.train.narrow(0, s, 13).to(torch::kInt64), b[k]);
      EXPECT_TRUE(found) << "window " << k << " of shard " << r;
    }
  }

  // A BatchStream restored from its state continues with the same batches.
  auto shared = std::make_shared<lopt::TextSource>(c);
  lopt::BatchStream a(shared, lopt::Split::train, 4, 9);
  a.next();
  auto state = a.state();
  auto expect1 = a.next().at("tokens"), expect2 = a.next().at("tokens");
  lopt::BatchStream b(shared, lopt::Split::train, 4, 12345);
  b.restore(state);
  EXPECT_EQ(b.position(), 1);
  EXPECT_TRUE(torch::equal(b.next().at("tokens"), expect1));
  EXPECT_TRUE(torch::equal(b.next().at("tokens"), expect2));
}

TEST(TextSource, MissingOrEmptyCorpusNamesThePackage) {
  lopt_test::TempDir dir;
  lopt::TextSourceConfig c;
  c.corpus = "german";
  c.dir = dir.path("nowhere");
  try {
    lopt::TextSource s(c);
    FAIL() << "expected IoError";
  } catch (const lopt::IoError& e) {
    EXPECT_NE(std::string(e.what()).find("fortunes-de"), std::string::npos) << e.what();
  }
  std::filesystem::create_directories(dir.path("empty"));
  std::ofstream(dir.path("empty/x")) << "too short";
  c.corpus = "english";
  c.dir = dir.path("empty");
  try {
    lopt::TextSource s(c);
    FAIL() << "expected IoError";
  } catch (const lopt::IoError& e) {
    EXPECT_NE(std::string(e.what()).find("apt-get install fortunes"), std::string::npos) << e.what();
  }
  lopt_test::expect_config_error([](const nlohmann::json& j) { lopt::make_task(j); },
                                 {{"type", "transformer_lm"}, {"corpus", "klingon"}}, "/task/corpus");
  lopt_test::expect_config_error([](const nlohmann::json& j) { lopt::make_task(j); },
                                 {{"type", "transformer_lm"}, {"width", 30}, {"heads", 4}}, "/task/heads");
}

TEST(TransformerLm, LogitsMatchAFloat64ReferenceUnderSpAndMup) {
  lopt_test::TempDir dir;
  const auto root = write_corpus(dir);
  for (const std::string param : {"sp", "mup"}) {
    lopt::TransformerLmTask task(lopt::TransformerConfig::from_json(tiny_lm(root, param, 32)));
    auto gen = lopt::make_generator(3);
    auto p = task.init(gen);
    for (auto& t : p.tensors) t.add_(0.2 * torch::randn(t.sizes(), gen));  // nonzero readout, gains != 1
    auto tokens = task.sample_batch(lopt::Split::train, gen).at("tokens");
    auto logits = task.forward(p, tokens.narrow(1, 0, 12));
    const double dh = 16, wm = 2;  // width 32, 2 heads, base width 16
    auto ref = reference_logits(p, tokens.narrow(1, 0, 12), 32, 2, 2, param == "mup" ? 1 / dh : 1 / std::sqrt(dh),
                                param == "mup" ? 1 / wm : 1.0);
    EXPECT_LT((logits.to(torch::kFloat64) - ref).abs().max().item<double>(), 1e-4 * (1 + ref.abs().max().item<double>())) << param;
    // Causality: changing the last input token changes only the last position's logits.
    auto t2 = tokens.narrow(1, 0, 12).clone();
    t2.select(1, 11).fill_(static_cast<int64_t>('#'));
    auto l2 = task.forward(p, t2);
    EXPECT_TRUE(torch::allclose(l2.narrow(1, 0, 11), logits.narrow(1, 0, 11), 1e-5, 1e-5)) << param;
    EXPECT_FALSE(torch::allclose(l2.narrow(1, 11, 1), logits.narrow(1, 11, 1), 1e-5, 1e-5)) << param;
  }
}

TEST(TransformerLm, MupStartsUniformAndMetricsAreBitsPerByte) {
  lopt_test::TempDir dir;
  auto task = lopt::make_task(tiny_lm(write_corpus(dir)));
  auto gen = lopt::make_generator(0);
  auto p = task->init(gen);
  auto out = task->loss_and_metrics(p, task->sample_batch(lopt::Split::train, gen));
  EXPECT_NEAR(out.loss.item<double>(), std::log(256.0), 1e-5);  // zero readout: uniform over bytes
  EXPECT_NEAR(out.metrics.at("bits_per_byte").item<double>(), 8.0, 1e-4);
  EXPECT_NEAR(task->normalizer(torch::tensor({100.0})).item<double>(), 1.5 * std::log(256.0), 1e-6);
  auto m = task->evaluate(p, lopt::Split::validation, 10);
  EXPECT_NEAR(m.at("bits_per_byte"), 8.0, 1e-4);
  // The batched population loss and its gradients agree with per-member computations (nonzero
  // readouts, perturbed gains and biases).
  std::vector<lopt::Batch> bs = {task->sample_batch(lopt::Split::train, gen), task->sample_batch(lopt::Split::train, gen)};
  auto q = task->init(gen);
  for (auto& t : q.tensors) t.add_(0.1 * torch::randn(t.sizes(), gen));
  for (auto& t : p.tensors) t.add_(0.1 * torch::randn(t.sizes(), gen));
  std::vector<torch::Tensor> stacked;
  for (size_t k = 0; k < p.size(); ++k) stacked.push_back(torch::stack({p.tensors[k], q.tensors[k]}));
  const auto batch = lopt::Batch::stack(bs);
  std::vector<torch::Tensor> grads;
  auto pop = task->population_loss_and_grads(p.with_tensors(stacked), batch, &grads);
  const lopt::ParamSet* members[2] = {&p, &q};
  for (int m = 0; m < 2; ++m) {
    auto leaf = members[m]->detached_requiring_grad();
    auto loss = task->loss(leaf, bs[static_cast<size_t>(m)]);
    auto g = torch::autograd::grad({loss}, leaf.tensors);
    EXPECT_NEAR(pop[m].item<double>(), loss.item<double>(), 1e-5) << "member " << m;
    for (size_t k = 0; k < g.size(); ++k)
      EXPECT_TRUE(torch::allclose(grads[k][m], g[k], 1e-4, 1e-6)) << "member " << m << " tensor " << leaf.info[k].name;
  }
}

// Coordinate check on the transformer, widths 32 -> 512 (d_head 16 -> 256), 4 Adam steps. Under muP
// no recorded activation grows with width: embedding, block outputs and logits keep their RMS
// (measured ratios wide/narrow 0.96-1.01), and the attention logits shrink (about 0.55 after 4
// steps: q.k / d_head of independent q and k at initialisation is O(1/sqrt(d_head)); the muP
// reference, mu_transformer.py, does not zero-initialise the query). Under SP the residual stream
// and the attention logits blow up (measured ratios ~37 and ~50). A missing 1/width_mult on the
// hidden LR or 1/sqrt(d_head) attention under muP pushes the muP ratios far above 2.
TEST(CoordCheck, TransformerMupIsStableAcrossWidths) {
  lopt_test::TempDir dir;
  lopt::CoordCheckConfig c;
  c.widths = {32, 128, 512};
  c.base_width = 32;
  c.steps = 4;
  c.seeds = 2;
  c.lr = 1e-2;
  c.task = {{"type", "transformer_lm"}, {"depth", 2}, {"heads", 2}, {"context", 16}, {"batch_size", 8},
            {"data_dir", write_corpus(dir)}};
  auto r = lopt::run_coord_check(c, lopt::ProgressMode::quiet);
  const size_t sp = 0, mup = 1, narrow = 0, wide = 2;
  ASSERT_EQ(r.layers, (std::vector<std::string>{"embedding", "attn_logits_0", "block_0", "attn_logits_1", "block_1", "logits"}));
  double mup_lo = 1e9, mup_hi = 0, mup_attn_lo = 1e9, sp_block = 0, sp_attn = 0;
  for (int64_t t = 1; t <= c.steps; ++t) {
    for (size_t l = 0; l < r.layers.size(); ++l) {
      const double ratio = r.at(mup, wide, t, l) / r.at(mup, narrow, t, l);
      const bool attn = r.layers[l].rfind("attn_logits", 0) == 0;
      mup_hi = std::max(mup_hi, ratio);
      if (attn) mup_attn_lo = std::min(mup_attn_lo, ratio);
      else mup_lo = std::min(mup_lo, ratio);
    }
    sp_block = std::max(sp_block, r.at(sp, wide, t, 4) / r.at(sp, narrow, t, 4));
    sp_attn = std::max(sp_attn, r.at(sp, wide, t, 1) / r.at(sp, narrow, t, 1));
  }
  std::printf("transformer coord check: muP ratio in [%.3f, %.3f] (attention logits >= %.3f), SP block_1 ratio %.1f, "
              "SP attention logits ratio %.1f\n", mup_lo, mup_hi, mup_attn_lo, sp_block, sp_attn);
  EXPECT_GT(mup_lo, 0.75);
  EXPECT_LT(mup_hi, 1.5);
  EXPECT_GT(mup_attn_lo, 0.15);
  EXPECT_GT(sp_block, 8.0);
  EXPECT_GT(sp_attn, 8.0);
}

TEST(TransformerLm, TrainsThroughTheTrainCommandAndReportsBitsPerByte) {
  lopt_test::TempDir dir;
  auto task = tiny_lm(write_corpus(dir));
  task["batch_size"] = 8;
  const auto out = dir.path("lm.h5");
  nlohmann::json cfg = {{"task", task},
                        {"optimizer", {{"type", "muadam"}, {"lr", 1e-2}}},
                        {"steps", 80},
                        {"eval_every", 40},
                        {"eval_examples", 40},
                        {"output", out}};
  auto res = lopt::run_train(cfg, lopt::ProgressMode::quiet);
  EXPECT_EQ(res.eval_split, "validation");
  EXPECT_EQ(lopt::h5_read_string_attr(out, "report_metric"), "validation_bits_per_byte");
  const double bpb = lopt::h5_read_double_attr(out, "final_validation_bits_per_byte");
  EXPECT_NEAR(res.eval_metrics.at("bits_per_byte").front(), 8.0, 1e-3);
  // 12 words over a few letters: a model that learned anything is far below 8 bits per byte.
  EXPECT_LT(bpb, 4.0);
  EXPECT_NEAR(bpb, lopt::h5_read_double_attr(out, "final_validation_loss") / std::log(2.0), 1e-6);
}

// Meta-training on a transformer family: the truncated step's population path (default autograd
// population loss), the byte-level normaliser (losses start at ln 256 < 1.5 ln 256, so the meta-loss
// is not clipped) and both ES and truncated backprop run through the transformer.
TEST(TransformerLm, MetaTrainsOnATransformerFamily) {
  lopt_test::TempDir dir;
  const auto corpus = write_corpus(dir);
  for (const std::string est : {"pes", "truncated_backprop"}) {
    nlohmann::json cfg = {{"task_family",
                           {{"type", "transformer_lm_family"},
                            {"widths", {8, 16}},
                            {"depths", {1}},
                            {"heads", {2}},
                            {"contexts", {8}},
                            {"batch_sizes", {4}},
                            {"data_dir", corpus},
                            {"parametrization", {{"type", "mup"}, {"base_width", 8}}}}},
                          {"lopt", {{"type", "mulo"}}},
                          {"truncation", {{"type", "constant"}, {"length", 10}}},
                          {"estimator", {{"type", est}, {"std", 0.01}, {"trunc_length", 3}, {"num_tasks", 2}}},
                          {"outer", {{"lr", 1e-2}, {"warmup_steps", 1}}},
                          {"outer_steps", 3},
                          {"seed", 1},
                          {"checkpoint_every", 3},
                          {"output_dir", dir.path("meta_" + est)}};
    lopt::MetaTrainer mt(cfg);
    auto theta0 = mt.theta().clone();
    mt.run(lopt::ProgressMode::quiet);
    EXPECT_EQ(mt.step(), 3) << est;
    EXPECT_FALSE(torch::equal(theta0, mt.theta())) << est;
    ASSERT_EQ(mt.log().meta_loss.size(), 3u) << est;
    for (double l : mt.log().meta_loss) {
      EXPECT_TRUE(std::isfinite(l)) << est;
      EXPECT_GT(l, 3.0) << est;  // about ln 256 = 5.55 this early: not clipped to 0
      EXPECT_LT(l, 1.5 * std::log(256.0) - 1e-3) << est;
    }
  }
}
