// Guards the shipped learned optimizers (results/checkpoints/*): each theta still loads with the
// config its meta-training recorded and takes steps on a task of its own meta-training family. A
// change of the theta layout, of a checkpoint's key names or of the config resolution fails here
// rather than silently in the next study.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>

#include "common/config.h"
#include "common/rng.h"
#include "experiments/h5_writer.h"
#include "experiments/train.h"
#include "tasks/task.h"
#include "support.h"

using lopt::json;

namespace {
std::string write_corpus(const std::string& root) {
  std::filesystem::create_directories(root);
  std::ofstream out(root + "/fortunes");
  for (int i = 0; i < 3000; ++i) out << (i % 7 == 0 ? "the cat sat on the mat\n%\n" : "a dog ran far away home ");
  return root;
}
}  // namespace

TEST(ShippedCheckpoints, EveryThetaLoadsAndStepsOnItsMetaTrainingTask) {
  const std::filesystem::path root = std::filesystem::path(LOPT_TEST_DATA_DIR).parent_path().parent_path();
  lopt_test::TempDir dir;
  lopt_test::write_fake_fashion_mnist(dir.path("fm"), 200, 50);
  const std::string corpus = write_corpus(dir.path("corpus"));
  int checked = 0;
  for (const auto& e : std::filesystem::directory_iterator(root / "results/checkpoints")) {
    const auto theta = e.path() / "theta.safetensors";
    if (!std::filesystem::exists(theta)) continue;
    SCOPED_TRACE(e.path().filename().string());
    const auto meta = json::parse(lopt::h5_read_string_attr((e.path() / "meta_train.h5").string(), "config"));
    auto family = lopt::make_task_family(meta.at("task_family"));
    auto gen = lopt::make_generator(5);
    json task = family->sample(gen);
    if (task.value("type", std::string("mlp")) == "transformer_lm") {
      task.erase("corpus");
      task["data_dir"] = corpus;
    } else {
      task["data_dir"] = dir.path("fm");
    }
    json cfg = {{"task", task},
                {"optimizer", {{"type", meta.at("lopt").at("type")}, {"checkpoint", theta.string()}}},
                {"steps", 4},
                {"eval_every", 4},
                {"eval_examples", 32},
                {"seed", 3}};
    if (meta.contains("local_sgd")) cfg["local_sgd"] = meta["local_sgd"];
    const auto resolved = lopt::resolve_train_config(cfg);
    // The resolved optimizer is the checkpoint's own (hidden size, decays, worker inputs of LAgg-A).
    EXPECT_EQ(resolved["optimizer"]["hidden_size"], meta["lopt"]["hidden_size"]);
    EXPECT_EQ(resolved["optimizer"].value("worker_inputs", 0), meta["lopt"].value("worker_inputs", 0));
    auto r = lopt::run_train(resolved, lopt::ProgressMode::quiet);
    ASSERT_FALSE(r.diverged);
    ASSERT_EQ(r.train_loss.size(), 4u);
    for (double l : r.train_loss) EXPECT_TRUE(std::isfinite(l));
    ASSERT_GE(r.param_norm.size(), 2u);
    EXPECT_NE(r.param_norm.front(), r.param_norm.back()) << "the learned optimizer did not move the parameters";
    ++checked;
  }
  EXPECT_GE(checked, 12);
}
