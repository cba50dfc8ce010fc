// Continual pre-training: phases switch the data, re-warming / infinite schedules shape the LR,
// forgetting and routing change are logged, and a stopped run resumes exactly.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <filesystem>
#include <fstream>

#include "common/errors.h"
#include "experiments/cpt.h"
#include "experiments/h5_writer.h"
#include "support.h"

namespace {

std::string corpus(const lopt_test::TempDir& dir, const std::string& name, const char* text) {
  const std::string root = dir.path(name);
  std::filesystem::create_directories(root);
  std::ofstream out(root + "/a");
  for (int i = 0; i < 800; ++i) out << text;
  return root;
}

nlohmann::json cpt_config(const lopt_test::TempDir& dir, const std::string& schedule) {
  return {{"task", {{"type", "transformer_lm"}, {"width", 16}, {"depth", 2}, {"heads", 2}, {"context", 16}, {"batch_size", 4},
                    {"moe", {{"experts", 4}, {"top_k", 1}, {"router", "sinkhorn"}}},
                    {"parametrization", {{"type", "sp"}}}}},
          {"optimizer", {{"type", "adamw"}, {"lr", 3e-3}, {"weight_decay", 0.0}}},
          {"schedule", {{"type", schedule}, {"warmup_fraction", 0.1}, {"final_fraction", 0.1}}},
          {"phases", {{{"corpus", "english"}, {"steps", 30}, {"data_dir", corpus(dir, "en", "the cat sat on the mat. ")}},
                      {{"corpus", "german"}, {"steps", 30}, {"replay_fraction", 0.25},
                       {"data_dir", corpus(dir, "de", "die katze sass auf der matte. ")}}}},
          {"eval_every", 10},
          {"eval_examples", 8},
          {"checkpoint_every", 7},
          {"output", dir.path("cpt_" + schedule + ".h5")}};
}

TEST(Cpt, PhasesScheduleForgettingAndRoutingChange) {
  lopt_test::TempDir dir;
  for (const std::string schedule : {"rewarm", "infinite"}) {
    SCOPED_TRACE(schedule);
    auto cfg = cpt_config(dir, schedule);
    auto summary = lopt::run_cpt(cfg, lopt::ProgressMode::quiet);
    const std::string out = cfg["output"];
    auto lr = lopt::h5_read_doubles(out, "train/lr");
    ASSERT_EQ(lr.size(), 60u);
    if (schedule == "rewarm") {
      // Re-warming: phase 1 starts again from a small LR and rises to the peak.
      EXPECT_LT(lr[30], 0.5 * 3e-3);
      EXPECT_NEAR(*std::max_element(lr.begin() + 30, lr.end()), 3e-3, 1e-9);
      EXPECT_NEAR(lr[29], 0.1 * 3e-3, 2e-4);
    } else {
      // Infinite: phase 1 continues at the constant LR (half the peak), then anneals.
      EXPECT_NEAR(lr[30], 0.5 * 3e-3, 1e-9);
      EXPECT_LT(lr[59], 0.5 * 3e-3);
    }
    // Both corpora evaluated; forgetting is the rise of the english loss through phase 1.
    const double en_end0 = lopt::h5_read_double_attr(out, "phase0_end_english_loss");
    const double en_final = lopt::h5_read_double_attr(out, "final_english_loss");
    EXPECT_NEAR(lopt::h5_read_double_attr(out, "forgetting_english"), en_final - en_end0, 1e-12);
    EXPECT_NEAR(summary["forgetting_english"].get<double>(), en_final - en_end0, 1e-12);
    auto de = lopt::h5_read_doubles(out, "eval/german_loss");
    EXPECT_LT(de.back(), de.front());
    // Routing change: logged from phase 1 on, a fraction of tokens.
    auto change = lopt::h5_read_doubles(out, "eval/routing_change_0");
    auto phase = lopt::h5_read_doubles(out, "eval/phase");
    bool any = false;
    for (size_t i = 0; i < change.size(); ++i) {
      if (phase[i] < 1) continue;
      any = true;
      EXPECT_GE(change[i], 0.0);
      EXPECT_LE(change[i], 1.0);
    }
    EXPECT_TRUE(any);
    auto mri = lopt::h5_read_doubles(out, "eval/english_mri_1");
    for (double m : mri) EXPECT_GE(m, 0.25 - 1e-9);
    EXPECT_GT(lopt::h5_read_double_attr(out, "tokens_per_s_phase1"), 0.0);
  }
}

TEST(Cpt, StoppedRunsResumeExactly) {
  lopt_test::TempDir dir;
  auto straight = cpt_config(dir, "infinite");
  straight["output"] = dir.path("straight.h5");
  lopt::run_cpt(straight, lopt::ProgressMode::quiet);
  auto split = cpt_config(dir, "infinite");
  split["output"] = dir.path("split.h5");
  // Stops mid-phase 0 (after a periodic checkpoint), at the phase boundary, and mid-phase 1.
  for (int64_t stop : {10, 30, 45}) {
    auto r = lopt::run_cpt(split, lopt::ProgressMode::quiet, /*resume=*/stop != 10, stop);
    EXPECT_EQ(r["stopped_at"].get<int64_t>(), stop);
  }
  lopt::run_cpt(split, lopt::ProgressMode::quiet, true);
  auto a = lopt::h5_read_doubles(dir.path("straight.h5"), "train/loss");
  auto b = lopt::h5_read_doubles(dir.path("split.h5"), "train/loss");
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) EXPECT_EQ(a[i], b[i]) << "step " << i;
  auto ra = lopt::h5_read_doubles(dir.path("straight.h5"), "eval/routing_change_1");
  auto rb = lopt::h5_read_doubles(dir.path("split.h5"), "eval/routing_change_1");
  ASSERT_EQ(ra.size(), rb.size());
  for (size_t i = 0; i < ra.size(); ++i)  // NaN before phase 1 (no reference routing yet)
    EXPECT_TRUE((std::isnan(ra[i]) && std::isnan(rb[i])) || ra[i] == rb[i]) << i;
  // A changed config does not resume another run's checkpoint; a bad key names itself.
  auto bad = cpt_config(dir, "rewarm");
  bad["phases"][1]["replay_fraction"] = 1.5;
  lopt_test::expect_config_error([](const nlohmann::json& j) { lopt::resolve_cpt_config(j); }, bad, "/phases/1/replay_fraction");
  bad = cpt_config(dir, "cosine");
  lopt_test::expect_config_error([](const nlohmann::json& j) { lopt::resolve_cpt_config(j); }, bad, "/schedule/type");
}

// A finished result is never rerun over without --overwrite: --resume on it says "nothing to resume"
// for the same config and names the first difference for another (it used to rerun and replace it).
TEST(Cpt, ResumeOnAFinishedResultRefusesNamingTheDifference) {
  lopt_test::TempDir dir;
  auto cfg = lopt::resolve_cpt_config(cpt_config(dir, "infinite"));
  const std::string out = cfg["output"];
  {
    lopt::H5Writer w(out);
    w.attr("config", cfg.dump(2));
    w.commit();
  }
  const auto message = [&](const nlohmann::json& c, bool resume, bool overwrite) {
    try {
      lopt::check_cpt_output(out, c, resume, overwrite);
    } catch (const lopt::UsageError& e) {
      return std::string(e.what());
    }
    return std::string("(accepted)");
  };
  EXPECT_NE(message(cfg, false, false).find("pass --overwrite"), std::string::npos);
  EXPECT_NE(message(cfg, true, false).find("nothing to resume"), std::string::npos);
  auto other = cfg;
  other["optimizer"]["lr"] = 1e-2;
  const auto m = message(other, true, false);
  EXPECT_NE(m.find("/optimizer/lr: 0.003 there, 0.01 now"), std::string::npos) << m;
  EXPECT_EQ(message(other, true, true), "(accepted)");
  EXPECT_EQ(lopt::config_difference(cfg, cfg), "");
}

}  // namespace
