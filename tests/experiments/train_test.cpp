#include "experiments/train.h"

#include <gtest/gtest.h>

#include <unistd.h>

#include <algorithm>
#include <cmath>

#include <fstream>

#include "common/config.h"
#include "common/lock.h"
#include "common/errors.h"
#include "experiments/h5_writer.h"
#include "experiments/sweep.h"
#include "optimizers/small_fc_lopt/small_fc_lopt.h"
#include "common/rng.h"
#include "support.h"

using lopt::json;

using lopt_test::tiny_train_config;

TEST(Train, WritesTheResultSchemaAndLearns) {
  lopt_test::TempDir dir;
  lopt_test::write_fake_fashion_mnist(dir.path("fm"), 200, 50);
  auto out = dir.path("run.h5");
  auto res = lopt::run_train(tiny_train_config(dir.path("fm"), out), lopt::ProgressMode::quiet);
  ASSERT_TRUE(std::filesystem::exists(out));
  EXPECT_FALSE(std::filesystem::exists(out + ".tmp"));
  EXPECT_EQ(lopt::h5_read_string_attr(out, "status"), "completed");
  auto cfg = json::parse(lopt::h5_read_string_attr(out, "config"));
  EXPECT_EQ(cfg["optimizer"]["type"], "muadam");
  EXPECT_EQ(cfg["optimizer"]["beta2"], 0.999);  // defaults are resolved into the file
  EXPECT_EQ(lopt::h5_read_doubles(out, "train/loss").size(), 60u);
  auto eval_acc = lopt::h5_read_doubles(out, "eval/test_accuracy");
  ASSERT_EQ(eval_acc.size(), 4u);  // steps 0, 20, 40, 60
  EXPECT_GT(eval_acc.back(), 0.5);  // the fake images are easy; chance is 0.1
  EXPECT_DOUBLE_EQ(lopt::h5_read_double_attr(out, "final_test_accuracy"), eval_acc.back());
  // Same seed, same result.
  auto again = lopt::run_train(tiny_train_config(dir.path("fm"), ""), lopt::ProgressMode::quiet);
  EXPECT_EQ(again.train_loss, res.train_loss);
}

TEST(Train, DivergenceStopsWritesAValidFileAndThrows) {
  lopt_test::TempDir dir;
  lopt_test::write_fake_fashion_mnist(dir.path("fm"), 100, 20);
  auto cfg = tiny_train_config(dir.path("fm"), dir.path("nan.h5"));
  cfg["optimizer"] = {{"type", "sgd"}, {"lr", 1e6}};
  try {
    lopt::run_train(cfg, lopt::ProgressMode::quiet);
    FAIL() << "no divergence";
  } catch (const lopt::DivergenceError& e) {
    EXPECT_GT(e.step(), 0);
    EXPECT_EQ(lopt::h5_read_string_attr(dir.path("nan.h5"), "status"), "diverged");
    EXPECT_EQ(lopt::h5_read_double_attr(dir.path("nan.h5"), "diverged_step"), static_cast<double>(e.step()));
  }
}

// Per-tensor diagnostics against closed forms: plain SGD steps along its gradient (cosine 1, the
// same stable rank), and from the same start and batch twice the lr is twice the step; a momentum or
// Adam step is not parallel to its gradient; Muon's first pre-orthogonalisation direction is its
// gradient. Off by default: no group, no key in the resolved config.
TEST(Train, DiagnosticsRecordEachTensorsStepAndItsCosineWithTheGradient) {
  lopt_test::TempDir dir;
  lopt_test::write_fake_fashion_mnist(dir.path("fm"), 200, 50);
  auto run = [&](const json& optimizer, int64_t steps, const std::string& name) {
    auto cfg = tiny_train_config(dir.path("fm"), dir.path(name));
    cfg["optimizer"] = optimizer;
    cfg["steps"] = steps;
    cfg["diagnostics"] = true;
    return lopt::run_train(cfg, lopt::ProgressMode::quiet);
  };
  auto sgd = run({{"type", "sgd"}, {"lr", 0.05}}, 60, "sgd.h5");
  const size_t T = sgd.diagnostic_tensors.size();
  ASSERT_EQ(T, 6u);  // three weights and three biases
  EXPECT_NE(sgd.diagnostic_tensors[0].find("(input_weight)"), std::string::npos) << sgd.diagnostic_tensors[0];
  ASSERT_EQ(sgd.diagnostics.at("update_grad_cosine").size(), 4 * T);  // evaluations at 0, 20, 40, 60
  for (size_t i = 0; i < T; ++i) EXPECT_TRUE(std::isnan(sgd.diagnostics.at("update_rms")[i]) && std::isnan(sgd.diagnostics.at("update_grad_cosine")[i]));
  EXPECT_GT(sgd.diagnostics.at("tensor_rms")[0], 0);  // the input weight (biases and the μP readout start at zero)
  for (size_t i = 3 * T; i < 4 * T; ++i) EXPECT_GT(sgd.diagnostics.at("tensor_rms")[i], 0) << i;
  for (size_t k = T; k < sgd.diagnostics.at("update_grad_cosine").size(); ++k) {
    EXPECT_NEAR(sgd.diagnostics.at("update_grad_cosine")[k], 1.0, 1e-6) << k;
    EXPECT_GT(sgd.diagnostics.at("update_rms")[k], 0) << k;
  }
  auto h5 = lopt::h5_read_doubles(dir.path("sgd.h5"), "diagnostics/update_grad_cosine");
  ASSERT_EQ(h5.size(), sgd.diagnostics.at("update_grad_cosine").size());
  EXPECT_EQ(h5.back(), sgd.diagnostics.at("update_grad_cosine").back());
  EXPECT_EQ(json::parse(lopt::h5_read_string_attr(dir.path("sgd.h5"), "tensors", "diagnostics")),
            json(sgd.diagnostic_tensors));

  auto one = run({{"type", "sgd"}, {"lr", 0.05}}, 1, "one.h5");
  auto two = run({{"type", "sgd"}, {"lr", 0.1}}, 1, "two.h5");
  for (size_t i = T; i < 2 * T; ++i) EXPECT_NEAR(two.diagnostics.at("update_rms")[i], 2 * one.diagnostics.at("update_rms")[i], 1e-6 * two.diagnostics.at("update_rms")[i]) << i;

  // Decoupled weight decay dominating AdamW's step (lr·wd = 0.1 against a 1e-5 Adam step): the step
  // is ~0.1·p, parallel to p; without decay, SGD's step is not.
  auto decay = run({{"type", "adamw"}, {"lr", 1e-5}, {"weight_decay", 1e4}}, 1, "decay.h5");
  EXPECT_NEAR(decay.diagnostics.at("update_param_cosine")[T], 1.0, 1e-4);  // the input weight (nonzero at init)
  EXPECT_LT(std::abs(sgd.diagnostics.at("update_param_cosine")[3 * T]), 0.9);
  auto momentum = run({{"type", "sgd"}, {"lr", 0.05}, {"momentum", 0.9}}, 60, "momentum.h5");
  auto adam = run({{"type", "adam"}, {"lr", 1e-3}}, 60, "adam.h5");
  for (size_t k = 2 * T; k < 4 * T; ++k) {
    EXPECT_LT(momentum.diagnostics.at("update_grad_cosine")[k], 0.999) << k;
    EXPECT_LT(adam.diagnostics.at("update_grad_cosine")[k], 0.999) << k;
    EXPECT_GT(adam.diagnostics.at("update_grad_cosine")[k], -1.0) << k;
  }

  // Stable ranks: plain SGD's step is its gradient scaled, so theirs are equal; vectors have none.
  // Only orthogonalising optimizers have a pre-orthogonalisation direction.
  const auto& sr_grad = sgd.diagnostics.at("grad_stable_rank");
  const auto& sr_step = sgd.diagnostics.at("update_stable_rank");
  for (size_t k = T; k < sr_grad.size(); ++k) {
    const bool matrix = sgd.diagnostic_tensors[k % T].find("weight") != std::string::npos;
    EXPECT_EQ(std::isnan(sr_grad[k]), !matrix) << sgd.diagnostic_tensors[k % T];
    if (matrix) {
      EXPECT_GE(sr_grad[k], 1.0 - 1e-9) << k;
      EXPECT_NEAR(sr_step[k], sr_grad[k], 1e-4 * sr_grad[k]) << k;  // the step read back from float32 p
    }
    for (const char* d : {"direction_grad_cosine", "direction_param_cosine", "direction_stable_rank"})
      EXPECT_TRUE(std::isnan(sgd.diagnostics.at(d)[k])) << d << " " << k;
  }
  // Muon's direction while its buffer is zero is the gradient scaled (the Nesterov blend): cosine 1
  // on the hidden matrix; Newton–Schulz flattens its spectrum, so the step's stable rank is the
  // larger. Step 2: the zero readout at initialisation gives the hidden matrix a zero first gradient.
  auto muon = run({{"type", "muon"}, {"lr", 0.02}}, 2, "muon.h5");
  size_t hidden = T;
  for (size_t i = 0; i < T; ++i)
    if (muon.diagnostic_tensors[i].find("(hidden_weight)") != std::string::npos) hidden = i;
  ASSERT_LT(hidden, T);
  for (size_t i = 0; i < T; ++i) {
    const double c = muon.diagnostics.at("direction_grad_cosine")[T + i];
    if (i == hidden) {
      EXPECT_NEAR(c, 1.0, 1e-6);
      EXPECT_GT(muon.diagnostics.at("update_stable_rank")[T + i], 1.5 * muon.diagnostics.at("direction_stable_rank")[T + i]);
      EXPECT_NEAR(muon.diagnostics.at("direction_stable_rank")[T + i], muon.diagnostics.at("grad_stable_rank")[T + i], 1e-6);
    } else {
      EXPECT_TRUE(std::isnan(c)) << muon.diagnostic_tensors[i];
    }
  }
  for (const char* k : lopt::kDiagnostics)
    EXPECT_EQ(lopt::h5_read_doubles(dir.path("muon.h5"), std::string("diagnostics/") + k).size(), 2 * T) << k;

  auto plain = tiny_train_config(dir.path("fm"), dir.path("plain.h5"));
  EXPECT_TRUE(lopt::run_train(plain, lopt::ProgressMode::quiet).diagnostic_tensors.empty());
  EXPECT_FALSE(lopt::resolve_train_config(plain).contains("diagnostics"));
  EXPECT_THROW(lopt::h5_read_doubles(dir.path("plain.h5"), "diagnostics/tensor_rms"), lopt::IoError);

  auto local = tiny_train_config(dir.path("fm"), "");
  local["diagnostics"] = true;
  local["local_sgd"] = {{"workers", 2}, {"local_steps", 2}};
  local["optimizer"] = {{"type", "sgd"}, {"lr", 1.0}};
  lopt_test::expect_config_error([](const json& c) { lopt::resolve_train_config(c); }, local, "/diagnostics");
}

TEST(Cli, HelpUnknownFlagsAndKeysAndExitCodes) {
  lopt_test::TempDir dir;
  lopt_test::write_fake_fashion_mnist(dir.path("fm"), 100, 20);
  std::string out;
  EXPECT_EQ(lopt_test::run_lopt("--help", &out), 0);
  EXPECT_NE(out.find("coord-check"), std::string::npos);
  EXPECT_EQ(lopt_test::run_lopt("train --help", &out), 0);
  EXPECT_NE(out.find("--config"), std::string::npos);
  EXPECT_EQ(lopt_test::run_lopt("frobnicate", &out), 2);
  EXPECT_EQ(lopt_test::run_lopt("train --bogus-flag", &out), 2);
  EXPECT_NE(out.find("bogus-flag"), std::string::npos);

  std::ofstream(dir.path("c.json")) << tiny_train_config(dir.path("fm"), dir.path("cli.h5")).dump();
  EXPECT_EQ(lopt_test::run_lopt("train -q --config " + dir.path("c.json") + " --set task.widht=3", &out), 2);
  EXPECT_NE(out.find("/task/widht"), std::string::npos) << out;
  EXPECT_EQ(lopt_test::run_lopt("train -q --config " + dir.path("c.json") + " --set optimizer.lr=-1", &out), 2);
  EXPECT_NE(out.find("/optimizer/lr"), std::string::npos) << out;
  EXPECT_EQ(lopt_test::run_lopt("train -q --config " + dir.path("missing.json"), &out), 1);
  EXPECT_NE(out.find("missing.json"), std::string::npos);
  EXPECT_EQ(lopt_test::run_lopt("train -q --data-dir " + dir.path("nowhere") + " --config " + dir.path("c.json"), &out), 1);
  EXPECT_NE(out.find("dataset-fashion-mnist"), std::string::npos) << out;

  EXPECT_EQ(lopt_test::run_lopt("train -q --config " + dir.path("c.json") + " --steps 10", &out), 0) << out;
  EXPECT_NE(out.find("final: train_loss"), std::string::npos);
  EXPECT_EQ(lopt::h5_read_doubles(dir.path("cli.h5"), "train/loss").size(), 10u);
  // A finished result is not replaced without --overwrite.
  EXPECT_EQ(lopt_test::run_lopt("train -q --config " + dir.path("c.json") + " --steps 12", &out), 2) << out;
  EXPECT_NE(out.find("--overwrite"), std::string::npos) << out;
  EXPECT_EQ(lopt::h5_read_doubles(dir.path("cli.h5"), "train/loss").size(), 10u);
  EXPECT_EQ(lopt_test::run_lopt("train -q --config " + dir.path("c.json") + " --overwrite --set optimizer.type=sgd --set optimizer.lr=1e7", &out), 1);
  EXPECT_NE(out.find("diverged"), std::string::npos) << out;
  // An output folder held by another process: refused at once, naming its PID.
  {
    lopt::OutputLock held(dir.path("cmp/.lopt.lock"), "test");
    json cmp = {{"base", {{"task", {{"width", 8}, {"depth", 2}, {"batch_size", 8}, {"image_size", 4}, {"dataset", "synthetic"}}},
                          {"steps", 3}}},
                {"seeds", {5}},
                {"contenders", {{{"name", "muLO"}, {"optimizer", {{"type", "mulo"}}}}}},
                {"output_dir", dir.path("cmp")}};
    lopt::write_text_atomic(dir.path("cmp.json"), cmp.dump());
    EXPECT_EQ(lopt_test::run_lopt("compare -q --config " + dir.path("cmp.json"), &out), 2) << out;
    EXPECT_NE(out.find("pid " + std::to_string(::getpid())), std::string::npos) << out;
  }
  // The summary too (two comparisons with different folders and one --summary used to both succeed,
  // the file holding whichever finished last).
  {
    lopt::OutputLock held(dir.path("shared_summary.h5.lock"), "test");
    EXPECT_EQ(lopt_test::run_lopt("compare -q --config " + dir.path("cmp.json") + " --set summary=" +
                                      dir.path("shared_summary.h5"), &out), 2) << out;
    EXPECT_NE(out.find("comparison summary"), std::string::npos) << out;
  }
  EXPECT_EQ(lopt_test::run_lopt("compare -q --config " + dir.path("cmp.json"), &out), 0) << out;
  EXPECT_FALSE(std::filesystem::exists(dir.path("cmp/.lopt.lock")));
}

TEST(Sweep, ExpandsTheGridValidatesAndResumes) {
  lopt_test::TempDir dir;
  lopt_test::write_fake_fashion_mnist(dir.path("fm"), 100, 20);
  auto base = tiny_train_config(dir.path("fm"), "");
  base["steps"] = 5;
  json sweep = {{"base", base},
                {"grid", {{"optimizer.lr", {1e-3, 1e-2, 1e-1}}, {"task.width", {16, 32}}}},
                {"output_dir", dir.path("sw")}};
  auto runs = lopt::expand_sweep(sweep);
  ASSERT_EQ(runs.size(), 6u);
  EXPECT_EQ(runs[1].config["task"]["width"], 32);
  EXPECT_DOUBLE_EQ(runs[1].config["optimizer"]["lr"].get<double>(), 1e-3);

  auto rows = lopt::run_sweep(sweep, lopt::ProgressMode::quiet);
  ASSERT_EQ(rows.size(), 6u);
  EXPECT_TRUE(std::filesystem::exists(dir.path("sw.h5")));
  auto t0 = std::filesystem::last_write_time(dir.path("sw/run_0000.h5"));
  lopt::run_sweep(sweep, lopt::ProgressMode::quiet);  // resume: nothing is rerun
  EXPECT_EQ(std::filesystem::last_write_time(dir.path("sw/run_0000.h5")), t0);
  EXPECT_EQ(lopt_test::h5_int_attr(dir.path("sw.h5"), "runs_reused"), 6);
  // --jobs 2: the same runs in child processes, the same losses bit for bit.
  json elsewhere = sweep;
  elsewhere["output_dir"] = dir.path("sw_jobs");
  lopt::SweepOptions two;
  two.jobs.jobs = 2;
  two.jobs.executable = LOPT_BINARY;
  lopt::run_sweep(elsewhere, lopt::ProgressMode::quiet, two);
  for (const char* f : {"run_0000.h5", "run_0005.h5"})
    EXPECT_EQ(lopt::h5_read_doubles(dir.path("sw/") + f, "train/loss"), lopt::h5_read_doubles(dir.path("sw_jobs/") + f, "train/loss")) << f;
  // A changed base value re-runs every run, a changed grid value only its runs; --fresh re-runs all.
  json longer = sweep;
  longer["base"]["steps"] = 6;
  lopt::run_sweep(longer, lopt::ProgressMode::quiet);
  EXPECT_EQ(lopt_test::h5_int_attr(dir.path("sw.h5"), "runs_reused"), 0);
  EXPECT_EQ(lopt::h5_read_doubles(dir.path("sw/run_0000.h5"), "train/loss").size(), 6u);
  json one_lr = longer;
  one_lr["grid"]["optimizer.lr"] = {1e-3, 1e-2, 3e-1};
  lopt::run_sweep(one_lr, lopt::ProgressMode::quiet);
  EXPECT_EQ(lopt_test::h5_int_attr(dir.path("sw.h5"), "runs_reused"), 4);
  lopt::SweepOptions fresh;
  fresh.fresh = true;
  lopt::run_sweep(one_lr, lopt::ProgressMode::quiet, fresh);
  EXPECT_EQ(lopt_test::h5_int_attr(dir.path("sw.h5"), "runs_reused"), 0);

  // Zipped keys vary together.
  json zipped = sweep;
  zipped["grid"] = json::object();
  zipped["grid"]["task.parametrization.type,optimizer.type"] =
      json::array({json::array({"sp", "adam"}), json::array({"mup", "muadam"})});
  auto zr = lopt::expand_sweep(zipped);
  ASSERT_EQ(zr.size(), 2u);
  EXPECT_EQ(zr[0].config["optimizer"]["type"], "adam");
  EXPECT_EQ(zr[0].config["task"]["parametrization"]["type"], "sp");
  EXPECT_EQ(zr[1].config["optimizer"]["type"], "muadam");
  zipped["grid"] = json::object();
  zipped["grid"]["task.width,optimizer.type"] = json::array({json::array({16})});
  EXPECT_THROW(lopt::expand_sweep(zipped), lopt::ConfigError);

  sweep["grid"]["task.depth"] = {0};
  EXPECT_THROW(lopt::expand_sweep(sweep), lopt::ConfigError);
}

TEST(Cli, TrainsWithMuloFromACheckpointOrASeededTheta) {
  lopt_test::TempDir dir;
  lopt_test::write_fake_fashion_mnist(dir.path("fm"), 100, 20);
  std::ofstream(dir.path("c.json")) << tiny_train_config(dir.path("fm"), dir.path("lo.h5")).dump();
  auto lo = lopt::make_small_fc_lopt({{"type", "mulo"}});
  auto gen = lopt::make_generator(9);
  lo->save(dir.path("theta.safetensors"), lo->init_theta(gen));
  std::string out;
  ASSERT_EQ(lopt_test::run_lopt("train -q --config " + dir.path("c.json") + " --steps 5 --optimizer mulo --lo-checkpoint " +
                                    dir.path("theta.safetensors"), &out), 0) << out;
  auto cfg = json::parse(lopt::h5_read_string_attr(dir.path("lo.h5"), "config"));
  EXPECT_EQ(cfg["optimizer"]["type"], "mulo");
  EXPECT_EQ(cfg["optimizer"]["checkpoint"], dir.path("theta.safetensors"));
  EXPECT_EQ(cfg["optimizer"]["step_mult"], 0.01);
  // Without a checkpoint: an untrained theta from theta_seed, reproducible.
  ASSERT_EQ(lopt_test::run_lopt("train -q --overwrite --config " + dir.path("c.json") + " --steps 5 --optimizer small_fc_lopt", &out), 0);
  auto a = lopt::h5_read_doubles(dir.path("lo.h5"), "train/loss");
  ASSERT_EQ(lopt_test::run_lopt("train -q --overwrite --config " + dir.path("c.json") + " --steps 5 --optimizer small_fc_lopt", &out), 0);
  EXPECT_EQ(a, lopt::h5_read_doubles(dir.path("lo.h5"), "train/loss"));
  EXPECT_EQ(lopt_test::run_lopt("train -q --config " + dir.path("c.json") + " --optimizer mulo --lo-checkpoint " +
                                    dir.path("missing.safetensors"), &out), 2);  // a config error: the key names a missing file
  EXPECT_NE(out.find("missing.safetensors"), std::string::npos);
  EXPECT_NE(out.find("/optimizer/checkpoint"), std::string::npos) << out;
  EXPECT_EQ(lopt_test::run_lopt("train -q --config " + dir.path("c.json") + " --optimizer mulo --set optimizer.hidden_size=0", &out), 2);
  EXPECT_NE(out.find("/optimizer/hidden_size"), std::string::npos) << out;
}

// A full disk: the run fails with one line naming the file (exit 1), no crash, no .tmp left behind.
TEST(Train, FullDiskFailsCleanly) {
  lopt_test::TempDir dir;
  const std::string mnt = dir.path("full");
  std::filesystem::create_directories(mnt);
  if (std::system(("mount -t tmpfs -o size=200k tmpfs " + mnt + " 2>/dev/null").c_str()) != 0)
    GTEST_SKIP() << "cannot mount a small tmpfs here (needs root); the full-disk case is not exercised";
  struct Unmount {
    std::string dir;
    ~Unmount() { (void)std::system(("umount " + dir).c_str()); }
  } unmount{mnt};
  lopt_test::write_fake_fashion_mnist(dir.path("fm"), 100, 20);
  auto cfg = tiny_train_config(dir.path("fm"), mnt + "/r.h5");
  cfg["steps"] = 12000;  // ~300 kB of curves: more than the disk holds
  cfg["eval_every"] = 6000;
  lopt::write_text_atomic(dir.path("c.json"), cfg.dump());
  std::string out;
  const int rc = lopt_test::run_lopt("train -q --threads 1 --config " + dir.path("c.json"), &out);
  EXPECT_EQ(rc, 1) << out;
  EXPECT_NE(out.find(mnt + "/r.h5"), std::string::npos) << out;
  EXPECT_NE(out.find("disk full"), std::string::npos) << out;
  EXPECT_EQ(out.find("Segmentation"), std::string::npos) << out;
  EXPECT_FALSE(std::filesystem::exists(mnt + "/r.h5"));
  EXPECT_FALSE(std::filesystem::exists(mnt + "/r.h5.tmp"));
}

// Bad numbers and inputs: one line naming the flag / key / file, exit 2 for usage and config errors,
// no backtrace, nothing trained.
TEST(Cli, BadNumbersAndInputsAreOneLineErrors) {
  lopt_test::TempDir dir;
  lopt_test::write_fake_fashion_mnist(dir.path("fm"), 100, 20);
  lopt::write_text_atomic(dir.path("c.json"), tiny_train_config(dir.path("fm"), dir.path("out.h5")).dump());
  const std::string train = "train -q --config " + dir.path("c.json") + " ";
  auto expect = [&](const std::string& args, int code, const std::string& needle, const char* env = "") {
    std::string out;
    const int rc = lopt_test::run_lopt(args, &out, env);
    EXPECT_EQ(rc, code) << args << "\n" << out;
    EXPECT_NE(out.find(needle), std::string::npos) << args << "\n" << out;
    EXPECT_EQ(out.find("frame #"), std::string::npos) << "backtrace for " << args << "\n" << out;
    EXPECT_LE(std::count(out.begin(), out.end(), '\n'), 1) << "more than one line for " << args << "\n" << out;
  };
  expect(train + "--threads 100000", 2, "--threads 100000 is out of range");
  expect(train + "--threads -1", 2, "--threads -1");
  expect(train + "--steps -3", 2, "--steps -3 must be >= 1");
  expect(train + "--seed -5", 2, "--seed -5 must be >= 0");
  expect(train + "--set task.width=32.7", 2, "/task/width");
  expect(train + "--set seed=-1", 2, "/seed");
  expect(train + "--set optimizer.lr=null", 2, "/optimizer/lr");
  expect(train + "--set task.width.x=3", 2, "/task/width");
  expect(train + "--set task.width=1000000000", 2, "/task/width");
  expect(train + "--set task.batch_size=100000000", 2, "/task/batch_size");
  expect("train -q --config " + dir.path("fm"), 2, "is a folder");
  lopt::write_text_atomic(dir.path("dup.json"), R"({"steps": 5, "steps": 6})");
  expect("train -q --config " + dir.path("dup.json"), 2, "\"steps\" twice");
  lopt::write_text_atomic(dir.path("big.json"), R"({"steps": 1e400})");
  expect("train -q --config " + dir.path("big.json"), 2, "not valid JSON");
  expect(train, 2, "lopt train runs in one process", "WORLD_SIZE=2 RANK=1");
  expect(train, 2, "RANK=2 must be an integer in [0, 1]", "WORLD_SIZE=2 RANK=2");
  expect("meta-train -q --config " + dir.path("c.json") + " --stop-after -5", 2, "--stop-after -5");
  // The digits file missing: exit 1 (input, not usage), naming the package and the apt-get line.
  const std::string digits = train + "--set task.dataset=digits --set task.image_size=8";
  expect(digits, 1, "apt-get install python3-sklearn", "LOPT_DIGITS_FILE=/nonexistent/digits.csv.gz");
  expect(train + "--set task.dataset=digits --set task.image_size=16", 2, "/task/image_size");
  expect(train + "--set task.dataset=cifar10", 2, "valid: fashion_mnist, digits, fashion_mnist_pixperm");
  EXPECT_FALSE(std::filesystem::exists(dir.path("out.h5")));
}

// Ctrl-C / SIGTERM on the command line: meta-train exits 130 with a checkpoint and the resume hint;
// train exits 143 without leaving a result file. Each signal comes after 10 s: on a loaded machine
// (session 26: three processes on two cores) 5 s once ended meta-train before its handlers were in
// place, while it was still loading LibTorch.
TEST(Cli, SignalsStopCleanlyWithAResumeHint) {
  lopt_test::TempDir dir;
  lopt_test::write_fake_fashion_mnist(dir.path("fm"), 100, 20);
  json meta = {{"task_family", {{"type", "mlp_family"}, {"widths", {16}}, {"depths", {2}}, {"batch_sizes", {16}},
                                {"image_sizes", {4}}, {"dataset", "synthetic"}}},
               {"lopt", {{"type", "mulo"}}},
               {"estimator", {{"type", "pes"}, {"trunc_length", 4}, {"num_tasks", 2}}},
               {"outer_steps", 1000000},
               {"checkpoint_every", 1000000},
               {"output_dir", dir.path("meta")}};
  lopt::write_text_atomic(dir.path("meta.json"), meta.dump());
  std::string out;
  int rc = lopt_test::run_lopt("meta-train -q --threads 1 --config " + dir.path("meta.json"), &out, "", "timeout --preserve-status -s INT 10");
  EXPECT_EQ(rc, 130) << out;
  EXPECT_NE(out.find("--resume"), std::string::npos) << out;
  EXPECT_TRUE(std::filesystem::exists(dir.path("meta/checkpoint.safetensors")));
  EXPECT_TRUE(std::filesystem::exists(dir.path("meta/meta_train.h5")));

  auto cfg = tiny_train_config(dir.path("fm"), dir.path("long.h5"));
  cfg["steps"] = 100000000;
  lopt::write_text_atomic(dir.path("long.json"), cfg.dump());
  rc = lopt_test::run_lopt("train -q --threads 1 --config " + dir.path("long.json"), &out, "", "timeout --preserve-status -s TERM 10");
  EXPECT_EQ(rc, 143) << out;
  EXPECT_NE(out.find("SIGTERM"), std::string::npos) << out;
  EXPECT_FALSE(std::filesystem::exists(dir.path("long.h5")));
  EXPECT_FALSE(std::filesystem::exists(dir.path("long.h5.tmp")));

  // compare --jobs passes the signal on to its child processes and waits for them.
  json cmp = {{"base", cfg}, {"seeds", {5}}, {"contenders", {{{"name", "AdamW"}, {"optimizer", {{"type", "adamw"}}}, {"lr_grid", {1e-3, 1e-2}}}}},
              {"output_dir", dir.path("cmp")}};
  cmp["base"].erase("output");
  cmp["base"].erase("optimizer");
  lopt::write_text_atomic(dir.path("cmp.json"), cmp.dump());
  rc = lopt_test::run_lopt("compare -q --jobs 2 --config " + dir.path("cmp.json"), &out, "", "timeout --preserve-status -s TERM 10");
  EXPECT_EQ(rc, 143) << out;
  EXPECT_NE(out.find("run the same command again"), std::string::npos) << out;
  // No process left whose command line names a run of this comparison (/proc, as pgrep would).
  for (const auto& e : std::filesystem::directory_iterator("/proc")) {
    const std::string pid = e.path().filename().string();
    if (pid.find_first_not_of("0123456789") != std::string::npos) continue;
    const std::string cmdline = lopt_test::read_text((e.path() / "cmdline").string());
    EXPECT_EQ(cmdline.find(dir.path("cmp/")), std::string::npos) << "a child outlived compare: " << e.path();
  }
  EXPECT_FALSE(std::filesystem::exists(dir.path("cmp.h5")));
  for (const auto& e : std::filesystem::directory_iterator(dir.path("cmp")))  // no partial result, config or log
    ADD_FAILURE() << "left behind: " << e.path();
}

TEST(Train, SchedulesRelativeToTheRunLength) {
  auto opt = json{{"type", "adamw"}, {"lr", 1e-3}, {"schedule", {{"type", "warmup_cosine"}, {"warmup_fraction", 0.05}}}};
  auto r = lopt::resolve_train_config({{"task", {{"dataset", "synthetic"}, {"image_size", 4}}}, {"optimizer", opt}, {"steps", 2000}});
  EXPECT_EQ(r["optimizer"]["schedule"]["warmup_steps"], 100);
  EXPECT_EQ(r["optimizer"]["schedule"]["total_steps"], 2000);
  auto longer = lopt::resolve_train_config({{"task", {{"dataset", "synthetic"}, {"image_size", 4}}}, {"optimizer", opt}, {"steps", 25000}});
  EXPECT_EQ(longer["optimizer"]["schedule"]["warmup_steps"], 1250);
  EXPECT_EQ(longer["optimizer"]["schedule"]["total_steps"], 25000);
  opt["schedule"]["warmup_steps"] = 10;
  lopt_test::expect_config_error([](const json& j) { lopt::resolve_train_config(j); },
                                 {{"task", {{"dataset", "synthetic"}}}, {"optimizer", opt}}, "/optimizer/schedule/warmup_fraction");
  opt["schedule"].erase("warmup_steps");
  opt["schedule"]["warmup_fraction"] = 1.5;
  lopt_test::expect_config_error([](const json& j) { lopt::resolve_train_config(j); },
                                 {{"task", {{"dataset", "synthetic"}}}, {"optimizer", opt}}, "/optimizer/schedule/warmup_fraction");
}

// An axis sweep: a tuning comparison on the base point, {"tuned": name} optimizers, "@" labels,
// shards that together run every run, a merge that refuses while a shard is missing, and the table.
TEST(Sweep, TunedContendersShardsAndMerge) {
  lopt_test::TempDir dir;
  lopt_test::write_fake_fashion_mnist(dir.path("fm"), 100, 20);
  auto base = tiny_train_config(dir.path("fm"), "");
  base.erase("optimizer");
  base.erase("output");
  base["steps"] = 6;
  base["eval_every"] = 6;
  json tune = {{"base", base},
               {"seeds", {7}},
               {"tuning_seeds", {1}},
               {"contenders", {{{"name", "Adam"}, {"optimizer", {{"type", "adam"}}}, {"lr_grid", {1e-3, 1e-2}},
                                {"schedules", {{{"type", "warmup_cosine"}, {"warmup_fraction", 0.5}}}},
                                {"set", {{"task.parametrization.type", "sp"}}}}}},
               {"output_dir", dir.path("tune")}};
  json sweep = {{"base", base},
                {"tune", tune},
                {"grid",
                 {{"task.width", {16, 32}},
                  {"@name,task.parametrization.type,optimizer",
                   {{"Adam", "sp", {{"tuned", "Adam"}}},
                    {"Adam_per_width", "sp", {{"tuned", "Adam"}, {"per_point", true}}},
                    {"muLO", "mup", {{"type", "mulo"}}}}},
                  {"seed", {100, 101}}}},
                {"plot", {{"x", "task.width"}, {"group", "@name"}}},
                {"output_dir", dir.path("sw")}};
  // Before tuning: a dry run validates with a placeholder, a shard refuses.
  auto placeholder = lopt::expand_sweep(sweep, true);
  ASSERT_EQ(placeholder.size(), 12u);
  EXPECT_EQ(placeholder[0].point["@name"], "Adam");
  EXPECT_FALSE(placeholder[0].config.contains("@name"));
  lopt::SweepOptions shard0;
  std::tie(shard0.shard, shard0.shards) = lopt::parse_shard("0/2");
  EXPECT_THROW(lopt::run_sweep(sweep, lopt::ProgressMode::quiet, shard0), lopt::UsageError);
  EXPECT_THROW(lopt::parse_shard("2/2"), lopt::UsageError);
  EXPECT_THROW(lopt::parse_shard("1"), lopt::UsageError);

  lopt::SweepOptions tune_only;
  tune_only.tune_only = true;
  lopt::run_sweep(sweep, lopt::ProgressMode::quiet, tune_only);
  auto runs = lopt::expand_sweep(sweep);
  const auto tuned = json::parse(lopt::h5_read_string_attr(dir.path("tune.h5"), "summary"))[0];
  EXPECT_EQ(runs[0].config["optimizer"]["lr"], tuned["best_lr"]);
  EXPECT_EQ(runs[0].config["optimizer"]["schedule"]["warmup_steps"], 3);  // relative schedule: 0.5 x 6 steps
  EXPECT_EQ(runs[0].config["task"]["parametrization"]["type"], "sp");
  EXPECT_EQ(runs[8].config["optimizer"]["type"], "mulo");  // keys sorted: contender slowest, then seed, width fastest
  // Per-width tuning: each width has its own comparison, whose choice the run uses.
  ASSERT_EQ(runs[5].point["@name"], "Adam_per_width");
  ASSERT_EQ(runs[5].config["task"]["width"], 32);
  const std::string pp = dir.path("tune") + "_per_point/Adam_typesp_width32.h5";
  ASSERT_TRUE(std::filesystem::exists(pp)) << pp;
  const auto pp_row = json::parse(lopt::h5_read_string_attr(pp, "summary"))[0];
  EXPECT_EQ(runs[5].config["optimizer"]["lr"], pp_row["best_lr"]);
  EXPECT_EQ(json::parse(lopt::h5_read_string_attr(pp, "config"))["base"]["task"]["width"], 32);

  auto rows0 = lopt::run_sweep(sweep, lopt::ProgressMode::quiet, shard0);
  size_t in_shard0 = 0;
  for (const auto& r : runs) in_shard0 += lopt::shard_of(r.point, 2) == 0 ? 1 : 0;
  EXPECT_EQ(rows0.size(), in_shard0);
  EXPECT_GT(in_shard0, 0u);
  EXPECT_LT(in_shard0, 12u);
  EXPECT_TRUE(std::filesystem::exists(dir.path("sw.shard0of2.h5")));
  lopt::SweepOptions merge;
  merge.merge = true;
  try {
    lopt::run_sweep(sweep, lopt::ProgressMode::quiet, merge);
    FAIL() << "merge with a shard missing should fail";
  } catch (const lopt::UsageError& e) {
    EXPECT_NE(std::string(e.what()).find(std::to_string(12 - in_shard0) + " of 12 runs"), std::string::npos) << e.what();
  }
  lopt::SweepOptions shard1 = shard0;
  shard1.shard = 1;
  lopt::run_sweep(sweep, lopt::ProgressMode::quiet, shard1);
  auto all = lopt::run_sweep(sweep, lopt::ProgressMode::quiet, merge);
  ASSERT_EQ(all.size(), 12u);
  EXPECT_EQ(lopt::h5_read_string_attr(dir.path("sw.h5"), "shard"), "merged");
  const auto table = lopt::sweep_table(sweep, all);
  EXPECT_NE(table.find("| @name \\ task.width | 16 | 32 |"), std::string::npos) << table;
  EXPECT_NE(table.find("| muLO |"), std::string::npos) << table;
  // A tuned group says what its tuning chose and how many runs that took.
  char chosen[128];
  std::snprintf(chosen, sizeof chosen, "| Adam (tuned: lr %g, ", tuned["best_lr"].get<double>());
  EXPECT_NE(table.find(chosen), std::string::npos) << table;
  EXPECT_NE(table.find("; " + tuned["tuning_runs"].dump() + " tuning runs) |"), std::string::npos) << table;
  EXPECT_GE(tuned["tuning_runs"].get<int64_t>(), 2);  // 2 LRs x 1 schedule x 1 seed, more when extended
  EXPECT_NE(table.find("| Adam_per_width (tuned at each point) |"), std::string::npos) << table;
}

// The sweep CLI: bad --shard values and flag combinations are usage errors (exit 2) naming the fix;
// --dry-run of a sweep with a tuning comparison lists runs before any tuning; --merge with nothing
// run names the missing runs.
TEST(Sweep, CliShardMergeAndDryRun) {
  lopt_test::TempDir dir;
  lopt_test::write_fake_fashion_mnist(dir.path("fm"), 60, 20);
  auto base = tiny_train_config(dir.path("fm"), "");
  base.erase("optimizer");
  base.erase("output");
  base["steps"] = 3;
  base["eval_every"] = 3;
  json sweep = {{"base", base},
                {"tune", {{"base", base}, {"seeds", {7}}, {"tuning_seeds", {1}},
                          {"contenders", {{{"name", "Adam"}, {"optimizer", {{"type", "adam"}}}, {"lr_grid", {1e-3}}}}},
                          {"output_dir", dir.path("tune")}}},
                {"output_dir", dir.path("sw")}};
  sweep["grid"] = json::object();
  sweep["grid"]["@name,optimizer"] = json::array({json::array({"Adam", json{{"tuned", "Adam"}}})});
  sweep["grid"]["seed"] = json::array({1, 2});
  lopt::write_text_atomic(dir.path("sw.json"), sweep.dump());
  std::string out;
  EXPECT_EQ(lopt_test::run_lopt("sweep -q --config " + dir.path("sw.json") + " --shard 2/2", &out), 2) << out;
  EXPECT_NE(out.find("--shard takes i/n"), std::string::npos) << out;
  EXPECT_EQ(lopt_test::run_lopt("sweep -q --config " + dir.path("sw.json") + " --merge --shard 0/2", &out), 2) << out;
  EXPECT_EQ(lopt_test::run_lopt("sweep -q --config " + dir.path("sw.json") + " --dry-run", &out), 0) << out;
  EXPECT_NE(out.find("sweep: 2 runs"), std::string::npos) << out;
  EXPECT_EQ(lopt_test::run_lopt("sweep -q --config " + dir.path("sw.json") + " --shard 0/2", &out), 2) << out;
  EXPECT_NE(out.find("--tune-only"), std::string::npos) << out;
  EXPECT_EQ(lopt_test::run_lopt("sweep -q --config " + dir.path("sw.json") + " --tune-only", &out), 0) << out;
  EXPECT_EQ(lopt_test::run_lopt("sweep -q --config " + dir.path("sw.json") + " --merge", &out), 2) << out;
  EXPECT_NE(out.find("2 of 2 runs are not finished"), std::string::npos) << out;
  EXPECT_EQ(lopt_test::run_lopt("sweep -q --config " + dir.path("sw.json"), &out), 0) << out;
  EXPECT_EQ(out.find("| @name \\ "), std::string::npos) << out;  // no "plot" spec: no table
  EXPECT_NE(out.find("(2 runs)"), std::string::npos) << out;
}

// {"tuned": name} takes a tuned learned optimizer's whole choice (its checkpoint or theta, step
// multiplier and schedule) and a tuned key outside "optimizer" (lr_key local_sgd.local_lr and a
// "grid" key), not only optimizer.lr of a baseline.
TEST(Sweep, TunedLearnedOptimizersAndKeysOutsideTheOptimizer) {
  lopt_test::TempDir dir;
  json base = {{"task", {{"width", 16}, {"depth", 2}, {"batch_size", 32}, {"image_size", 4}, {"dataset", "synthetic"}}},
               {"steps", 6},
               {"eval_every", 6},
               {"eval_examples", 100}};
  json tune = {{"base", base},
               {"seeds", {7}},
               {"tuning_seeds", {1}},
               {"contenders",
                {{{"name", "muLO_tuned"}, {"optimizer", {{"type", "mulo"}, {"theta_seed", 2}}}, {"lr_grid", {0.5, 2.0}}},
                 {{"name", "LocalSGD"}, {"optimizer", {{"type", "sgd"}, {"lr", 1.0}}}, {"lr_key", "local_sgd.local_lr"},
                  {"lr_grid", {1e-3, 1e-1}}, {"schedules", {{{"type", "constant"}}}},
                  {"set", {{"local_sgd.workers", 2}, {"local_sgd.local_steps", 2}}}},
                 {{"name", "SlowMo"}, {"optimizer", {{"type", "sgd"}}}, {"lr_grid", {0.5, 1.0}},
                  {"schedules", {{{"type", "constant"}}}}, {"grid", {{"local_sgd.local_lr", {1e-3, 1e-1}}}},
                  {"set", {{"local_sgd.workers", 2}, {"local_sgd.local_steps", 2}}}}}},
               {"output_dir", dir.path("tune")}};
  json sweep = {{"base", base},
                {"tune", tune},
                {"grid",
                 {{"@name,local_sgd,optimizer",
                   {{"muLO_tuned", nullptr, {{"tuned", "muLO_tuned"}}},
                    {"LocalSGD", {{"workers", 2}, {"local_steps", 2}}, {{"tuned", "LocalSGD"}}},
                    {"SlowMo", {{"workers", 2}, {"local_steps", 2}}, {{"tuned", "SlowMo"}}}}},
                  {"seed", {100}}}},
                {"output_dir", dir.path("sw")}};
  // Before tuning, the placeholder puts the first grid value where the tuned key lives.
  auto placeholder = lopt::expand_sweep(sweep, true);
  ASSERT_EQ(placeholder.size(), 3u);
  EXPECT_EQ(placeholder[0].config["optimizer"]["lr"].get<double>(), 0.5);
  EXPECT_EQ(placeholder[1].config["local_sgd"]["local_lr"].get<double>(), 1e-3);
  EXPECT_EQ(placeholder[1].config["optimizer"]["lr"].get<double>(), 1.0);

  auto rows = lopt::run_sweep(sweep, lopt::ProgressMode::quiet);
  ASSERT_EQ(rows.size(), 3u);
  const auto tuned = json::parse(lopt::h5_read_string_attr(dir.path("tune.h5"), "summary"));
  auto runs = lopt::expand_sweep(sweep);
  // The learned optimizer: same type and theta, the chosen multiplier and schedule.
  EXPECT_EQ(runs[0].config["optimizer"]["type"], "mulo");
  EXPECT_EQ(runs[0].config["optimizer"]["theta_seed"], 2);
  EXPECT_EQ(runs[0].config["optimizer"]["lr"], tuned[0]["best_lr"]);
  EXPECT_EQ(runs[0].config["optimizer"].contains("schedule"), tuned[0]["schedule"] != "constant");
  // Local SGD: the workers' learning rate chosen by tuning is the one the run uses.
  EXPECT_EQ(runs[1].config["local_sgd"]["local_lr"], tuned[1]["best_lr"]);
  EXPECT_EQ(runs[1].config["optimizer"]["lr"].get<double>(), 1.0);
  EXPECT_EQ(runs[2].config["local_sgd"]["local_lr"], tuned[2]["grid_choice"]["local_sgd.local_lr"]);
  EXPECT_EQ(runs[2].config["optimizer"]["lr"], tuned[2]["best_lr"]);
  auto stored = json::parse(lopt::h5_read_string_attr(runs[1].config["output"].get<std::string>(), "config"));
  EXPECT_EQ(stored["local_sgd"]["local_lr"], tuned[1]["best_lr"]);
}
