#include "optimizers/small_fc_lopt.h"

#include <gtest/gtest.h>

#include <fstream>

#include "common/errors.h"
#include "common/rng.h"
#include "optimizers/safetensors.h"
#include "support.h"

using json = nlohmann::json;

namespace {

torch::Tensor from_json(const json& j) {
  auto shape = j.at("shape").get<std::vector<int64_t>>();
  auto data = j.at("data").get<std::vector<float>>();
  return torch::tensor(data, torch::kFloat32).reshape(shape).clone();
}

/// |a - b| relative to max(|b|, 1e-3 * max|b|) elementwise, maximised.
double rel_err(const torch::Tensor& a, const torch::Tensor& b) {
  if (b.numel() == 0) return a.numel() == 0 ? 0.0 : 1e9;
  auto b64 = b.to(torch::kFloat64);
  double floor = std::max(1e-3 * b64.abs().max().item<double>(), 1e-30);
  return ((a.to(torch::kFloat64) - b64).abs() / b64.abs().clamp_min(floor)).max().item<double>();
}

/// max|a - b| / max|b|: for intermediate quantities whose near-zero entries come from cancellation.
double scaled_err(const torch::Tensor& a, const torch::Tensor& b) {
  if (b.numel() == 0) return a.numel() == 0 ? 0.0 : 1e9;
  auto b64 = b.to(torch::kFloat64);
  return (a.to(torch::kFloat64) - b64).abs().max().item<double>() / std::max(b64.abs().max().item<double>(), 1e-30);
}

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
  gc.lopt = lopt::make_learned_optimizer(cfg);
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

const json& golden() {
  static json j = [] {
    std::ifstream in(std::string(LOPT_TEST_DATA_DIR) + "/pylo_mulo_golden.json");
    return json::parse(in);
  }();
  return j;
}

}  // namespace

// Reproduces PyLO's AdafacLO_naive / MuLO_naive step by step: parameters, optimizer state and the
// exact MLP inputs and outputs (tensor-op path), parameters and state (fused path).
TEST(SmallFcLoptParity, MatchesPyloGoldenValues) {
  const auto& root = golden();
  ASSERT_GE(root.at("cases").size(), 1u);
  for (auto it = root.at("cases").begin(); it != root.at("cases").end(); ++it) {
    for (const std::string impl : {"tensor", "fused"}) {
      auto gc = load_case(root, it.key(), impl);
      auto opt = gc.lopt->bind(gc.theta);
      auto* lo = dynamic_cast<lopt::SmallFcLoptOptimizer*>(opt.get());
      ASSERT_NE(lo, nullptr);
      auto state = opt->init(gc.params);
      for (const auto& st : gc.steps) {
        std::vector<torch::Tensor> grads;
        for (const auto& g : st.at("grads")) grads.push_back(from_json(g));
        auto before = state.params.clone();
        std::vector<torch::Tensor> ins, outs;
        if (impl == "tensor") state = lo->step(state, grads, &ins, &outs);
        else opt->update_(state, grads, torch::zeros({}));
        const std::string where = gc.name + " " + impl + " step " + std::to_string(st.at("step").get<int>());
        for (size_t i = 0; i < grads.size(); ++i) {
          auto expected = from_json(st.at("params_after")[i]);
          auto key = std::to_string(i);
          EXPECT_LT(rel_err(state.params.tensors[i], expected), 1e-5) << where << " tensor " << i;
          EXPECT_LT(rel_err(state.params.tensors[i] - before.tensors[i], expected - before.tensors[i]), 1e-4)
              << where << " update of tensor " << i;
          const auto& sa = st.at("state_after").at(key);
          for (const char* slot : {"mom", "rms", "fac_vec_row", "fac_vec_col", "fac_vec_v"})
            EXPECT_LT(scaled_err(state.slots.at(slot)[i], from_json(sa.at(slot))), 1e-5) << where << " " << slot << " " << i;
          if (impl == "tensor") {
            const auto& io = st.at("mlp_io").at(key);
            EXPECT_LT(scaled_err(ins[i], from_json(io.at("mlp_input"))), 1e-5) << where << " mlp_input " << i;
            EXPECT_LT(scaled_err(outs[i], from_json(io.at("mlp_output"))), 1e-5) << where << " mlp_output " << i;
          }
        }
      }
    }
  }
}

TEST(SmallFcLopt, FusedKernelAgreesWithTensorOpsOnOddShapes) {
  for (bool mup : {false, true}) {
    json cfg = {{"type", mup ? "mulo" : "small_fc_lopt"}, {"weight_decay", 0.01}, {"max_grad_norm", 5.0}};
    auto tensor_lo = lopt::make_learned_optimizer(cfg);
    cfg["impl"] = "fused";
    auto fused_lo = lopt::make_learned_optimizer(cfg);
    auto gen = lopt::make_generator(11);
    auto theta = tensor_lo->init_theta(gen);
    theta.narrow(0, theta.size(0) - 7, 7).copy_(torch::randn({7}, gen) * 0.1);  // nonzero decay offsets
    lopt::ParamSet params;
    std::vector<std::vector<int64_t>> shapes = {{37}, {13, 29}, {5, 7, 3}, {3, 5, 2, 7}, {1}, {2, 1000}, {517, 9}};
    for (const auto& s : shapes) {
      params.tensors.push_back(torch::randn(s, gen));
      params.info.push_back({"x", s.size() >= 2 ? lopt::ParamRole::hidden_weight : lopt::ParamRole::bias, s.back(),
                             s[0], 2.0});
    }
    auto t_opt = tensor_lo->bind(theta), f_opt = fused_lo->bind(theta);
    auto ts = t_opt->init(params.clone()), fs = f_opt->init(params.clone());
    for (int step = 0; step < 4; ++step) {
      std::vector<torch::Tensor> grads;
      for (const auto& p : params.tensors) grads.push_back(torch::randn(p.sizes(), gen) * (step + 1));
      auto before = ts.params.clone();
      ts = t_opt->update(ts, grads, torch::zeros({}));
      f_opt->update_(fs, grads, torch::zeros({}));
      for (size_t i = 0; i < shapes.size(); ++i) {
        EXPECT_LT(rel_err(fs.params.tensors[i], ts.params.tensors[i]), 1e-5) << "step " << step << " tensor " << i;
        EXPECT_LT(rel_err(fs.params.tensors[i] - before.tensors[i], ts.params.tensors[i] - before.tensors[i]), 1e-3)
            << "update, step " << step << " tensor " << i;
      }
    }
  }
}

TEST(SmallFcLopt, TensorPathIsDifferentiableInThetaAndParams) {
  auto lo = lopt::make_learned_optimizer({{"type", "mulo"}, {"impl", "tensor"}});
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
  auto lo = lopt::make_learned_optimizer({{"type", "mulo"}});
  auto gen = lopt::make_generator(5);
  auto theta = lo->init_theta(gen);
  theta.narrow(0, theta.size(0) - 7, 7).fill_(0.25);
  lo->save(dir.path("theta.safetensors"), theta);
  EXPECT_TRUE(torch::equal(lo->load(dir.path("theta.safetensors")), theta));
  auto st = lopt::read_safetensors(dir.path("theta.safetensors"));
  EXPECT_EQ(st.tensors.size(), 6u);  // only the MetaMLP, with PyLO's names
  EXPECT_EQ(st.tensors.at("network.linear_0.weight").sizes(), (std::vector<int64_t>{32, 32}));
  EXPECT_EQ(st.tensors.at("network.input.weight").sizes(), (std::vector<int64_t>{32, 39}));

  // A PyLO checkpoint has only network.* tensors: decay offsets default to zero.
  lopt::SafeTensors pylo;
  for (const auto& [name, t] : st.tensors) pylo.tensors[name] = t;
  lopt::write_safetensors(dir.path("pylo.safetensors"), pylo);
  auto loaded = lo->load(dir.path("pylo.safetensors"));
  EXPECT_TRUE(torch::equal(loaded.narrow(0, 0, theta.size(0) - 7), theta.narrow(0, 0, theta.size(0) - 7)));
  EXPECT_EQ(loaded.narrow(0, theta.size(0) - 7, 7).abs().sum().item<float>(), 0.0f);

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
