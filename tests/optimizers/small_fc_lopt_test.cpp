#include "optimizers/small_fc_lopt/small_fc_lopt.h"

#include <gtest/gtest.h>

#include <fstream>
#include <functional>
#include <iostream>

#include "common/config.h"
#include "common/errors.h"
#include "common/rng.h"
#include "optimizers/kernels/lopt_cpu.h"
#include "optimizers/kernels/lopt_gpu.h"
#include <torch/cuda.h>
#include "optimizers/safetensors.h"
#include "support.h"

using json = nlohmann::json;

namespace {

using lopt_test::from_json;
using lopt_test::rel_err;
using lopt_test::scaled_err;
using lopt_test::update_err;
using lopt_test::for_each_kernel_target;

struct GoldenCase {
  std::string name;
  std::unique_ptr<lopt::SmallFcLopt> lopt;
  torch::Tensor theta;
  lopt::ParamSet params;
  json steps;
};

/// Builds a learned optimizer, theta and parameters from one case of a PyLO golden file (schema in
/// tests/data/README_pylo_golden.md); works for any shapes and number of steps.
GoldenCase load_case(const json& root, const std::string& name, const std::string& impl) {
  const auto& c = root.at("cases").at(name);
  const auto& hp = root.at("hyperparameters");
  const auto& ctor = hp.at("constructor_defaults");
  const auto& groups = c.at("param_groups");
  GoldenCase gc;
  gc.name = name;
  json cfg = {{"type", c.at("mup_scaling_applied").get<bool>() ? "mulo" : "small_fc_lopt"},
              {"hidden_size", hp.at("metamlp_geometry").at("hidden_size")},
              {"hidden_layers", hp.at("metamlp_geometry").at("hidden_layers")},
              {"step_mult", groups[0].at("step_mult")},
              {"exp_mult", groups[0].at("exp_mult")},
              {"lr", hp.at("lr")},
              {"weight_decay", groups[0].at("weight_decay")},
              {"initial_momentum_decays", hp.at("initial_momentum_decays")},
              {"initial_rms_decays", hp.at("initial_rms_decays")},
              {"initial_adafactor_decays", hp.at("initial_adafactor_decays")},
              {"impl", impl}};
  gc.lopt = lopt::make_small_fc_lopt(cfg);
  std::map<std::string, torch::Tensor> named;
  for (auto it = c.at("metamlp").begin(); it != c.at("metamlp").end(); ++it) named[it.key()] = from_json(it.value());
  named["momentum_decays"] = torch::tensor(ctor.at("momentum_decays").get<std::vector<float>>());
  named["rms_decays"] = torch::tensor(ctor.at("rms_decays").get<std::vector<float>>());
  named["adafactor_decays"] = torch::tensor(ctor.at("adafactor_decays").get<std::vector<float>>());
  gc.theta = gc.lopt->flatten(named);
  const double base_lr = hp.at("lr");
  for (const auto& t : c.at("initial_params")) gc.params.tensors.push_back(from_json(t));
  gc.params.info.resize(gc.params.tensors.size());
  for (const auto& g : groups) {
    double lr = g.at("lr");
    for (int idx : g.at("param_indices").get<std::vector<int>>()) {
      // A group whose LR is base_lr / w is a matrix-like (hidden) tensor with width_mult w.
      auto& info = gc.params.info[idx];
      info.name = "p" + std::to_string(idx);
      info.role = lr != base_lr ? lopt::ParamRole::hidden_weight : lopt::ParamRole::bias;
      info.width_mult = lr != base_lr ? base_lr / lr : 1.0;
    }
  }
  gc.steps = c.at("steps");
  return gc;
}

const json& golden() { return lopt_test::test_data_json("pylo_mulo_golden.json"); }

}  // namespace

// Reproduces PyLO's AdafacLO_naive / MuLO_naive step by step: parameters, optimizer state and the
// exact MLP inputs and outputs (tensor-op path), parameters and state (fused path).
TEST(SmallFcLoptParity, MatchesPyloGoldenValues) {
  const auto& root = golden();
  ASSERT_GE(root.at("cases").size(), 1u);
  // impl "gpu" runs the CUDA kernels' algorithm: on `device` CPU its host emulation, on CUDA the kernels.
  auto run = [&](const std::string& impl, const std::string& target, torch::Device device = torch::kCPU) {
    for (auto it = root.at("cases").begin(); it != root.at("cases").end(); ++it) {
      auto gc = load_case(root, it.key(), impl);
      auto opt = gc.lopt->bind(gc.theta);
      auto* lo = dynamic_cast<lopt::SmallFcLoptOptimizer*>(opt.get());
      ASSERT_NE(lo, nullptr);
      for (auto& t : gc.params.tensors) t = t.to(device);
      auto state = opt->init(gc.params);
      for (const auto& st : gc.steps) {
        std::vector<torch::Tensor> grads;
        for (const auto& g : st.at("grads")) grads.push_back(from_json(g).to(device));
        auto before = state.params.clone();
        std::vector<torch::Tensor> ins, outs;
        if (impl == "tensor") state = lo->step(state, grads, &ins, &outs);
        else opt->update_(state, grads, torch::zeros({}));
        const std::string where =
            gc.name + " " + impl + target + " step " + std::to_string(st.at("step").get<int>());
        for (size_t i = 0; i < grads.size(); ++i) {
          auto expected = from_json(st.at("params_after")[i]);
          auto key = std::to_string(i);
          EXPECT_LT(rel_err(state.params.tensors[i].cpu(), expected), 1e-5) << where << " tensor " << i;
          EXPECT_LT(update_err(state.params.tensors[i].cpu(), expected, before.tensors[i].cpu()), 1e-4)
              << where << " update of tensor " << i;
          const auto& sa = st.at("state_after").at(key);
          for (const char* slot : {"mom", "rms", "fac_vec_row", "fac_vec_col", "fac_vec_v"})
            EXPECT_LT(scaled_err(state.slots.at(slot)[i].cpu(), from_json(sa.at(slot))), 1e-5) << where << " " << slot << " " << i;
          if (impl == "tensor") {
            const auto& io = st.at("mlp_io").at(key);
            EXPECT_LT(scaled_err(ins[i], from_json(io.at("mlp_input"))), 1e-5) << where << " mlp_input " << i;
            EXPECT_LT(scaled_err(outs[i], from_json(io.at("mlp_output"))), 1e-5) << where << " mlp_output " << i;
          }
        }
      }
    }
  };
  run("tensor", "");
  for_each_kernel_target([&](const std::string& target) { run("fused", " [" + target + "]"); });
  run("gpu", " [host emulation]");
  if (lopt::kernels::gpu::compiled() && torch::cuda::is_available()) run("gpu", " [CUDA]", torch::kCUDA);
}

namespace {

/// A learned optimizer pair (tensor ops, fused kernel) with the same random theta and nonzero
/// decay offsets, and parameters of the given shapes.
struct FusedCase {
  std::unique_ptr<lopt::SmallFcLopt> tensor_lo, fused_lo;
  torch::Tensor theta;
  lopt::ParamSet params;
};

FusedCase make_fused_case(bool mup, const std::vector<std::vector<int64_t>>& shapes, uint64_t seed) {
  json cfg = {{"type", mup ? "mulo" : "small_fc_lopt"}, {"weight_decay", 0.01}, {"max_grad_norm", 5.0},
              {"impl", "tensor"}};
  FusedCase c;
  c.tensor_lo = lopt::make_small_fc_lopt(cfg);
  cfg["impl"] = "fused";
  c.fused_lo = lopt::make_small_fc_lopt(cfg);
  auto gen = lopt::make_generator(seed);
  c.theta = c.tensor_lo->init_theta(gen);
  c.theta.narrow(0, c.theta.size(0) - 7, 7).copy_(torch::randn({7}, gen) * 0.1);  // nonzero decay offsets
  for (const auto& s : shapes) {
    c.params.tensors.push_back(torch::randn(s, gen));
    c.params.info.push_back({"x", s.size() >= 2 ? lopt::ParamRole::hidden_weight : lopt::ParamRole::bias,
                             s.empty() ? 1 : s.back(), s.empty() ? 1 : s[0], 2.0});
  }
  return c;
}


}  // namespace

// Every compiled target against the tensor-op path on shapes that take each layout: rows (2-D,
// full and partial blocks, row entry along either dim), generic 2-D (short rows), 1-D, 0-D, 3-D, 4-D.
TEST(SmallFcLopt, FusedKernelAgreesWithTensorOpsOnEveryTarget) {
  const std::vector<std::vector<int64_t>> shapes = {{37}, {13, 29}, {5, 7, 3}, {3, 5, 2, 7}, {1}, {2, 1000},
                                                    {517, 9}, {64, 96}, {100, 33}, {33, 100}, {48, 48}, {}};
  for_each_kernel_target([&](const std::string& target) {
    double worst_fused = 0, worst_tensor = 0;
    for (bool mup : {false, true}) {
      auto c = make_fused_case(mup, shapes, 11);
      auto gen = lopt::make_generator(12);
      // Reference: the tensor-op path in float64. The float32 tensor-op path is measured against it
      // too, to show what float32 arithmetic itself costs on the same elements.
      auto t_opt = c.tensor_lo->bind(c.theta), f_opt = c.fused_lo->bind(c.theta);
      auto r_opt = c.tensor_lo->bind(c.theta.to(torch::kFloat64));
      auto params64 = c.params.clone();
      for (auto& t : params64.tensors) t = t.to(torch::kFloat64);
      auto ts = t_opt->init(c.params.clone()), fs = f_opt->init(c.params.clone()), rs = r_opt->init(params64);
      for (int step = 0; step < 4; ++step) {
        std::vector<torch::Tensor> grads, grads64;
        for (const auto& p : c.params.tensors) grads.push_back(torch::randn(p.sizes(), gen) * (step + 1));
        for (const auto& g : grads) grads64.push_back(g.to(torch::kFloat64));
        auto before = rs.params.clone();
        ts = t_opt->update(ts, grads, torch::zeros({}));
        f_opt->update_(fs, grads, torch::zeros({}));
        rs = r_opt->update(rs, grads64, torch::zeros({}));
        for (size_t i = 0; i < shapes.size(); ++i) {
          const std::string where = target + (mup ? " mulo" : " sp") + " step " + std::to_string(step) + " tensor " +
                                    std::to_string(i) + " " + c10::str(c.params.tensors[i].sizes());
          // The update is ill-conditioned where the MLP's direction output is small by cancellation:
          // an element at the 1e-3 floor has |d| ~ 1e-3 of the sum of |terms|, so float32 rounding of
          // the shared inputs (state, features) alone moves it by ~1e-4 relative, in any float32
          // implementation. Hence: within 1e-4 of float64, or no worse than twice the float32
          // tensor-op path's own error on that tensor.
          const double tensor32 = update_err(ts.params.tensors[i], rs.params.tensors[i], before.tensors[i]);
          const double fused = update_err(fs.params.tensors[i], rs.params.tensors[i], before.tensors[i]);
          EXPECT_LT(rel_err(fs.params.tensors[i], rs.params.tensors[i]), 1e-5) << where;
          EXPECT_LT(rel_err(fs.params.tensors[i], ts.params.tensors[i]), 1e-5) << where;
          EXPECT_LT(fused, std::max(1e-4, 2 * tensor32)) << "update, " << where << " (float32 tensor ops: " << tensor32 << ")";
          worst_fused = std::max(worst_fused, fused);
          worst_tensor = std::max(worst_tensor, tensor32);
          for (const char* slot : {"mom", "rms", "fac_vec_row", "fac_vec_col", "fac_vec_v"})
            EXPECT_LT(scaled_err(fs.slots.at(slot)[i], rs.slots.at(slot)[i]), 1e-5) << slot << ", " << where;
        }
      }
    }
    std::cout << "[ " << target << " ] worst update error vs float64: fused " << worst_fused << ", float32 tensor ops "
              << worst_tensor << "\n";
  });
}

// A population step (members with their own thetas, one kernel call) equals each member's own step.
TEST(SmallFcLopt, PopulationStepEqualsMemberSteps) {
  const std::vector<std::vector<int64_t>> shapes = {{32, 64}, {32}, {10, 32}, {10}, {517, 9}};
  auto c = make_fused_case(true, shapes, 21);
  auto gen = lopt::make_generator(22);
  std::vector<std::unique_ptr<lopt::Optimizer>> opts;
  std::vector<lopt::OptState> batched, single;
  for (int m = 0; m < 5; ++m) {
    opts.push_back(c.fused_lo->bind(c.theta + 0.05 * torch::randn(c.theta.sizes(), gen)));
    auto params = c.params.clone();
    for (auto& t : params.tensors) t.add_(torch::randn(t.sizes(), gen));
    batched.push_back(opts.back()->init(params.clone()));
    single.push_back(opts.back()->init(params.clone()));
  }
  for (int step = 0; step < 3; ++step) {
    std::vector<lopt::PopulationMember> members;
    for (int m = 0; m < 5; ++m) {
      std::vector<torch::Tensor> grads;
      for (const auto& p : c.params.tensors) grads.push_back(torch::randn(p.sizes(), gen));
      opts[static_cast<size_t>(m)]->update_(single[static_cast<size_t>(m)], grads, torch::zeros({}));
      members.push_back({opts[static_cast<size_t>(m)].get(), &batched[static_cast<size_t>(m)], grads, torch::zeros({})});
    }
    opts[0]->update_many_(members);
    for (int m = 0; m < 5; ++m) {
      const auto& b = batched[static_cast<size_t>(m)];
      const auto& s = single[static_cast<size_t>(m)];
      EXPECT_EQ(b.step, s.step);
      for (size_t i = 0; i < shapes.size(); ++i) {
        EXPECT_TRUE(torch::equal(b.params.tensors[i], s.params.tensors[i])) << "member " << m << " tensor " << i;
        for (const char* slot : {"mom", "rms", "fac_vec_row", "fac_vec_col", "fac_vec_v"})
          EXPECT_TRUE(torch::equal(b.slots.at(slot)[i], s.slots.at(slot)[i])) << slot << " member " << m;
      }
    }
  }
}

// Non-finite values propagate the same way in both paths: a NaN weight in theta makes every update
// NaN (the fused ReLU used to turn it into 0), and a non-finite gradient element poisons its tensor
// (the feature normalisation sees it) without touching the others.
TEST(SmallFcLopt, NonFiniteValuesPropagateLikeTensorOps) {
  const std::vector<std::vector<int64_t>> shapes = {{32, 64}, {32}, {517, 9}, {3, 4, 5}};
  for_each_kernel_target([&](const std::string& target) {
    for (int scenario = 0; scenario < 3; ++scenario) {
      auto c = make_fused_case(true, shapes, 31);
      if (scenario == 0) c.theta[5] = std::nanf("");  // a first-layer weight
      auto t_opt = c.tensor_lo->bind(c.theta), f_opt = c.fused_lo->bind(c.theta);
      auto ts = t_opt->init(c.params.clone()), fs = f_opt->init(c.params.clone());
      auto gen = lopt::make_generator(32);
      std::vector<torch::Tensor> grads;
      for (const auto& p : c.params.tensors) grads.push_back(torch::randn(p.sizes(), gen));
      if (scenario == 1) grads[0].view(-1)[7] = std::nanf("");
      if (scenario == 2) grads[2].view(-1)[100] = INFINITY;
      for (auto& g : grads) g = g.clone();
      ts = t_opt->update(ts, grads, torch::zeros({}));
      f_opt->update_(fs, grads, torch::zeros({}));
      int64_t non_finite = 0;
      for (size_t i = 0; i < shapes.size(); ++i) {
        const auto& a = fs.params.tensors[i];
        const auto& b = ts.params.tensors[i];
        const std::string where = target + " scenario " + std::to_string(scenario) + " tensor " + std::to_string(i);
        EXPECT_TRUE(torch::equal(a.isfinite(), b.isfinite())) << where;
        non_finite += (~b.isfinite()).sum().item<int64_t>();
        auto finite = b.isfinite();
        if (finite.any().item<bool>()) {
          EXPECT_LT(rel_err(a.masked_select(finite), b.masked_select(finite)), 1e-5) << where;
        }
      }
      EXPECT_GT(non_finite, 0) << target << " scenario " << scenario << ": the non-finite input vanished";
    }
  });
}

TEST(SmallFcLopt, TensorPathIsDifferentiableInThetaAndParams) {
  auto lo = lopt::make_small_fc_lopt({{"type", "mulo"}, {"impl", "tensor"}});
  auto gen = lopt::make_generator(3);
  auto theta = lo->init_theta(gen).to(torch::kFloat64).requires_grad_(true);
  lopt::ParamSet params;
  params.tensors = {torch::randn({6, 4}, torch::kFloat64).requires_grad_(true), torch::randn({5}, torch::kFloat64)};
  params.info = {{"w", lopt::ParamRole::hidden_weight, 4, 6, 2.0}, {"b", lopt::ParamRole::bias, 1, 5, 1.0}};
  auto grads = std::vector<torch::Tensor>{torch::randn({6, 4}, torch::kFloat64), torch::randn({5}, torch::kFloat64)};
  auto f = [&](const torch::Tensor& th) {
    auto opt = lo->bind(th);
    auto s = opt->init(params);
    s = opt->update(s, grads, torch::zeros({}));
    s = opt->update(s, grads, torch::zeros({}));
    return (s.params.tensors[0].square().sum() + s.params.tensors[1].sum()) * 100;
  };
  auto g = torch::autograd::grad({f(theta)}, {theta})[0];
  // Central finite differences on a few coordinates, including a decay offset (last entries).
  torch::NoGradGuard ng;
  for (int64_t k : {int64_t(0), int64_t(500), theta.size(0) - 7, theta.size(0) - 1}) {
    auto e = torch::zeros_like(theta);
    e[k] = 1e-6;
    double fd = (f(theta + e) - f(theta - e)).item<double>() / 2e-6;
    EXPECT_NEAR(g[k].item<double>(), fd, 1e-5 * std::max(1.0, std::abs(fd))) << "theta[" << k << "]";
  }
}

TEST(SmallFcLopt, SafetensorsRoundTripAndPyloNames) {
  lopt_test::TempDir dir;
  auto lo = lopt::make_small_fc_lopt({{"type", "mulo"}});
  auto gen = lopt::make_generator(5);
  auto theta = lo->init_theta(gen);
  theta.narrow(0, theta.size(0) - 7, 7).fill_(0.25);
  lo->save(dir.path("theta.safetensors"), theta);
  EXPECT_TRUE(torch::equal(lo->load(dir.path("theta.safetensors")), theta));
  auto st = lopt::read_safetensors(dir.path("theta.safetensors"));
  EXPECT_EQ(st.tensors.size(), 6u);  // only the MetaMLP, with PyLO's names
  EXPECT_EQ(st.tensors.at("network.linear_0.weight").sizes(), (std::vector<int64_t>{32, 32}));
  EXPECT_EQ(st.tensors.at("network.input.weight").sizes(), (std::vector<int64_t>{32, 39}));

  // A PyLO checkpoint has only network.* tensors: decay offsets are PyLO's constructor defaults
  // (the golden file records them).
  lopt::SafeTensors pylo;
  for (const auto& [name, t] : st.tensors) pylo.tensors[name] = t;
  lopt::write_safetensors(dir.path("pylo.safetensors"), pylo);
  auto loaded = lo->load(dir.path("pylo.safetensors"));
  EXPECT_TRUE(torch::equal(loaded.narrow(0, 0, theta.size(0) - 7), theta.narrow(0, 0, theta.size(0) - 7)));
  const auto& ctor = golden().at("hyperparameters").at("constructor_defaults");
  std::vector<float> pylo_offsets;
  for (const char* k : {"momentum_decays", "rms_decays", "adafactor_decays"})
    for (float v : ctor.at(k).get<std::vector<float>>()) pylo_offsets.push_back(v);
  EXPECT_TRUE(torch::equal(loaded.narrow(0, theta.size(0) - 7, 7), torch::tensor(pylo_offsets)));

  // Malformed files give IoError naming the file.
  auto expect_bad = [&](const std::string& bytes, const std::string& needle) {
    auto path = dir.path("bad.safetensors");
    std::ofstream(path, std::ios::binary) << bytes;
    try {
      lo->load(path);
      ADD_FAILURE() << "accepted " << needle;
    } catch (const lopt::IoError& e) {
      EXPECT_NE(std::string(e.what()).find("bad.safetensors"), std::string::npos);
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  auto with_header = [](const std::string& h, const std::string& data) {
    std::string out(8, '\0');
    for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((h.size() >> (8 * i)) & 0xff);
    return out + h + data;
  };
  expect_bad("abc", "too short");
  expect_bad(with_header("{\"a\": 1", ""), "not valid JSON");
  expect_bad(std::string("\xff\x00\x00\x00\x00\x00\x00\x00", 8) + "{}", "exceeds the file size");
  expect_bad(with_header(R"({"x": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}})", "1234"),
             "outside the data section");
  expect_bad(with_header(R"({"x": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}})", "1234"), "shape needs");
  lopt::SafeTensors small = pylo;
  small.tensors["network.input.weight"] = torch::zeros({16, 39});
  lopt::write_safetensors(dir.path("wrong_size.safetensors"), small);
  try {
    lo->load(dir.path("wrong_size.safetensors"));
    ADD_FAILURE() << "accepted a 16-wide MetaMLP";
  } catch (const lopt::IoError& e) {
    EXPECT_NE(std::string(e.what()).find("network.input.weight"), std::string::npos) << e.what();
  }
}

// LOPT_SIMD_TARGET pins dispatch for the process; an unknown name is a usage error listing the valid ones.
TEST(SmallFcLopt, SimdTargetFromEnvironmentIsChecked) {
  const char* old = std::getenv("LOPT_SIMD_TARGET");
  const std::string saved = old ? old : "";
  setenv("LOPT_SIMD_TARGET", "NOT_A_TARGET", 1);
  try {
    lopt::kernels::apply_target_from_env();
    ADD_FAILURE() << "accepted LOPT_SIMD_TARGET=NOT_A_TARGET";
  } catch (const lopt::UsageError& e) {
    EXPECT_NE(std::string(e.what()).find("NOT_A_TARGET"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find(lopt::kernels::target_name(lopt::kernels::available_targets().front())),
              std::string::npos) << e.what();
  }
  if (old) setenv("LOPT_SIMD_TARGET", saved.c_str(), 1);
  else unsetenv("LOPT_SIMD_TARGET");
}

// A checkpoint carries its config: omitted keys take the file's values, a conflicting key is a
// ConfigError naming both values unless listed in "override", and a PyLO file (no lopt metadata)
// is read with PyLO's defaults.
TEST(SmallFcLopt, CheckpointConfigWinsAndConflictsAreErrors) {
  lopt_test::TempDir dir;
  auto lo = lopt::make_small_fc_lopt({{"type", "small_fc_lopt"}, {"step_mult", 0.05}, {"hidden_size", 16}});
  auto gen = lopt::make_generator(7);
  auto theta = lo->init_theta(gen);
  const auto file = dir.path("sp.safetensors");
  lo->save(file, theta);

  // Omitted keys come from the file: an SP LO with step_mult 0.05 and 16 hidden units.
  auto opt = lopt::make_optimizer({{"type", "small_fc_lopt"}, {"checkpoint", file}});
  const auto hp = opt->hyperparams();
  EXPECT_EQ(hp.at("type"), "small_fc_lopt");
  EXPECT_EQ(hp.at("step_mult").get<double>(), 0.05);
  EXPECT_EQ(hp.at("hidden_size").get<int64_t>(), 16);

  // Loading an SP checkpoint as muLO, or with another step_mult: an error naming both values.
  auto expect_conflict = [&](const json& cfg, const std::string& key, const std::string& a, const std::string& b) {
    try {
      lopt::make_optimizer(cfg);
      ADD_FAILURE() << "accepted " << cfg.dump();
    } catch (const lopt::ConfigError& e) {
      EXPECT_EQ(e.path(), "/optimizer/" + key);
      EXPECT_NE(std::string(e.what()).find(a), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find(b), std::string::npos) << e.what();
    }
  };
  expect_conflict({{"type", "mulo"}, {"checkpoint", file}}, "type", "\"small_fc_lopt\"", "\"mulo\"");
  expect_conflict({{"type", "small_fc_lopt"}, {"checkpoint", file}, {"step_mult", 0.001}}, "step_mult", "0.05", "0.001");
  // ... unless the config says it overrides that key on purpose.
  auto over = lopt::make_optimizer(
      {{"type", "small_fc_lopt"}, {"checkpoint", file}, {"step_mult", 0.001}, {"override", {"step_mult"}}});
  EXPECT_EQ(over->hyperparams().at("step_mult").get<double>(), 0.001);
  lopt_test::expect_config_error([](const json& c) { lopt::make_optimizer(c); },
                                 {{"type", "small_fc_lopt"}, {"checkpoint", file}, {"override", {"lr"}}}, "/optimizer/override");

  // A PyLO file: geometry from its tensors, type from the config.
  lopt::SafeTensors pylo;
  for (const auto& [name, t] : lopt::read_safetensors(file).tensors) pylo.tensors[name] = t;
  lopt::write_safetensors(dir.path("pylo.safetensors"), pylo);
  auto from_pylo = lopt::make_optimizer({{"type", "mulo"}, {"checkpoint", dir.path("pylo.safetensors")}});
  EXPECT_EQ(from_pylo->hyperparams().at("type"), "mulo");
  EXPECT_EQ(from_pylo->hyperparams().at("hidden_size").get<int64_t>(), 16);
  EXPECT_EQ(from_pylo->hyperparams().at("step_mult").get<double>(), 0.01);
}

// save_hub writes what PyLO's MetaMLP.from_pretrained reads (model.safetensors with PyLO's names,
// config.json with MetaMLP's constructor arguments), and lopt reads the folder back to the same theta.
TEST(SmallFcLopt, HubLayoutRoundTrips) {
  lopt_test::TempDir dir;
  auto lo = lopt::make_small_fc_lopt({{"type", "mulo"}});
  auto gen = lopt::make_generator(8);
  auto theta = lo->init_theta(gen);
  theta.narrow(0, theta.size(0) - 7, 7).fill_(-0.125);
  lo->save_hub(dir.path("hub"), theta);
  const auto cfg = lopt::load_json_file(dir.path("hub/config.json"));
  EXPECT_EQ(cfg, json({{"input_size", 39}, {"hidden_size", 32}, {"hidden_layers", 1}}));
  const auto st = lopt::read_safetensors(dir.path("hub/model.safetensors"));
  EXPECT_EQ(st.tensors.size(), 6u);
  EXPECT_EQ(st.tensors.at("network.output.weight").sizes(), (std::vector<int64_t>{2, 32}));
  auto opt = lopt::make_optimizer({{"type", "mulo"}, {"checkpoint", dir.path("hub")}});
  auto* bound = dynamic_cast<lopt::SmallFcLoptOptimizer*>(opt.get());
  ASSERT_NE(bound, nullptr);
  EXPECT_TRUE(torch::equal(lo->load(dir.path("hub")), theta));
  // A config.json that disagrees with the tensors is named.
  lopt::write_text_atomic(dir.path("hub/config.json"), R"({"input_size": 39, "hidden_size": 64, "hidden_layers": 1})");
  lopt::SafeTensors bare;
  bare.tensors = st.tensors;
  lopt::write_safetensors(dir.path("hub/model.safetensors"), bare);
  try {
    lopt::read_checkpoint_config(dir.path("hub"));
    ADD_FAILURE() << "accepted a config.json that disagrees with model.safetensors";
  } catch (const lopt::IoError& e) {
    EXPECT_NE(std::string(e.what()).find("config.json"), std::string::npos) << e.what();
  }
}

// time_features_max_step: an update at step 40 with the cap at 7 is the update at step 7 without it
// (time features are the only input that depends on the step), on the tensor and fused paths.
TEST(SmallFcLopt, TimeFeatureCapHoldsTheFeaturesAtTheCap) {
  for (const std::string impl : {"tensor", "fused"}) {
    auto plain = lopt::make_small_fc_lopt({{"type", "mulo"}, {"impl", impl}});
    auto capped = lopt::make_small_fc_lopt({{"type", "mulo"}, {"impl", impl}, {"time_features_max_step", 7}});
    EXPECT_EQ(capped->hyperparams()["time_features_max_step"], 7);
    EXPECT_FALSE(plain->hyperparams().contains("time_features_max_step"));
    auto gen = lopt::make_generator(5);
    auto theta = plain->init_theta(gen);
    theta.add_(0.3 * torch::randn(theta.sizes(), gen));  // make the time-feature weights matter
    lopt::ParamSet params;
    params.tensors = {torch::randn({24, 16}, gen), torch::randn({16}, gen)};
    params.info = {{"w", lopt::ParamRole::hidden_weight, 16, 24, 2.0}, {"b", lopt::ParamRole::bias, 1, 16, 1.0}};
    std::vector<torch::Tensor> grads = {torch::randn({24, 16}, gen), torch::randn({16}, gen)};
    auto run = [&](const lopt::SmallFcLopt& lo, int64_t step) {
      auto opt = lo.bind(theta);
      auto s = opt->init(params.clone());
      s.step = step;
      opt->update_(s, grads, torch::zeros({}));
      return s.params.tensors[0];
    };
    EXPECT_TRUE(torch::allclose(run(*capped, 40), run(*plain, 7), 1e-6, 1e-7)) << impl;
    EXPECT_FALSE(torch::allclose(run(*plain, 40), run(*plain, 7), 1e-6, 1e-7)) << impl;
    EXPECT_TRUE(torch::allclose(run(*capped, 3), run(*plain, 3), 1e-6, 1e-7)) << impl;
  }
}

// A schedule on the learned optimizer's lr scales its step: a cosine to 0 over 10 steps leaves the
// parameters unchanged at step 10 and halves the step at step 5 (multiplier 0.5), on both paths.
TEST(SmallFcLopt, LrScheduleScalesTheStep) {
  for (const std::string impl : {"tensor", "fused"}) {
    nlohmann::json sched = {{"type", "warmup_cosine"}, {"warmup_steps", 0}, {"total_steps", 10}, {"final_fraction", 0.0}};
    auto plain = lopt::make_small_fc_lopt({{"type", "mulo"}, {"impl", impl}});
    auto cosine = lopt::make_small_fc_lopt({{"type", "mulo"}, {"impl", impl}, {"schedule", sched}});
    EXPECT_EQ(cosine->hyperparams()["schedule"]["total_steps"], 10);
    auto gen = lopt::make_generator(6);
    auto theta = plain->init_theta(gen);
    lopt::ParamSet params;
    params.tensors = {torch::randn({24, 16}, gen)};
    params.info = {{"w", lopt::ParamRole::hidden_weight, 16, 24, 1.0}};
    std::vector<torch::Tensor> grads = {torch::randn({24, 16}, gen)};
    auto delta = [&](const lopt::SmallFcLopt& lo, int64_t step) {
      auto opt = lo.bind(theta);
      auto s = opt->init(params.clone());
      s.step = step;
      opt->update_(s, grads, torch::zeros({}));
      return s.params.tensors[0] - params.tensors[0];
    };
    EXPECT_EQ(delta(*cosine, 10).abs().max().item<double>(), 0.0) << impl;
    // Deltas are read back as p_new - p in float32: one rounding of p (~1e-7) each.
    EXPECT_TRUE(torch::allclose(delta(*cosine, 5), 0.5 * delta(*plain, 5), 1e-3, 1e-6)) << impl;
    EXPECT_NEAR(cosine->bind(theta)->lr_at(5, params.info[0]), 0.5, 1e-12) << impl;
  }
}

namespace {

/// Steps `shapes` with the GPU algorithm (impl "gpu": the CUDA kernels for CUDA tensors, their host
/// emulation for CPU ones) and the float64 tensor-op path, 4 steps, comparing parameters and state.
void check_gpu_algorithm(const torch::Device& device, const json& extra) {
  const std::vector<std::vector<int64_t>> shapes = {{37}, {13, 29}, {5, 7, 3}, {3, 5, 2, 7}, {1}, {2, 1000},
                                                    {517, 9}, {33, 100}, {48, 48}, {}, {1, 1}, {6, 1, 4}};
  for (bool mup : {false, true}) {
    json cfg = {{"type", mup ? "mulo" : "small_fc_lopt"}, {"weight_decay", 0.01}, {"max_grad_norm", 5.0}, {"impl", "tensor"}};
    cfg.update(extra);
    auto tensor_lo = lopt::make_small_fc_lopt(cfg);
    cfg["impl"] = "gpu";
    auto gpu_lo = lopt::make_small_fc_lopt(cfg);
    auto gen = lopt::make_generator(41);
    auto theta = tensor_lo->init_theta(gen);
    theta.narrow(0, theta.size(0) - 7, 7).copy_(torch::randn({7}, gen) * 0.1);
    lopt::ParamSet params;
    for (const auto& s : shapes) {
      params.tensors.push_back(torch::randn(s, gen));
      params.info.push_back({"x", s.size() >= 2 ? lopt::ParamRole::hidden_weight : lopt::ParamRole::bias,
                             s.empty() ? 1 : s.back(), s.empty() ? 1 : s[0], 2.0});
    }
    // Parameters against float64 tensor ops; the state against float32 tensor ops (the decays are
    // float32 in both: 1 - beta for beta near 1 carries float32's rounding of beta).
    auto r_opt = tensor_lo->bind(theta.to(torch::kFloat64)), t_opt = tensor_lo->bind(theta), g_opt = gpu_lo->bind(theta);
    auto params64 = params.clone(), params_dev = params.clone();
    for (auto& t : params64.tensors) t = t.to(torch::kFloat64);
    for (auto& t : params_dev.tensors) t = t.to(device);
    auto rs = r_opt->init(params64), ts = t_opt->init(params.clone()), gs = g_opt->init(params_dev);
    for (int step = 0; step < 4; ++step) {
      std::vector<torch::Tensor> grads, grads64, grads_dev;
      for (const auto& p : params.tensors) {
        auto g = torch::randn(p.sizes(), gen) * (step + 1);
        grads.push_back(g);
        grads64.push_back(g.to(torch::kFloat64));
        grads_dev.push_back(g.to(device));
      }
      rs = r_opt->update(rs, grads64, torch::zeros({}));
      ts = t_opt->update(ts, grads, torch::zeros({}));
      g_opt->update_(gs, grads_dev, torch::zeros({}));
      for (size_t i = 0; i < shapes.size(); ++i) {
        const std::string where = device.str() + (mup ? " mulo" : " sp") + " " + extra.dump() + " step " +
                                  std::to_string(step) + " tensor " + c10::str(params.tensors[i].sizes());
        EXPECT_LT(rel_err(gs.params.tensors[i].cpu(), rs.params.tensors[i]), 1e-5) << where;
        for (const char* slot : {"mom", "rms", "fac_vec_row", "fac_vec_col", "fac_vec_v"})
          EXPECT_LT(scaled_err(gs.slots.at(slot)[i].cpu(), ts.slots.at(slot)[i]), 1e-5) << slot << ", " << where;
      }
    }
  }
}

}  // namespace

// The CUDA kernels' algorithm (kernels/lopt_gpu.h) run by its host emulation: the same per-element
// arithmetic, indexing (ranks 0-4, factored dims either way round, size-1 dims) and reductions as the
// GPU, against the float64 tensor-op path. Runs on every machine.
TEST(SmallFcLoptGpu, HostEmulationAgreesWithFloat64TensorOps) {
  check_gpu_algorithm(torch::kCPU, json::object());
  check_gpu_algorithm(torch::kCPU, {{"hidden_size", 16}, {"hidden_layers", 2}});
  check_gpu_algorithm(torch::kCPU, {{"hidden_size", 64}, {"hidden_layers", 0}});
}

// The same on a GPU, through the CUDA kernels (impl "gpu" and the default "fused", which picks them
// for CUDA tensors); a population of members with their own thetas in one launch equals their own steps.
TEST(SmallFcLoptGpu, CudaKernelsAgreeWithFloat64TensorOps) {
  if (!lopt::kernels::gpu::compiled()) GTEST_SKIP() << "built without LOPT_CUDA";
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device (or LibTorch without CUDA)";
  check_gpu_algorithm(torch::kCUDA, json::object());
  check_gpu_algorithm(torch::kCUDA, {{"hidden_size", 16}, {"hidden_layers", 2}});
  json cfg = {{"type", "mulo"}, {"impl", "fused"}};
  auto lo = lopt::make_small_fc_lopt(cfg);
  auto gen = lopt::make_generator(51);
  const std::vector<std::vector<int64_t>> shapes = {{32, 64}, {32}, {10, 32}, {517, 9}, {4, 6, 5}};
  std::vector<std::unique_ptr<lopt::Optimizer>> opts;
  std::vector<lopt::OptState> batched, single;
  for (int m = 0; m < 4; ++m) {
    opts.push_back(lo->bind(lo->init_theta(gen)));
    lopt::ParamSet p;
    for (const auto& s : shapes) {
      p.tensors.push_back(torch::randn(s, gen).to(torch::kCUDA));
      p.info.push_back({"x", s.size() >= 2 ? lopt::ParamRole::hidden_weight : lopt::ParamRole::bias, s.back(), s[0], 2.0});
    }
    batched.push_back(opts.back()->init(p.clone()));
    single.push_back(opts.back()->init(p.clone()));
  }
  for (int step = 0; step < 3; ++step) {
    std::vector<lopt::PopulationMember> members;
    for (int m = 0; m < 4; ++m) {
      std::vector<torch::Tensor> grads;
      for (const auto& s : shapes) grads.push_back(torch::randn(s, gen).to(torch::kCUDA));
      opts[static_cast<size_t>(m)]->update_(single[static_cast<size_t>(m)], grads, torch::zeros({}));
      members.push_back({opts[static_cast<size_t>(m)].get(), &batched[static_cast<size_t>(m)], grads, torch::zeros({})});
    }
    opts[0]->update_many_(members);
    for (int m = 0; m < 4; ++m)
      for (size_t i = 0; i < shapes.size(); ++i)
        EXPECT_LT(rel_err(batched[static_cast<size_t>(m)].params.tensors[i].cpu(), single[static_cast<size_t>(m)].params.tensors[i].cpu()), 1e-6)
            << "member " << m << " tensor " << i;
  }
}
