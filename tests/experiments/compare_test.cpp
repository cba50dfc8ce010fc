#include "experiments/compare.h"

#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <map>
#include <set>

#include "common/config.h"
#include "common/errors.h"
#include "common/rng.h"
#include "experiments/h5_writer.h"
#include "optimizers/small_fc_lopt/small_fc_lopt.h"
#include "support.h"

using lopt::json;

namespace {
json spec(const std::string& dir) {
  return {{"base",
           {{"task", {{"width", 16}, {"depth", 2}, {"batch_size", 32}, {"image_size", 4}, {"dataset", "synthetic"}}},
            {"steps", 30},
            {"eval_every", 30},
            {"eval_examples", 200}}},
          {"seeds", {5, 6}},
          {"tuning_seeds", {1, 2}},
          {"contenders",
           {{{"name", "SGD"}, {"optimizer", {{"type", "sgd"}}}, {"lr_grid", {1e-5, 1e-1, 1e6}}},
            {{"name", "muLO"}, {"optimizer", {{"type", "mulo"}}}}}},
          {"output_dir", dir + "/runs"},
          {"summary", dir + "/compare.h5"}};
}
int64_t reused(const std::string& dir) { return lopt_test::h5_int_attr(dir + "/compare.h5", "runs_reused"); }

/// spec(dir) whose learned contender (muLO) loads dir/theta.safetensors; retrain() writes another theta there.
struct SpecWithTheta {
  explicit SpecWithTheta(const std::string& dir) : path(dir + "/theta.safetensors"), spec_json(spec(dir)) {
    retrain();
    spec_json["contenders"][1]["optimizer"]["checkpoint"] = path;
  }
  void retrain() { lo->save(path, lo->init_theta(gen)); }
  std::unique_ptr<lopt::SmallFcLopt> lo = lopt::make_small_fc_lopt({{"type", "mulo"}});
  at::Generator gen = lopt::make_generator(3);
  std::string path;
  json spec_json;
};
}  // namespace

// Baselines are tuned (LR x schedule) on the tuning seeds and reported on the others.
TEST(Compare, TunesOnTuningSeedsAndReportsHeldOutSeeds) {
  lopt_test::TempDir dir;
  auto rows = lopt::run_compare(spec(dir.path()), lopt::ProgressMode::quiet);
  ASSERT_EQ(rows.size(), 2u);
  // 1e-5 barely moves, 1e6 diverges (scores +inf): 0.1 must win, with one of the two default schedules.
  EXPECT_EQ(rows[0]["best_lr"].get<double>(), 1e-1);
  EXPECT_EQ(rows[0]["grid_extensions"].get<int>(), 0);
  auto tune_lr = lopt::h5_read_doubles(dir.path("compare.h5"), "c0/tune_lr");
  auto tune_score = lopt::h5_read_doubles(dir.path("compare.h5"), "c0/tune_score");
  ASSERT_EQ(tune_score.size(), 6u);  // 3 LRs x 2 schedules
  for (size_t k = 0; k < tune_lr.size(); ++k) {
    if (tune_lr[k] == 1e6) {
      EXPECT_TRUE(std::isinf(tune_score[k]));
    }
    if (tune_lr[k] == 1e-5) {
      EXPECT_GT(tune_score[k], rows[0]["tuning_score"].get<double>());
    }
  }
  // Tuning files use the tuning seeds, report files the report seeds, and only the chosen config.
  EXPECT_TRUE(std::filesystem::exists(dir.path("runs/SGD_tune0_seed1.h5")));
  EXPECT_TRUE(std::filesystem::exists(dir.path("runs/SGD_seed6.h5")));
  EXPECT_FALSE(std::filesystem::exists(dir.path("runs/SGD_tune0_seed5.h5")));
  auto report_cfg = json::parse(lopt::h5_read_string_attr(dir.path("runs/SGD_seed5.h5"), "config"));
  EXPECT_EQ(report_cfg["optimizer"]["lr"].get<double>(), 1e-1);
  EXPECT_EQ(report_cfg["seed"].get<uint64_t>(), 5u);
  // Mean and sample std of the per-seed figures.
  auto per_seed = lopt::h5_read_doubles(dir.path("compare.h5"), "c0/final_train_loss");
  ASSERT_EQ(per_seed.size(), 2u);
  EXPECT_NEAR(rows[0]["mean_final_train_loss"].get<double>(), 0.5 * (per_seed[0] + per_seed[1]), 1e-12);
  EXPECT_NEAR(rows[0]["std_final_train_loss"].get<double>(), std::abs(per_seed[0] - per_seed[1]) / std::sqrt(2.0), 1e-12);
  EXPECT_EQ(lopt::h5_read_doubles(dir.path("compare.h5"), "c1/train_loss_mean").size(), 30u);
  EXPECT_TRUE(rows[1]["best_lr"].is_null());
  EXPECT_FALSE(std::filesystem::exists(dir.path("runs/muLO_tune0_seed1.h5")));  // learned: no tuning
}

// A run is reused only when its resolved config and inputs are unchanged: changing one contender's
// config or its checkpoint's content re-runs exactly that contender's runs.
TEST(Compare, ReusesExactlyTheRunsWhoseConfigAndInputsAreUnchanged) {
  lopt_test::TempDir dir;
  SpecWithTheta theta(dir.path());
  const auto& s = theta.spec_json;
  lopt::run_compare(s, lopt::ProgressMode::quiet);
  const int64_t total = lopt_test::h5_int_attr(dir.path("compare.h5"), "runs");
  EXPECT_EQ(total, 12 + 2 + 2);  // 6 candidates x 2 tuning seeds, 2 report runs each
  EXPECT_EQ(reused(dir.path()), 0);
  lopt::run_compare(s, lopt::ProgressMode::quiet);
  EXPECT_EQ(reused(dir.path()), total);
  // Another lr for the learned optimizer: its 2 report runs.
  auto s2 = s;
  s2["contenders"][1]["optimizer"]["lr"] = 0.5;
  lopt::run_compare(s2, lopt::ProgressMode::quiet);
  EXPECT_EQ(reused(dir.path()), total - 2);
  // Same path, new theta: its 2 report runs again.
  theta.retrain();
  lopt::run_compare(s2, lopt::ProgressMode::quiet);
  EXPECT_EQ(reused(dir.path()), total - 2);
  // A longer run changes every config; --fresh ignores old files.
  lopt::run_compare(s2, lopt::ProgressMode::quiet, /*fresh=*/true);
  EXPECT_EQ(reused(dir.path()), 0);
  auto s3 = s2;
  s3["base"]["steps"] = 31;
  lopt::run_compare(s3, lopt::ProgressMode::quiet);
  EXPECT_EQ(reused(dir.path()), 0);
}

// --only adds a contender to a finished comparison without the others' run files: their rows and
// groups are kept from the summary, which is refused when it no longer describes them.
TEST(Compare, OnlyRunsTheNamedContendersAndKeepsTheOthersRows) {
  lopt_test::TempDir dir;
  SpecWithTheta theta(dir.path());
  const auto& s = theta.spec_json;
  const auto before = lopt::run_compare(s, lopt::ProgressMode::quiet);
  const auto tune_score = lopt::h5_read_doubles(dir.path("compare.h5"), "c0/tune_score");
  EXPECT_EQ(lopt::h5_read_string_attr(dir.path("compare.h5"), "inputs", "c0"), "");  // no checkpoint
  EXPECT_EQ(lopt::h5_read_string_attr(dir.path("compare.h5"), "inputs", "c1").size(), 16u);
  // The run files are gone (another machine); a third contender is added in front and run alone.
  std::filesystem::remove_all(dir.path("runs"));
  auto s2 = s;
  s2["contenders"] = json::array({{{"name", "muLO2"}, {"optimizer", {{"type", "mulo"}, {"theta_seed", 4}}}},
                                  s["contenders"][0], s["contenders"][1]});
  EXPECT_EQ(lopt::compare_carry_over(s2, {"muLO2"}), (std::vector<std::string>{"SGD", "muLO"}));
  const auto rows = lopt::run_compare(s2, lopt::ProgressMode::quiet, false, {"muLO2"});
  ASSERT_EQ(rows.size(), 3u);
  EXPECT_EQ(lopt_test::h5_int_attr(dir.path("compare.h5"), "runs"), 2);  // muLO2's two report runs
  EXPECT_FALSE(std::filesystem::exists(dir.path("runs/SGD_tune0_seed1.h5")));
  EXPECT_TRUE(std::filesystem::exists(dir.path("runs/muLO2_seed5.h5")));
  for (size_t k = 0; k < 2; ++k) {
    auto kept = rows[k + 1];
    EXPECT_TRUE(kept.value("carried_over", false));
    kept.erase("carried_over");
    EXPECT_EQ(kept, before[k]);
  }
  EXPECT_FALSE(rows[0].contains("carried_over"));
  EXPECT_EQ(lopt::h5_read_string_attr(dir.path("compare.h5"), "name", "c1"), "SGD");
  EXPECT_EQ(lopt::h5_read_doubles(dir.path("compare.h5"), "c1/tune_score"), tune_score);
  EXPECT_EQ(lopt::h5_read_doubles(dir.path("compare.h5"), "c2/final_train_loss"),
            (std::vector<double>{before[1]["final_train_loss"][0], before[1]["final_train_loss"][1]}));
  EXPECT_EQ(json::parse(lopt::h5_read_string_attr(dir.path("compare.h5"), "carried_over")), json({"SGD", "muLO"}));
  EXPECT_FALSE(std::filesystem::exists(dir.path("compare.h5.carry.tmp")));
  // Kept again on a second merge (the kept groups keep their fingerprints).
  EXPECT_EQ(lopt::compare_carry_over(s2, {"muLO2"}).size(), 2u);

  auto expect_usage_error = [](const std::function<void()>& call, const std::string& part) {
    try {
      call();
      ADD_FAILURE() << "accepted; expected: " << part;
    } catch (const lopt::UsageError& e) {
      EXPECT_NE(std::string(e.what()).find(part), std::string::npos) << e.what();
    }
  };
  auto expect_refused = [&](const json& c, const std::vector<std::string>& only, const std::string& part) {
    expect_usage_error([&] { lopt::compare_carry_over(c, only); }, part);
  };
  expect_refused(s2, {"Muon"}, "--only Muon: the comparison has no contender of that name (it has muLO2, SGD, muLO)");
  auto c = s2;
  c["base"]["steps"] = 31;
  expect_refused(c, {"muLO2"}, "another comparison (/base/steps: 30 there, 31 now)");
  c = s2;
  c["seeds"] = {5, 7};
  expect_refused(c, {"muLO2"}, "/seeds/1: 6 there, 7 now");
  c = s2;
  c["contenders"][1]["lr_grid"] = {1e-5, 1e-1};
  expect_refused(c, {"muLO2"}, "SGD ran with another config in " + dir.path("compare.h5"));
  expect_refused(c, {"muLO2"}, "add --only SGD to run it");
  EXPECT_TRUE(lopt::compare_carry_over(c, {"muLO2", "SGD"}) == std::vector<std::string>{"muLO"});
  c = s2;
  c["contenders"].push_back({{"name", "muLO3"}, {"optimizer", {{"type", "mulo"}}}});
  expect_refused(c, {"muLO2"}, "muLO3 has no row in");
  expect_refused(c, {"muLO2"}, "or --leave-out muLO3");
  // Left out, muLO3 neither runs nor blocks the others' rows; the config itself is not changed.
  EXPECT_TRUE(lopt::compare_carry_over(lopt::leave_out_contenders(c, {"muLO3"}), {"muLO2"}) ==
              (std::vector<std::string>{"SGD", "muLO"}));
  EXPECT_EQ(c["contenders"].size(), 4u);
  auto expect_left_out_refused = [&](const std::vector<std::string>& names, const std::string& part) {
    expect_usage_error([&] { lopt::leave_out_contenders(c, names); }, part);
  };
  expect_left_out_refused({"Muon"}, "--leave-out Muon: the comparison has no contender of that name (it has muLO2, SGD, muLO, muLO3)");
  expect_left_out_refused({"muLO2", "SGD", "muLO", "muLO3"}, "every contender of the comparison was left out");
  theta.retrain();
  expect_refused(s2, {"muLO2"}, "muLO's checkpoint changed since");
  c = s2;
  c["summary"] = dir.path("none.h5");
  expect_refused(c, {"muLO2"}, "does not exist");
  // Naming every contender is a plain comparison: nothing is kept, no summary needed.
  EXPECT_TRUE(lopt::compare_carry_over(c, {"muLO2", "SGD", "muLO"}).empty());
}

// A best LR on the edge of the grid extends the grid until it is inside (or 4 extensions).
TEST(Compare, ExtendsTheGridWhenTheBestLrIsOnItsEdge) {
  lopt_test::TempDir dir;
  auto s = spec(dir.path());
  s["contenders"] = {{{"name", "SGD"}, {"optimizer", {{"type", "sgd"}}}, {"lr_grid", {1e-4, 1e-3}},
                      {"schedules", {{{"type", "constant"}}}}}};
  auto rows = lopt::run_compare(s, lopt::ProgressMode::quiet);
  const int ext = rows[0]["grid_extensions"].get<int>();
  EXPECT_GE(ext, 1);
  EXPECT_GT(rows[0]["best_lr"].get<double>(), 1e-3);
  auto tune_lr = lopt::h5_read_doubles(dir.path("compare.h5"), "c0/tune_lr");
  EXPECT_EQ(tune_lr.size(), static_cast<size_t>(2 + ext));
  EXPECT_NEAR(tune_lr[2], 1e-2, 1e-12);  // the grid's own ratio, 10x
  if (ext < 4) {
    EXPECT_FALSE(rows[0]["best_at_grid_edge"].get<bool>());
  }
}

TEST(Compare, BadSpecsNameTheKey) {
  auto expect_path = [](const json& config, const std::string& path) {
    lopt_test::expect_config_error([](const json& j) { lopt::expand_compare(j); }, config, path);
  };
  auto s = spec("/tmp/unused");
  auto c = s;
  c["contenders"][0]["lr_grid"] = {0.1, -1.0};
  expect_path(c, "/contenders/0/lr_grid");
  c = s;
  c["contenders"][1]["name"] = "SGD";
  expect_path(c, "/contenders/1/name");
  c = s;
  c["contenders"][0]["optimizer"]["type"] = "lion";
  expect_path(c, "/contenders/0/optimizer/type");
  c = s;
  c["base"]["task"]["width"] = 0;
  expect_path(c, "/base/task/width");
  c = s;
  c["seeds"] = json::array();
  expect_path(c, "/seeds");
  c = s;
  c["tuning_seeds"] = {1, 5};  // 5 is a report seed
  expect_path(c, "/tuning_seeds");
  c = s;
  c["contenders"][0]["schedules"] = {{{"type", "cosine_forever"}}};
  expect_path(c, "/contenders/0/schedules/0/type");
  c = s;
  c["contenders"][1]["schedules"] = {{{"type", "constant"}}};
  expect_path(c, "/contenders/1/schedules");
  c = s;
  c["contenders"][1]["optimizer"]["checkpoint"] = "/nonexistent/theta.safetensors";
  expect_path(c, "/contenders/1/optimizer/checkpoint");
}

// A baseline whose every candidate diverges is reported as diverged, with no learning rate.
TEST(Compare, AnAllDivergedBaselineIsReportedAsDiverged) {
  lopt_test::TempDir dir;
  auto s = spec(dir.path());
  s["contenders"] = {{{"name", "SGD"}, {"optimizer", {{"type", "sgd"}}}, {"lr_grid", {1e6, 1e7}},
                      {"schedules", {{{"type", "constant"}}}}}};
  auto rows = lopt::run_compare(s, lopt::ProgressMode::quiet);
  EXPECT_TRUE(rows[0]["best_lr"].is_null());
  EXPECT_TRUE(rows[0]["tuning_failed"].get<bool>());
  EXPECT_EQ(rows[0]["status"], "diverged");
  EXPECT_TRUE(rows[0]["mean_final_train_loss"].is_null());
  EXPECT_TRUE(rows[0]["mean_final_test_accuracy"].is_null());
  EXPECT_EQ(rows[0]["grid_extensions"].get<int>(), 0);
  // A diverged run's file has no final test figures.
  EXPECT_TRUE(std::isnan(lopt::h5_read_double_attr(dir.path("runs/SGD_tune0_seed1.h5"), "final_test_accuracy")));
}

// Local SGD baselines tune the workers' learning rate (lr_key) and extra keys such as SlowMo's
// momentum (grid); the chosen point is what the report runs use.
TEST(Compare, TunesAnyKeyWithLrKeyAndGrid) {
  lopt_test::TempDir dir;
  auto s = spec(dir.path());
  s["base"]["local_sgd"] = {{"workers", 2}, {"local_steps", 2}};
  s["base"]["steps"] = 15;
  s["contenders"] = json::array(
      {{{"name", "LocalSGD"}, {"optimizer", {{"type", "sgd"}, {"lr", 1.0}}}, {"lr_key", "local_sgd.local_lr"},
        {"lr_grid", {1e-5, 1e-1}}, {"schedules", {{{"type", "constant"}}}}},
       {{"name", "SlowMo"}, {"optimizer", {{"type", "sgd"}}}, {"lr_grid", {1e-5, 1.0}}, {"schedules", {{{"type", "constant"}}}},
        {"grid", {{"optimizer.momentum", {0.0, 0.5}}}}, {"set", {{"local_sgd.local_lr", 0.1}}}}});
  auto rows = lopt::run_compare(s, lopt::ProgressMode::quiet);
  ASSERT_EQ(rows.size(), 2u);
  EXPECT_EQ(rows[0]["lr_key"], "local_sgd.local_lr");
  auto cfg = json::parse(lopt::h5_read_string_attr(dir.path("runs/LocalSGD_seed5.h5"), "config"));
  EXPECT_EQ(cfg["local_sgd"]["local_lr"].get<double>(), rows[0]["best_lr"].get<double>());
  EXPECT_EQ(cfg["optimizer"]["lr"].get<double>(), 1.0);
  // SlowMo: 2 LRs x 2 momenta (each extended at most by the LR grid), the chosen momentum reported.
  auto points = lopt::h5_read_doubles(dir.path("compare.h5"), "c1/tune_score");
  EXPECT_GE(points.size(), 4u);
  ASSERT_TRUE(rows[1].contains("grid_choice"));
  auto slowmo = json::parse(lopt::h5_read_string_attr(dir.path("runs/SlowMo_seed6.h5"), "config"));
  EXPECT_EQ(slowmo["optimizer"]["momentum"], rows[1]["grid_choice"]["optimizer.momentum"]);
  EXPECT_EQ(slowmo["optimizer"]["lr"].get<double>(), rows[1]["best_lr"].get<double>());
  // A grid key that lr_grid already sets is refused.
  auto bad = s;
  bad["contenders"][1]["grid"] = {{"optimizer.lr", {1.0}}};
  lopt_test::expect_config_error([](const json& j) { lopt::expand_compare(j); }, bad, "/contenders/1/grid/optimizer.lr");
}

// The equal-tuning rule: a learned optimizer with an lr_grid is tuned exactly like a baseline (its
// lr multiplies its step, under each schedule), every row says how many tuning runs it got, and a
// comparison whose tuned contenders have unequal grids says so in its summary.
TEST(Compare, TunesALearnedOptimizerLikeABaselineAndRecordsTheProtocol) {
  lopt_test::TempDir dir;
  auto s = spec(dir.path());
  s["contenders"] = json::array(
      {{{"name", "SGD"}, {"optimizer", {{"type", "sgd"}}}, {"lr_grid", {1e-2, 1e-1}}},
       {{"name", "muLO"}, {"optimizer", {{"type", "mulo"}, {"theta_seed", 3}}}},
       {{"name", "muLO_tuned"}, {"optimizer", {{"type", "mulo"}, {"theta_seed", 3}}}, {"lr_grid", {0.5, 2.0}}}});
  auto rows = lopt::run_compare(s, lopt::ProgressMode::quiet);
  ASSERT_EQ(rows.size(), 3u);
  EXPECT_EQ(rows[0]["tuning_runs"].get<int64_t>(), static_cast<int64_t>(rows[0]["tuning_candidates"].get<int64_t>() * 2));
  EXPECT_GE(rows[0]["tuning_candidates"].get<int64_t>(), 4);  // 2 LRs x 2 schedules, more if extended
  EXPECT_EQ(rows[1]["tuning_runs"].get<int64_t>(), 0);
  EXPECT_EQ(rows[2]["tuning_runs"].get<int64_t>(), rows[2]["tuning_candidates"].get<int64_t>() * 2);
  // The learned optimizer's chosen multiplier and schedule are what its report runs used.
  const double m = rows[2]["best_lr"].get<double>();
  auto cfg = json::parse(lopt::h5_read_string_attr(dir.path("runs/muLO_tuned_seed5.h5"), "config"));
  EXPECT_EQ(cfg["optimizer"]["type"], "mulo");
  EXPECT_EQ(cfg["optimizer"]["lr"].get<double>(), m);
  EXPECT_EQ(rows[2]["optimizer"]["lr"].get<double>(), m);
  auto tune_cfg = json::parse(lopt::h5_read_string_attr(dir.path("runs/muLO_tuned_tune0_seed1.h5"), "config"));
  EXPECT_EQ(tune_cfg["seed"].get<uint64_t>(), 1u);
  // The untuned twin runs as shipped (lr 1, constant) and its step differs from the tuned one's
  // whenever the choice is not (1, constant): here 1 is not in the grid.
  auto untuned = json::parse(lopt::h5_read_string_attr(dir.path("runs/muLO_seed5.h5"), "config"));
  EXPECT_EQ(untuned["optimizer"]["lr"].get<double>(), 1.0);
  EXPECT_NE(m, 1.0);
  // Equal grids (2 x 2 each): the rule holds; a third value for the learned one breaks it.
  EXPECT_EQ(lopt_test::h5_int_attr(dir.path("compare.h5"), "equal_tuning"), 1);
  EXPECT_TRUE(lopt::tuning_inequalities(s).empty());
  auto unequal = s;
  unequal["contenders"][2]["lr_grid"] = {0.5, 1.0, 2.0};
  auto why = lopt::tuning_inequalities(unequal);
  ASSERT_EQ(why.size(), 1u);
  EXPECT_NE(why[0].find("muLO_tuned has 6 initial tuning candidates, SGD 4"), std::string::npos) << why[0];
  unequal["contenders"][2]["lr_grid"] = {0.5, 2.0};
  unequal["contenders"][2]["schedules"] = {{{"type", "constant"}}, {{"type", "warmup_cosine"}, {"warmup_fraction", 0.1}}};
  why = lopt::tuning_inequalities(unequal);
  ASSERT_EQ(why.size(), 1u);
  EXPECT_NE(why[0].find("other schedules"), std::string::npos) << why[0];
}

// The shipped comparisons and sweeps follow the equal-tuning rule for learned optimizers: every
// learned contender that runs as shipped has a tuned twin ("<name>_tuned"), whose initial grid has
// as many candidates as the largest grid of a hand-designed contender of the same comparison.
TEST(Compare, ShippedConfigsTuneEveryLearnedOptimizerLikeTheBaselines) {
  const std::filesystem::path root = std::filesystem::path(LOPT_TEST_DATA_DIR).parent_path().parent_path();
  const auto cwd = std::filesystem::current_path();
  std::filesystem::current_path(root);  // the configs name checkpoints relative to the repository
  struct Restore {
    std::filesystem::path p;
    ~Restore() { std::filesystem::current_path(p); }
  } restore{cwd};
  std::vector<std::pair<std::string, json>> comparisons;
  for (const auto& e : std::filesystem::directory_iterator(root / "experiments/configs")) {
    auto j = lopt::load_json_file(e.path().string());
    if (!j.contains("contenders")) continue;
    // The main job's muLO_quick is meta-trained by the main job itself under runs/ (absent in a
    // fresh clone).
    for (auto& c : j["contenders"])
      if (c["optimizer"].value("checkpoint", std::string()).rfind("runs/", 0) == 0)
        c["optimizer"]["checkpoint"] = "results/checkpoints/mulo_s/theta.safetensors";
    comparisons.emplace_back(e.path().filename().string(), j);
  }
  for (const auto& e : std::filesystem::directory_iterator(root / "experiments/sweeps")) {
    auto j = lopt::load_json_file(e.path().string());
    if (j.contains("tune")) comparisons.emplace_back(e.path().filename().string() + " /tune", j["tune"]);
  }
  int learned_checked = 0;
  for (const auto& [file, spec] : comparisons) {
    SCOPED_TRACE(file);
    std::map<size_t, size_t> candidates;  // contender -> tuning runs before any extension
    size_t seeds = spec.value("tuning_seeds", json::array({1, 2})).size();
    for (const auto& r : lopt::expand_compare(spec))
      if (r.candidate >= 0) ++candidates[r.contender];
    size_t baseline_max = 0;
    const auto& cs = spec["contenders"];
    auto learned = [](const json& opt) {
      const std::string t = opt.value("type", "");
      return (t == "mulo" || t == "small_fc_lopt") && opt.contains("checkpoint");
    };
    for (size_t i = 0; i < cs.size(); ++i)
      if (!learned(cs[i]["optimizer"])) baseline_max = std::max(baseline_max, candidates[i] / seeds);
    std::set<std::string> names;
    for (const auto& c : cs) names.insert(c["name"].get<std::string>());
    for (size_t i = 0; i < cs.size(); ++i) {
      if (!learned(cs[i]["optimizer"])) continue;
      const std::string name = cs[i]["name"];
      if (cs[i].contains("lr_grid")) {
        EXPECT_EQ(candidates[i] / seeds, baseline_max) << name << ": a tuned learned optimizer gets as many candidates as the baselines";
        ++learned_checked;
      } else if (file.find("/tune") == std::string::npos && name != "muLO_quick") {
        // (muLO_quick: the main job's 150-step demonstration of meta-training, shown untuned only to
        // keep the main job short; every other learned contender has its tuned twin.)
        EXPECT_TRUE(names.count(name + "_tuned")) << name << " runs untuned without a tuned twin";
      }
    }
  }
  EXPECT_GE(learned_checked, 10);
}

// --jobs: the runs train in child processes (`lopt train`), two at a time, and write the same files
// as in this process: the same figures, bit for bit (a diverging candidate included), and files an
// in-process comparison reuses as its own. Nothing of the children is left behind.
TEST(Compare, JobsInChildProcessesWriteTheFilesOneProcessWrites) {
  lopt_test::TempDir a, b;
  const auto here = lopt::run_compare(spec(a.path()), lopt::ProgressMode::quiet);
  lopt::TrainJobs jobs;
  jobs.jobs = 2;
  jobs.executable = LOPT_BINARY;
  const auto children = lopt::run_compare(spec(b.path()), lopt::ProgressMode::quiet, false, {}, jobs);
  ASSERT_EQ(here.size(), children.size());
  for (size_t c = 0; c < here.size(); ++c) {
    EXPECT_EQ(here[c]["final_train_loss"], children[c]["final_train_loss"]) << c;
    EXPECT_EQ(here[c]["best_lr"], children[c]["best_lr"]) << c;
  }
  const auto score_here = lopt::h5_read_doubles(a.path("compare.h5"), "c0/tune_score");
  const auto score_children = lopt::h5_read_doubles(b.path("compare.h5"), "c0/tune_score");
  ASSERT_EQ(score_here.size(), score_children.size());
  int diverged = 0;
  for (size_t k = 0; k < score_here.size(); ++k) {
    diverged += std::isinf(score_children[k]) ? 1 : 0;
    EXPECT_EQ(score_here[k], score_children[k]) << k;
  }
  EXPECT_EQ(diverged, 2);  // lr 1e6 under both schedules
  for (const auto& e : std::filesystem::directory_iterator(b.path("runs")))
    EXPECT_EQ(e.path().extension(), ".h5") << e.path();
  lopt::run_compare(spec(b.path()), lopt::ProgressMode::quiet);
  EXPECT_EQ(reused(b.path()), lopt_test::h5_int_attr(b.path("compare.h5"), "runs"));
}

// `lopt compare --jobs 2` whose binary file is gone (a rebuild replaced it) still starts its children:
// they run the parent's own binary, not whatever the path now holds.
TEST(Compare, JobsRunTheParentsBinaryAfterItsFileIsRemoved) {
  lopt_test::TempDir dir;
  auto s = spec(dir.path());
  s["contenders"] = {s["contenders"][0]};
  s["contenders"][0]["lr_grid"] = {1e-3, 1e-1};
  s["contenders"][0]["schedules"] = {{{"type", "constant"}}};
  lopt::write_text_atomic(dir.path("c.json"), s.dump());
  // The copy sits beside the binary (the temporary folder may be mounted noexec); fd 3 keeps it
  // runnable after its file is removed, and the comparison starts from that fd.
  const auto copy = std::filesystem::path(LOPT_BINARY).parent_path() / ("lopt_removed_" + std::to_string(::getpid()));
  std::filesystem::copy_file(LOPT_BINARY, copy, std::filesystem::copy_options::overwrite_existing);
  const std::string cmd = "cd " + dir.path() + " && exec 3< " + copy.string() + " && rm " + copy.string() +
                          " && /proc/self/fd/3 compare -q --jobs 2 --threads 2 --config c.json > out.txt 2>&1";
  EXPECT_EQ(lopt_test::run_shell("bash -c '" + cmd + "'"), 0) << lopt_test::read_text(dir.path("out.txt"));
  EXPECT_FALSE(std::filesystem::exists(copy));
  std::filesystem::remove(copy);
  EXPECT_GE(lopt_test::h5_int_attr(dir.path("compare.h5"), "runs"), 6);  // 2 lrs x 2 tuning seeds + 2 report seeds
}

// A child that fails (not a divergence) stops the comparison with an error naming the run, how the
// child ended and where its output is; no summary is written.
TEST(Compare, AFailedChildProcessNamesItsRunAndStops) {
  lopt_test::TempDir dir;
  lopt::TrainJobs jobs;
  jobs.jobs = 2;
  jobs.executable = "/bin/false";
  try {
    lopt::run_compare(spec(dir.path()), lopt::ProgressMode::quiet, false, {}, jobs);
    FAIL() << "a failed child must throw";
  } catch (const lopt::Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("SGD tuning lr"), std::string::npos) << msg;
    EXPECT_NE(msg.find("exit status 1"), std::string::npos) << msg;
    EXPECT_NE(msg.find(".log"), std::string::npos) << msg;
  }
  EXPECT_FALSE(std::filesystem::exists(dir.path("compare.h5")));
}
