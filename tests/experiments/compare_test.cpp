#include "experiments/compare.h"

#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>

#include "common/config.h"
#include "common/errors.h"
#include "experiments/h5_writer.h"
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
          {"contenders",
           {{{"name", "SGD"}, {"optimizer", {{"type", "sgd"}}}, {"lr_grid", {1e-5, 1e-1, 1e6}}},
            {{"name", "muLO"}, {"optimizer", {{"type", "mulo"}}}}}},
          {"output_dir", dir + "/runs"},
          {"summary", dir + "/compare.h5"}};
}
}  // namespace

TEST(Compare, PicksTheBestLearningRateOverSeedsAndResumes) {
  lopt_test::TempDir dir;
  auto rows = lopt::run_compare(spec(dir.path()), lopt::ProgressMode::quiet);
  ASSERT_EQ(rows.size(), 2u);
  // 1e-5 barely moves, 1e6 diverges (counted as +inf): 0.1 must win.
  EXPECT_EQ(rows[0]["best_lr"].get<double>(), 1e-1);
  auto grid_loss = lopt::h5_read_doubles(dir.path("compare.h5"), "c0/lr_grid_mean_final_train_loss");
  ASSERT_EQ(grid_loss.size(), 3u);
  EXPECT_LT(grid_loss[1], grid_loss[0]);
  EXPECT_TRUE(std::isinf(grid_loss[2]));
  // The best LR's mean equals the mean of its per-seed figures.
  auto per_seed = lopt::h5_read_doubles(dir.path("compare.h5"), "c0/final_train_loss");
  ASSERT_EQ(per_seed.size(), 2u);
  EXPECT_NEAR(rows[0]["mean_final_train_loss"].get<double>(), 0.5 * (per_seed[0] + per_seed[1]), 1e-12);
  EXPECT_EQ(lopt::h5_read_doubles(dir.path("compare.h5"), "c1/train_loss_mean").size(), 30u);
  EXPECT_TRUE(rows[1]["best_lr"].is_null());
  // Every run file exists; a second call reuses them (same figures).
  EXPECT_TRUE(std::filesystem::exists(dir.path("runs/SGD_lr1_seed6.h5")));
  auto again = lopt::run_compare(spec(dir.path()), lopt::ProgressMode::quiet);
  EXPECT_EQ(again[0]["mean_final_train_loss"], rows[0]["mean_final_train_loss"]);
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
  c["contenders"][1]["optimizer"]["checkpoint"] = "/nonexistent/theta.safetensors";
  expect_path(c, "/contenders/1/optimizer/checkpoint");
}
