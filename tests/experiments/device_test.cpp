// --device / "device": clear errors where CUDA is missing, and on a GPU the same training as on the
// CPU (MLP with AdamW and with muLO through the CUDA kernels; a short meta-training).
#include <gtest/gtest.h>
#include <torch/cuda.h>

#include <filesystem>
#include <fstream>

#include "common/config.h"
#include "common/device.h"
#include "common/errors.h"
#include "experiments/train.h"
#include "meta/meta_trainer.h"
#include "optimizers/kernels/lopt_gpu.h"
#include "support.h"

using json = nlohmann::json;

namespace {
bool have_gpu() {
#if defined(LOPT_TORCH_CUDA)
  return torch::cuda::is_available();
#else
  return false;
#endif
}

json meta_config(const std::string& output_dir) {
  return {{"task_family", {{"type", "mlp_family"}, {"widths", {16}}, {"depths", {1}}, {"batch_sizes", {16}}, {"image_sizes", {8}},
                           {"dataset", "synthetic"}, {"parametrization", {{"type", "mup"}, {"base_width", 16}}}}},
          {"lopt", {{"type", "mulo"}}},
          {"truncation", {{"type", "log_uniform"}, {"min_length", 10}, {"max_length", 20}}},
          {"estimator", {{"type", "pes"}, {"std", 0.01}, {"trunc_length", 5}, {"num_tasks", 2}}},
          {"outer_steps", 3}, {"checkpoint_every", 10}, {"output_dir", output_dir}};
}

json tiny(const std::string& data_dir, const json& optimizer) {
  return {{"task", {{"width", 32}, {"depth", 2}, {"batch_size", 32}, {"image_size", 8}, {"data_dir", data_dir}}},
          {"optimizer", optimizer}, {"steps", 30}, {"eval_every", 10}};
}
}  // namespace

TEST(Device, BadOrUnavailableDevicesAreConfigErrors) {
  EXPECT_EQ(lopt::parse_device("cpu", "/device"), torch::Device(torch::kCPU));
  auto message = [](const std::string& name) {
    try {
      lopt::parse_device(name, "/device");
    } catch (const lopt::ConfigError& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  EXPECT_NE(message("tpu").find("unknown device \"tpu\""), std::string::npos) << message("tpu");
  EXPECT_NE(message("cuda:x").find("GPU index must be a number"), std::string::npos) << message("cuda:x");
  if (!have_gpu()) {
    const std::string m = message("cuda");
    ASSERT_FALSE(m.empty()) << "cuda accepted without a GPU";
    EXPECT_NE(m.find("/device"), std::string::npos) << m;
#if !defined(LOPT_TORCH_CUDA)
    EXPECT_NE(m.find("CPU-only LibTorch"), std::string::npos) << m;
#endif
  } else {
    EXPECT_NE(message("cuda:999").find("CUDA device(s) visible"), std::string::npos);
  }
  // The CLI: exit code 2, one line naming the key, before any work.
  lopt_test::TempDir dir;
  lopt_test::write_fake_fashion_mnist(dir.path("fm"), 100, 20);
  std::string out;
  EXPECT_EQ(lopt_test::run_lopt("train -q --set task.data_dir=" + dir.path("fm") + " --set optimizer.type=adam --device tpu", &out), 2);
  EXPECT_NE(out.find("/device"), std::string::npos) << out;
  {
    std::ofstream f(dir.path("meta.json"));
    f << meta_config(dir.path("meta")).dump();
  }
  EXPECT_EQ(lopt_test::run_lopt("meta-train -q --config " + dir.path("meta.json") + " --device tpu", &out), 2);
  EXPECT_NE(out.find("/device"), std::string::npos) << out;
  EXPECT_FALSE(std::filesystem::exists(dir.path("meta") + "/checkpoint.safetensors"));
  // "cpu" is the default and is left out of the resolved config (older result files stay reusable).
  auto a = lopt::resolve_train_config(tiny(dir.path("fm"), {{"type", "adam"}}));
  auto cfg = tiny(dir.path("fm"), {{"type", "adam"}});
  cfg["device"] = "cpu";
  EXPECT_EQ(lopt::resolve_train_config(cfg), a);
  EXPECT_FALSE(a.contains("device"));
  EXPECT_EQ(lopt::compute_device(), torch::Device(torch::kCPU));
}

// On a GPU: the same runs as on the CPU, to float32 rounding (parameters are drawn on the host, the
// batches are the same; only the kernels differ).
TEST(Device, CudaTrainingMatchesTheCpu) {
  if (!have_gpu() || !lopt::kernels::gpu::compiled()) GTEST_SKIP() << "no CUDA device, or built without LOPT_CUDA";
  lopt_test::TempDir dir;
  lopt_test::write_fake_fashion_mnist(dir.path("fm"), 200, 50);
  for (const json& opt : {json{{"type", "adamw"}, {"lr", 3e-3}}, json{{"type", "mulo"}, {"theta_seed", 3}}}) {
    auto cpu = lopt::run_train(tiny(dir.path("fm"), opt), lopt::ProgressMode::quiet);
    auto cfg = tiny(dir.path("fm"), opt);
    cfg["device"] = "cuda";
    auto gpu = lopt::run_train(cfg, lopt::ProgressMode::quiet);
    ASSERT_EQ(cpu.train_loss.size(), gpu.train_loss.size());
    for (size_t i = 0; i < cpu.train_loss.size(); ++i)
      EXPECT_NEAR(gpu.train_loss[i], cpu.train_loss[i], 1e-3 * std::max(1.0, std::abs(cpu.train_loss[i]))) << opt.dump() << " step " << i;
  }
  EXPECT_EQ(lopt::compute_device(), torch::Device(torch::kCPU));  // the scope ended with the run
  json meta = meta_config(dir.path("meta"));
  meta["device"] = "cuda";
  lopt::MetaTrainer trainer(meta);
  trainer.run(lopt::ProgressMode::quiet);
  EXPECT_TRUE(std::isfinite(trainer.log().meta_loss.back()));
}
