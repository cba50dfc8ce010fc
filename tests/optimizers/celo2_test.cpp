#include "optimizers/celo2/celo2.h"

#include <gtest/gtest.h>

#include <torch/torch.h>

#include <cmath>
#include <fstream>

#include "common/config.h"
#include "common/errors.h"
#include "common/rng.h"
#include "experiments/coord_check.h"
#include "optimizers/muon.h"
#include "optimizers/optimizer.h"
#include "optimizers/safetensors.h"
#include "optimizers/small_fc_lopt/small_fc_lopt.h"
#include "support.h"

using json = nlohmann::json;
using lopt_test::from_json;
using lopt_test::scaled_err;

namespace {

const json& golden() { return lopt_test::test_data_json("pylo_celo2_elo_golden.json"); }

struct Case {
  std::unique_ptr<lopt::Celo2> lopt;
  torch::Tensor theta;
  lopt::ParamSet params;
};

/// A golden case (tests/data/gen_pylo_celo2_elo_golden.py) as a Celo2, its theta and the parameters: vectors
/// are biases, the case's embedding an embedding, the rest hidden weights.
Case load_case(const json& c, const json& extra = json::object()) {
  const auto& o = c.at("options");
  json cfg = {{"type", o.at("orthogonalize").get<bool>() ? "celo2" : "celo2_base"},
              {"lr", o.at("lr")},
              {"weight_decay", o.at("weight_decay")},
              {"exp_mult", o.at("exp_mult")},
              {"adamw_for_1d", o.at("use_adamw_for_1d")}};
  cfg.update(extra);
  Case out;
  out.lopt = std::make_unique<lopt::Celo2>(lopt::Celo2Config::from_json(cfg, "/optimizer"));
  std::map<std::string, torch::Tensor> named;
  for (auto it = c.at("network").begin(); it != c.at("network").end(); ++it) named[it.key()] = from_json(it.value());
  out.theta = out.lopt->flatten(named);
  const int64_t emb = c.at("embedding_index");
  for (const auto& t : c.at("initial_params")) {
    const auto i = static_cast<int64_t>(out.params.tensors.size());
    auto p = from_json(t);
    const auto role = i == emb ? lopt::ParamRole::embedding : p.dim() <= 1 ? lopt::ParamRole::bias : lopt::ParamRole::hidden_weight;
    out.params.tensors.push_back(p);
    out.params.info.push_back({"p" + std::to_string(i), role, 1, 1, 1.0});
  }
  return out;
}

}  // namespace

// Reproduces PyLO's CELO2_naive step by step (Celo2, Celo2-base, vectors through the network): the
// network's inputs and outputs of the first step (1e-5 of each tensor's largest entry; measured ~2e-7),
// then every parameter and state tensor after each of three steps. Both sides are float32 and differ
// in the order of float32 sums (the split first layer as one matmul, BLAS kernels). Newton–Schulz mixes
// every entry of a matrix into every other, so an update is compared as a whole, max|Δ| / max|update|
// < 3e-5: PyLO in float32 against PyLO in float64 differs by up to 8e-6 on these cases, lopt against
// PyLO by up to 1.1e-5 (rank 4), lopt's float32 step against its float64 one by 1e-6. (PyLO's own
// parity with the JAX original is 1e-4.) An element-wise relative test would fail on entries near zero.
TEST(Celo2Parity, MatchesPyloGoldenValues) {
  const auto& cases = golden().at("cases");
  ASSERT_EQ(cases.size(), 4u);
  for (auto it = cases.begin(); it != cases.end(); ++it) {
    if (it.key() == "elo") continue;  // ELO: tests/optimizers/elo_test.cpp
    SCOPED_TRACE(it.key());
    auto c = load_case(it.value());
    auto opt = c.lopt->bind(c.theta);
    auto* celo = dynamic_cast<lopt::Celo2Optimizer*>(opt.get());
    ASSERT_NE(celo, nullptr);
    auto state = opt->init(c.params);
    for (const auto& st : it.value().at("steps")) {
      const std::string where = "step " + std::to_string(st.at("step").get<int>());
      std::vector<torch::Tensor> grads;
      for (const auto& g : st.at("grads")) grads.push_back(from_json(g));
      if (st.contains("mlp_io")) {
        int checked = 0;
        for (size_t i = 0; i < grads.size(); ++i) {
          if (celo->uses_adamw(state.params, i)) {
            EXPECT_FALSE(st.at("mlp_io").contains(std::to_string(i))) << "PyLO ran the network on AdamW tensor " << i;
            continue;
          }
          const auto& io = st.at("mlp_io").at(std::to_string(i));
          std::array<torch::Tensor, 5> next;
          torch::Tensor in, out;
          const auto s = [&](const char* k) { return state.slots.at(k)[i]; };
          celo->learned_step(state.params.tensors[i], grads[i].clamp(-1000, 1000), s("mom"), s("rms"), s("fac_vec_row"),
                             s("fac_vec_col"), s("fac_vec_v"), next, &in, &out);
          EXPECT_LT(scaled_err(in, from_json(io.at("mlp_input"))), 1e-5) << where << " mlp_input " << i;
          EXPECT_LT(scaled_err(out, from_json(io.at("mlp_output"))), 1e-5) << where << " mlp_output " << i;
          ++checked;
        }
        EXPECT_GE(checked, 5);
      }
      auto before = state.params.clone();
      state = opt->update(state, grads, torch::zeros({}));
      for (size_t i = 0; i < grads.size(); ++i) {
        const auto expected = from_json(st.at("params_after")[i]);
        EXPECT_LT(scaled_err(state.params.tensors[i], expected), 1e-6) << where << " tensor " << i;
        EXPECT_LT(scaled_err(state.params.tensors[i] - before.tensors[i], expected - before.tensors[i]), 3e-5)
            << where << " update of tensor " << i;
        const auto& sa = st.at("state_after").at(std::to_string(i));
        for (auto s = sa.begin(); s != sa.end(); ++s)
          EXPECT_LT(scaled_err(state.slots.at(s.key())[i], from_json(s.value())), 1e-5) << where << " " << s.key() << " " << i;
      }
    }
  }
}

// The diagnostics' pre-orthogonalisation direction is what the step is made of: on each matrix the
// update equals rmsmult · NS(direction) / RMS(NS(direction)) (weight decay taken out); undefined on
// the tensors the network does not orthogonalise, and everywhere for Celo2-base; the state untouched.
TEST(Celo2, PreOrthogonalDirectionIsWhatNewtonSchulzTurnsIntoTheStep) {
  for (const char* name : {"celo2", "celo2_base"}) {
    SCOPED_TRACE(name);
    auto c = load_case(golden().at("cases").at(name));
    const auto& cfg = c.lopt->config();
    auto opt = c.lopt->bind(c.theta);
    auto* celo = dynamic_cast<lopt::Celo2Optimizer*>(opt.get());
    auto state = opt->init(c.params);
    const auto& st = golden().at("cases").at(name).at("steps");
    int matrices = 0;
    for (size_t k = 0; k < 2; ++k) {  // the first step and one with nonzero accumulators
      std::vector<torch::Tensor> grads;
      for (const auto& g : st[k].at("grads")) grads.push_back(from_json(g));
      auto before = state;
      before.slots.clear();
      for (const auto& [slot, v] : state.slots)
        for (const auto& t : v) before.slots[slot].push_back(t.clone());
      const auto dirs = opt->pre_orthogonal_directions(state, grads, torch::zeros({}));
      for (const auto& [slot, v] : state.slots)
        for (size_t i = 0; i < v.size(); ++i) EXPECT_TRUE(torch::equal(v[i], before.slots.at(slot)[i])) << slot << " " << i;
      auto next = opt->update(state, grads, torch::zeros({}));
      for (size_t i = 0; i < grads.size(); ++i) {
        const auto& p = state.params.tensors[i];
        const bool orthogonalised = cfg.orthogonalize && !celo->uses_adamw(state.params, i) && p.dim() >= 2;
        ASSERT_EQ(dirs[i].defined(), orthogonalised) << "tensor " << i;
        if (!orthogonalised || p.dim() != 2) continue;
        ASSERT_EQ(dirs[i].sizes(), p.sizes());
        const double lr = opt->lr_at(state.step, state.params.info[i]);
        const auto step = ((p - next.params.tensors[i]) / lr - cfg.weight_decay * p).to(torch::kFloat64);
        auto ns = lopt::newton_schulz(dirs[i].to(torch::kFloat64), cfg.ns_steps,
                                      {cfg.ns_coeffs[0], cfg.ns_coeffs[1], cfg.ns_coeffs[2]}, cfg.ns_eps);
        ns = ns * (cfg.rmsmult / ns.square().mean().sqrt());
        EXPECT_LT(scaled_err(step, ns), 1e-4) << "step " << k << " tensor " << i;
        ++matrices;
      }
      state = next;
    }
    EXPECT_EQ(matrices > 0, std::string(name) == "celo2");
  }
}

// zero_inputs ablates an input group: with "param" zeroed the network's direction no longer depends
// on the parameters' values (the same gradient and accumulators at other parameters give the same
// direction; without the ablation they do not); the fused kernel honours it as the tensor ops do;
// unknown names are config errors; the key is absent from the resolved config unless set.
TEST(Celo2, ZeroInputsAblatesAnInputGroup) {
  const auto& golden_case = golden().at("cases").at("celo2");
  const auto& g0 = golden_case.at("steps")[0].at("grads");
  std::vector<torch::Tensor> grads;
  for (const auto& g : g0) grads.push_back(from_json(g));
  auto plain = load_case(golden_case);
  auto ablated = load_case(golden_case, {{"zero_inputs", {"param"}}});
  auto ablated_tensor = load_case(golden_case, {{"zero_inputs", {"param"}}, {"impl", "tensor"}});
  EXPECT_FALSE(plain.lopt->config().to_json().contains("zero_inputs"));
  EXPECT_EQ(ablated.lopt->config().to_json().at("zero_inputs"), json({"param"}));
  auto opt = plain.lopt->bind(plain.theta), abl = ablated.lopt->bind(ablated.theta);
  auto state = opt->init(plain.params);
  auto moved = opt->init(plain.params.clone());
  for (auto& t : moved.params.tensors) t.mul_(-1.3).add_(0.05);
  const auto a = abl->pre_orthogonal_directions(state, grads, torch::zeros({}));
  const auto b = abl->pre_orthogonal_directions(moved, grads, torch::zeros({}));
  const auto c = opt->pre_orthogonal_directions(state, grads, torch::zeros({}));
  const auto d = opt->pre_orthogonal_directions(moved, grads, torch::zeros({}));
  int compared = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    if (!a[i].defined()) continue;
    EXPECT_LT(lopt_test::max_rel_error(b[i], a[i]), 1e-5) << "tensor " << i;
    EXPECT_GT(lopt_test::max_rel_error(d[i], c[i]), 1e-3) << "tensor " << i;
    ++compared;
  }
  EXPECT_GE(compared, 3);
  // The fused kernel (update_, float32 CPU matrices) against the tensor ops, both ablated.
  auto fused_state = abl->init(plain.params.clone());
  abl->update_(fused_state, grads, torch::zeros({}));
  const auto tensor_state = ablated_tensor.lopt->bind(ablated_tensor.theta)->update(abl->init(plain.params.clone()), grads,
                                                                                  torch::zeros({}));
  for (size_t i = 0; i < grads.size(); ++i)
    EXPECT_LT(lopt_test::update_err(fused_state.params.tensors[i], tensor_state.params.tensors[i], plain.params.tensors[i]),
              3e-4)
        << "tensor " << i;
  json bad = {{"type", "celo2"}, {"zero_inputs", {"theta"}}};
  lopt_test::expect_config_error([](const json& j) { lopt::Celo2Config::from_json(j, "/optimizer"); }, bad,
                                 "/optimizer/zero_inputs");
}

// The JAX meta-training wrapper's Adam branch (celo2.py Celo2 + AdamTransformation, bias_correction
// False), which PyLO does not implement: written out in float64 here.
TEST(Celo2, CeloJaxAdamwVariantMatchesAFloat64Reference) {
  auto c = load_case(golden().at("cases").at("celo2"), {{"adamw_variant", "celo_jax"}});
  EXPECT_EQ(c.lopt->config().adam_lr_mult, 20.0);
  EXPECT_EQ(c.lopt->config().adam_beta2, 0.999);
  auto opt = c.lopt->bind(c.theta);
  auto state = opt->init(c.params);
  const size_t vec = 2, emb = c.params.size() - 1;  // a bias and the embedding
  std::map<size_t, torch::Tensor> p, m, v;
  for (size_t i : {vec, emb}) {
    p[i] = c.params.tensors[i].to(torch::kFloat64);
    m[i] = torch::zeros_like(p[i]);
    v[i] = torch::zeros_like(p[i]);
  }
  const double lr = 0.01 * 20, wd = 0.1, eps = 1e-8;
  auto gen = lopt::make_generator(3);
  for (int s = 0; s < 3; ++s) {
    std::vector<torch::Tensor> grads;
    for (const auto& t : c.params.tensors) grads.push_back(torch::randn(t.sizes(), gen) * 50);  // some beyond no clamp
    state = opt->update(state, grads, torch::zeros({}));
    for (size_t i : {vec, emb}) {
      const auto g = grads[i].to(torch::kFloat64).clamp(-1000, 1000);
      const double b1 = 0.9f, b2 = 0.999f;  // the decays as float32 holds them
      m[i] = b1 * m[i] + (1 - b1) * g;
      v[i] = b2 * v[i] + (1 - b2) * g * g;
      p[i] = p[i] - lr * (m[i] / (v[i] + eps).sqrt()) - wd * p[i] * lr;
      EXPECT_LT(scaled_err(state.params.tensors[i], p[i]), 1e-6) << "step " << s << " tensor " << i;
    }
  }
}

TEST(Celo2, ThetaLayoutSaveLoadAndHub) {
  lopt::Celo2 lo(lopt::Celo2Config::from_json({{"type", "celo2"}}, "/lopt"));
  // CELO2MLP(hidden 8, hidden_layers 2): 30 x 8 split input + 8, then 8 x 8 + 8, 8 x 3 + 3.
  EXPECT_EQ(lo.num_theta(), 30 * 8 + 8 + 8 * 8 + 8 + 8 * 3 + 3);
  auto gen = lopt::make_generator(1);
  const auto theta = lo.init_theta(gen);
  // Haiku's truncated normal: |w| <= 2 sigma, sigma = 1/sqrt(30) for the split input weights.
  auto named = lo.unflatten(theta);
  EXPECT_LE(named.at("w0.3").abs().max().item<double>(), 2 / std::sqrt(30.0) + 1e-6);
  EXPECT_NEAR(named.at("dense_w.0").std().item<double>(), 1 / std::sqrt(8.0) * 0.88, 0.12);  // 0.88: 2-sigma truncation
  EXPECT_EQ(named.at("b0").abs().sum().item<double>(), 0.0);
  lopt_test::TempDir dir;
  lo.save_hub(dir.path("hub"), theta);
  EXPECT_TRUE(torch::equal(lo.load(dir.path("hub")), theta));
  const auto cfg = lopt::load_json_file(dir.path("hub/config.json"));
  EXPECT_EQ(cfg.at("hidden_layers"), 2);
  EXPECT_EQ(cfg.at("feature_dims").size(), 14u);
  // A checkpoint of Celo2 is refused by muLO, and celo2_base reads celo2's (one family).
  lo.save(dir.path("t.safetensors"), theta);
  lopt_test::expect_config_error(
      [](const json& j) { lopt::make_optimizer(j); }, {{"type", "mulo"}, {"checkpoint", dir.path("t.safetensors")}},
      "/optimizer/type");
  lopt_test::expect_config_error(
      [](const json& j) { lopt::make_optimizer(j); }, {{"type", "celo2_base"}, {"checkpoint", dir.path("t.safetensors")}},
      "/optimizer/type");
  auto same = lopt::make_optimizer({{"type", "celo2_base"}, {"checkpoint", dir.path("t.safetensors")}, {"override", {"type"}}});
  EXPECT_EQ(same->hyperparams().at("type"), "celo2_base");
}

TEST(Celo2, BadConfigsNameTheKey) {
  auto build = [](const json& j) { lopt::Celo2Config::from_json(j, "/optimizer"); };
  lopt_test::expect_config_error(build, {{"adamw_variant", "optax"}}, "/optimizer/adamw_variant");
  lopt_test::expect_config_error(build, {{"hidden_layers", 0}}, "/optimizer/hidden_layers");
  lopt_test::expect_config_error(build, {{"ns_coeffs", {1.0, 2.0}}}, "/optimizer/ns_coeffs");
  lopt_test::expect_config_error(build, {{"adam_beta2", 1.0}}, "/optimizer/adam_beta2");
  lopt_test::expect_config_error(build, {{"lr", -1e-3}}, "/optimizer/lr");
  lopt_test::expect_config_error(build, {{"grad_clip", 0}}, "/optimizer/grad_clip");
  lopt_test::expect_config_error(build, {{"initial_rms_decays", {0.9, 0.99}}}, "/optimizer/initial_rms_decays");
  lopt_test::expect_config_error(build, {{"step_mult", 1e-3}}, "/optimizer/step_mult");  // a small_fc_lopt key
}

// μCelo2's coordinate check. Celo2's update is RMS-normalised per tensor (and orthogonalised), so its
// entries are O(1) at every width; when it is aligned with the gradient, as a trained Celo2's is, a
// hidden layer's activations then change in proportion to the width under one lr for every tensor,
// even with the μP task parametrization. μCelo2 scales the hidden weights' lr by 1/width_mult (the μLO
// construction) and the activations stay flat. The probe is a hand-set theta whose direction is the
// normalised gradient (relu(g) - relu(-g) through the two hidden layers), so the check is of the
// update's form, not of a particular meta-training. Ratios: width 256 over width 64, every layer and
// step, both runs under the μP parametrization; printed, and bounded with a wide margin.
TEST(Celo2, MuCelo2PassesTheCoordinateCheckAndCelo2DoesNot) {
  lopt::Celo2 lo(lopt::Celo2Config::from_json({{"type", "celo2"}}, "/lopt"));
  std::map<std::string, torch::Tensor> named;
  for (const auto& [name, shape] : lo.theta_layout()) named[name] = torch::zeros(shape);
  named["w0.0"][0][0] = 1.0;   // hidden 0 = relu(g), hidden 1 = relu(-g)
  named["w0.0"][0][1] = -1.0;
  named["dense_w.0"][0][0] = 1.0;
  named["dense_w.0"][1][1] = 1.0;
  named["dense_w.1"][0][0] = 1.0;  // direction = hidden 0 - hidden 1 = g (normalised)
  named["dense_w.1"][1][0] = -1.0;
  lopt_test::TempDir dir;
  const auto file = dir.path("grad_direction.safetensors");
  lo.save(file, lo.flatten(named));
  auto ratios = [&](const std::string& type) {
    lopt::CoordCheckConfig c;
    c.widths = {64, 256};
    c.parametrizations = {"mup"};
    c.depth = 3;
    c.steps = 4;
    c.seeds = 1;
    c.image_size = 8;
    c.dataset = "synthetic";
    c.optimizers = {{"mup", {{"type", type}, {"lr", 3e-2}, {"checkpoint", file}, {"override", {"type"}}}}};
    auto r = lopt::run_coord_check(c, lopt::ProgressMode::quiet);
    double lo_r = 1e9, hi_r = 0;
    for (int64_t t = 1; t <= c.steps; ++t)
      for (size_t l = 0; l < r.layers.size(); ++l) {
        const double m = r.at(0, 1, t, l) / r.at(0, 0, t, l);
        lo_r = std::min(lo_r, m);
        hi_r = std::max(hi_r, m);
      }
    std::printf("coord check %s: width 256 / width 64 activation RMS in [%.3f, %.3f]\n", type.c_str(), lo_r, hi_r);
    return std::make_pair(lo_r, hi_r);
  };
  const auto mu = ratios("mucelo2"), plain = ratios("celo2");
  EXPECT_GT(mu.first, 0.5);
  EXPECT_LT(mu.second, 2.0);
  EXPECT_GT(plain.second, 2.0);
}

// A PyLO file of one family's network given to another family: a config error naming both.
TEST(Celo2, AForeignNetworkOfTheOtherFamilyIsAConfigError) {
  lopt_test::TempDir dir;
  // PyLO-style files: tensors only, no lopt metadata.
  lopt::SafeTensors metamlp, celo2mlp;
  auto small = lopt::make_small_fc_lopt({{"type", "small_fc_lopt"}});
  auto gen = lopt::make_generator(5);
  for (const auto& [name, t] : small->unflatten(small->init_theta(gen)))
    if (name.rfind("network.", 0) == 0) metamlp.tensors[name] = t;
  lopt::Celo2 celo(lopt::Celo2Config::from_json({{"type", "celo2"}}, "/lopt"));
  celo2mlp.tensors = celo.unflatten(celo.init_theta(gen));
  lopt::write_safetensors(dir.path("metamlp.safetensors"), metamlp);
  lopt::write_safetensors(dir.path("celo2mlp.safetensors"), celo2mlp);
  auto make = [](const json& j) { lopt::make_optimizer(j); };
  lopt_test::expect_config_error(make, {{"type", "celo2"}, {"checkpoint", dir.path("metamlp.safetensors")}}, "/optimizer/type");
  lopt_test::expect_config_error(make, {{"type", "mulo"}, {"checkpoint", dir.path("celo2mlp.safetensors")}}, "/optimizer/type");
  lopt_test::expect_config_error(make, {{"type", "elo"}, {"checkpoint", dir.path("celo2mlp.safetensors")}}, "/optimizer/type");
  // Each family reads its own foreign file (geometry from the tensors).
  EXPECT_EQ(lopt::make_optimizer({{"type", "celo2"}, {"checkpoint", dir.path("celo2mlp.safetensors")}})->hyperparams().at("hidden_size"), 8);
  EXPECT_EQ(lopt::make_optimizer({{"type", "elo"}, {"checkpoint", dir.path("metamlp.safetensors")}})->hyperparams().at("hidden_size"), 32);
}

namespace {

/// A deep copy of a state (update_ may change slots in place).
lopt::OptState clone_state(const lopt::OptState& s) {
  lopt::OptState c = s;
  c.params = s.params.clone();
  for (auto& [name, v] : c.slots)
    for (auto& t : v) t = t.clone();
  return c;
}

/// Largest |a - b| over every parameter and slot of two states, relative to the largest |b|.
double state_diff(const lopt::OptState& a, const lopt::OptState& b) {
  double diff = 0, scale = 1e-30;
  auto add = [&](const torch::Tensor& x, const torch::Tensor& y) {
    EXPECT_EQ(x.sizes(), y.sizes());
    if (x.numel() == 0) return;
    diff = std::max(diff, (x - y).abs().max().item<double>());
    scale = std::max(scale, y.abs().max().item<double>());
  };
  for (size_t i = 0; i < b.params.size(); ++i) add(a.params.tensors[i], b.params.tensors[i]);
  for (const auto& [name, v] : b.slots)
    for (size_t i = 0; i < v.size(); ++i) add(a.slots.at(name)[i], v[i]);
  return diff / scale;
}

}  // namespace

// A population step (update_many_: members stacked, one network per member through batched matmuls
// or, fused, one kernel call for every member's matrices and batched Newton–Schulz; each member at its
// own step's lr) equals stepping the members one at a time, for every type, both AdamW variants,
// weight decay, global-norm clipping, a schedule, vectors through the net, and both impls.
TEST(Celo2, PopulationStepMatchesOneMemberAtATime) {
  std::vector<json> configs = {
      {{"type", "celo2"}, {"weight_decay", 0.1}, {"schedule", {{"type", "warmup_cosine"}, {"total_steps", 10}, {"warmup_steps", 2}}}},
      {{"type", "celo2_base"}, {"adamw_variant", "celo_jax"}, {"max_grad_norm", 0.5}},
      {{"type", "mucelo2"}, {"adamw_for_1d", false}, {"exp_mult", 0.01}}};
  for (size_t k = 0, n = configs.size(); k < n; ++k) {
    configs.push_back(configs[k]);
    configs.back()["impl"] = "tensor";
  }
  for (const auto& cfg : configs) {
    SCOPED_TRACE(cfg.dump());
    lopt::Celo2 lo(lopt::Celo2Config::from_json(cfg, "/optimizer"));
    auto gen = lopt::make_generator(5);
    const int M = 4;
    std::vector<std::unique_ptr<lopt::Optimizer>> opts;
    std::vector<lopt::OptState> batched, single;
    std::vector<std::vector<torch::Tensor>> grads;
    for (int m = 0; m < M; ++m) {
      opts.push_back(lo.bind(lo.init_theta(gen)));
      lopt::ParamSet p;
      const std::vector<std::vector<int64_t>> shapes = {{6, 4}, {3, 7}, {5}, {9, 2}, {1, 3}};
      const std::vector<lopt::ParamRole> roles = {lopt::ParamRole::hidden_weight, lopt::ParamRole::output_weight,
                                                  lopt::ParamRole::bias, lopt::ParamRole::embedding,
                                                  lopt::ParamRole::hidden_weight};
      for (size_t k = 0; k < shapes.size(); ++k) {
        p.tensors.push_back(torch::randn(shapes[k], gen));
        p.info.push_back({"p" + std::to_string(k), roles[k], shapes[k].back(), shapes[k][0], 2.0});
      }
      auto s = opts.back()->init(p);
      // Members at different steps (different lr, bias correction and accumulators).
      for (int k = 0; k < m; ++k) {
        std::vector<torch::Tensor> g;
        for (const auto& t : s.params.tensors) g.push_back(torch::randn(t.sizes(), gen));
        opts.back()->update_(s, g, torch::zeros({}));
      }
      batched.push_back(clone_state(s));
      single.push_back(clone_state(s));
      std::vector<torch::Tensor> g;
      for (const auto& t : s.params.tensors) g.push_back(torch::randn(t.sizes(), gen) * std::pow(10.0, m - 2));
      grads.push_back(g);
    }
    for (int round = 0; round < 2; ++round) {
      std::vector<lopt::PopulationMember> members;
      for (int m = 0; m < M; ++m) members.push_back({opts[m].get(), &batched[m], grads[m], torch::zeros({})});
      opts[0]->update_many_(members);
      for (int m = 0; m < M; ++m) opts[m]->update_(single[m], grads[m], torch::zeros({}));
    }
    for (int m = 0; m < M; ++m) {
      EXPECT_EQ(batched[m].step, single[m].step);
      EXPECT_LT(state_diff(batched[m], single[m]), 1e-5) << "member " << m;
    }
  }
}

// The fused path (impl "fused": features and network in the SIMD kernel shared with μLO, every
// compiled target) against the tensor ops in float64, and the float32 tensor ops against the same
// reference to show what float32 itself costs: matrices in both kernel layouts (rows: blocks along
// a row; generic: lanes across rows), either dimension the larger, size-1 dimensions, a schedule,
// weight decay, exp_mult, an element-wise clamp that bites (applied by the kernel as it reads g), μCelo2, and tensors the kernel does not take (rank 3, vectors through the
// network) beside them. Four steps, gradients over four decades; lr ~1 so that an update is as large
// as the parameter and float32's representation of p does not hide the step's error.
TEST(Celo2, FusedStepMatchesTensorOpsOnEveryTarget) {
  const std::vector<std::vector<int64_t>> shapes = {{13, 29}, {64, 96}, {100, 33}, {33, 100}, {2, 300},
                                                    {1, 40},  {40, 1},  {5, 7, 3},  {37}};
  const std::vector<json> configs = {
      {{"type", "celo2"}, {"lr", 1.0}, {"weight_decay", 0.1}, {"schedule", {{"type", "warmup_cosine"}, {"total_steps", 6}, {"warmup_steps", 2}}}},
      {{"type", "celo2_base"}, {"lr", 1.0}, {"exp_mult", 0.3}, {"grad_clip", 0.5}},
      {{"type", "mucelo2"}, {"lr", 2.0}, {"adamw_for_1d", false}}};
  lopt_test::for_each_kernel_target([&](const std::string& target) {
    double worst_fused = 0, worst_tensor = 0;
    for (const auto& base : configs) {
      auto gen = lopt::make_generator(31);
      json fcfg = base, tcfg = base;
      fcfg["impl"] = "fused";
      tcfg["impl"] = "tensor";
      lopt::Celo2 flo(lopt::Celo2Config::from_json(fcfg, "/optimizer")), tlo(lopt::Celo2Config::from_json(tcfg, "/optimizer"));
      const auto theta = tlo.init_theta(gen);
      auto f_opt = flo.bind(theta), t_opt = tlo.bind(theta), r_opt = tlo.bind(theta.to(torch::kFloat64));
      lopt::ParamSet params;
      for (size_t k = 0; k < shapes.size(); ++k) {
        params.tensors.push_back(torch::randn(shapes[k], gen));
        params.info.push_back({"p" + std::to_string(k), shapes[k].size() == 1 ? lopt::ParamRole::bias : lopt::ParamRole::hidden_weight,
                               shapes[k].back(), shapes[k][0], 2.0});
      }
      auto params64 = params.clone();
      for (auto& t : params64.tensors) t = t.to(torch::kFloat64);
      auto fs = f_opt->init(params.clone()), ts = t_opt->init(params.clone()), rs = r_opt->init(params64);
      for (int step = 0; step < 4; ++step) {
        std::vector<torch::Tensor> grads, grads64;
        for (const auto& p : params.tensors) grads.push_back(torch::randn(p.sizes(), gen) * std::pow(10.0, step - 2));
        for (const auto& g : grads) grads64.push_back(g.to(torch::kFloat64));
        const auto before = rs.params.clone();
        f_opt->update_(fs, grads, torch::zeros({}));
        ts = t_opt->update(ts, grads, torch::zeros({}));
        rs = r_opt->update(rs, grads64, torch::zeros({}));
        for (size_t i = 0; i < shapes.size(); ++i) {
          const std::string where = target + " " + base.dump() + " step " + std::to_string(step) + " tensor " +
                                    c10::str(params.tensors[i].sizes());
          // Newton–Schulz and the normalisation mix every entry of a matrix into every other: an
          // update is compared as a whole (max|Δ| / max|update|), as in the PyLO parity test.
          const auto upd = [&](const torch::Tensor& p) { return p.to(torch::kFloat64) - before.tensors[i]; };
          const auto ref = upd(rs.params.tensors[i]);
          const double fused = scaled_err(upd(fs.params.tensors[i]), ref), tensor32 = scaled_err(upd(ts.params.tensors[i]), ref);
          EXPECT_LT(fused, std::max(2e-5, 3 * tensor32)) << "update, " << where << " (float32 tensor ops: " << tensor32 << ")";
          worst_fused = std::max(worst_fused, fused);
          worst_tensor = std::max(worst_tensor, tensor32);
          for (const char* slot : {"mom", "rms", "fac_vec_row", "fac_vec_col", "fac_vec_v", "exp_avg", "exp_avg_sq"})
            EXPECT_LT(scaled_err(fs.slots.at(slot)[i], rs.slots.at(slot)[i]), 1e-5) << slot << ", " << where;
        }
      }
      EXPECT_EQ(fs.step, 4);
    }
    std::cout << "[ " << target << " ] worst update error vs float64: fused " << worst_fused << ", float32 tensor ops "
              << worst_tensor << "\n";
  });
}
