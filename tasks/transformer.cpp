#include "tasks/transformer.h"

#include "common/device.h"

#include <torch/torch.h>

#include <cmath>

#include "common/config.h"

namespace lopt {

TransformerConfig TransformerConfig::from_json(const nlohmann::json& j, const std::string& path) {
  ConfigReader r(j, path);
  auto type = r.get<std::string>("type", "transformer_lm");
  config_check(type == "transformer_lm", r.path_of("type"), "expected \"transformer_lm\", got \"" + type + "\"");
  TransformerConfig c;
  c.width = r.get<int64_t>("width", c.width);
  c.depth = r.get<int64_t>("depth", c.depth);
  c.heads = r.get<int64_t>("heads", c.heads);
  c.context = r.get<int64_t>("context", c.context);
  c.batch_size = r.get<int64_t>("batch_size", c.batch_size);
  c.mlp_ratio = r.get<int64_t>("mlp_ratio", c.mlp_ratio);
  c.rope_base = r.get<double>("rope_base", c.rope_base);
  c.corpus = r.get<std::string>("corpus", c.corpus);
  c.data_dir = r.get<std::string>("data_dir", c.data_dir);
  c.max_corpus_bytes = r.get<int64_t>("max_corpus_bytes", c.max_corpus_bytes);
  if (auto p = r.object("parametrization"); !p.empty()) c.parametrization = p;
  auto moe = r.object("moe");
  c.replay_corpus = r.get<std::string>("replay_corpus", c.replay_corpus);
  c.replay_data_dir = r.get<std::string>("replay_data_dir", c.replay_data_dir);
  c.replay_fraction = r.get<double>("replay_fraction", c.replay_fraction);
  r.finish();
  config_check(std::isfinite(c.replay_fraction) && c.replay_fraction >= 0 && c.replay_fraction < 1, r.path_of("replay_fraction"),
               "must be in [0, 1) (the share of every batch from replay_corpus)");
  config_check(c.replay_fraction == 0 || !c.replay_corpus.empty(), r.path_of("replay_corpus"),
               "names the corpus replayed (english, german, code) when replay_fraction > 0");
  if (!c.replay_corpus.empty()) {
    try {
      TextSourceConfig::from_json(c.replay_source().to_json(), path);
    } catch (const ConfigError& e) {
      throw ConfigError(r.path_of("replay_corpus"), e.message());
    }
  }
  c.moe = MoeConfig::from_json(moe, r.path_of("moe"));
  config_check(c.width >= 2 && c.width <= 16384, r.path_of("width"), "must be in 2..16384, got " + std::to_string(c.width));
  config_check(c.depth >= 1 && c.depth <= 256, r.path_of("depth"), "must be in 1..256 (number of blocks), got " + std::to_string(c.depth));
  config_check(c.heads >= 1 && c.width % c.heads == 0 && (c.width / c.heads) % 2 == 0, r.path_of("heads"),
               "must divide the width into heads of even size (rotary embeddings rotate pairs); width " +
                   std::to_string(c.width) + ", heads " + std::to_string(c.heads));
  config_check(c.context >= 1 && c.context <= 8192, r.path_of("context"), "must be in 1..8192, got " + std::to_string(c.context));
  config_check(c.batch_size >= 1 && c.batch_size <= 65536, r.path_of("batch_size"), "must be in 1..65536, got " + std::to_string(c.batch_size));
  config_check(c.mlp_ratio >= 1 && c.mlp_ratio <= 64, r.path_of("mlp_ratio"), "must be in 1..64, got " + std::to_string(c.mlp_ratio));
  config_check(std::isfinite(c.rope_base) && c.rope_base > 1, r.path_of("rope_base"), "must be > 1");
  // Corpus name and sizes are checked where they live, with this task's paths.
  try {
    TextSourceConfig::from_json(c.text_source().to_json(), path);
  } catch (const ConfigError& e) {
    std::string p = e.path();
    if (p == path + "/dir") p = path + "/data_dir";
    if (p == path + "/max_bytes") p = path + "/max_corpus_bytes";
    throw ConfigError(p, e.message());
  }
  c.parametrization = make_parametrization(c.parametrization, r.path_of("parametrization"))->hyperparams();
  return c;
}

nlohmann::json TransformerConfig::to_json() const {
  nlohmann::json j = {{"type", "transformer_lm"}, {"width", width},       {"depth", depth},       {"heads", heads},
                      {"context", context},       {"batch_size", batch_size}, {"mlp_ratio", mlp_ratio}, {"rope_base", rope_base},
                      {"corpus", corpus},         {"data_dir", data_dir}, {"max_corpus_bytes", max_corpus_bytes},
                      {"parametrization", parametrization}};
  if (moe.enabled()) j["moe"] = moe.to_json();  // dense configs (and the run files keyed by them) unchanged
  if (replay_fraction > 0) {
    j["replay_corpus"] = replay_corpus;
    j["replay_data_dir"] = replay_data_dir;
    j["replay_fraction"] = replay_fraction;
  }
  return j;
}

TextSourceConfig TransformerConfig::replay_source() const {
  auto rc = text_source();
  rc.corpus = replay_corpus;
  rc.dir = replay_data_dir;
  return rc;
}

TextSourceConfig TransformerConfig::text_source() const {
  TextSourceConfig t;
  t.corpus = corpus;
  t.dir = data_dir;
  t.context = context;
  t.max_bytes = max_corpus_bytes;
  return t;
}

namespace {
/// The task's data: its corpus, or with replay a mixture of it and the replayed corpus.
std::shared_ptr<const DataSource> make_lm_source(const TransformerConfig& c) {
  auto main = std::make_shared<const TextSource>(c.text_source());
  if (c.replay_fraction <= 0) return main;
  return std::make_shared<const MixtureSource>(
      std::vector<std::shared_ptr<const DataSource>>{main, std::make_shared<const TextSource>(c.replay_source())},
      std::vector<double>{1.0 - c.replay_fraction, c.replay_fraction});
}
}  // namespace

TransformerLmTask::TransformerLmTask(TransformerConfig config) : TransformerLmTask(config, make_lm_source(config)) {}

TransformerLmTask::TransformerLmTask(TransformerConfig config, std::shared_ptr<const DataSource> data)
    : config_(std::move(config)), data_(std::move(data)) {
  param_ = make_parametrization(config_.parametrization, "/task/parametrization");
  config_.parametrization = param_->hyperparams();
  const int64_t dh = config_.width / config_.heads, T = config_.context;
  // muP: q.k / d_head (microsoft/mup, mu_transformer.py); SP: / sqrt(d_head).
  attn_scale_ = param_->name() == "mup" ? 1.0 / static_cast<double>(dh) : 1.0 / std::sqrt(static_cast<double>(dh));
  const auto info = param_info();
  readout_mult_ = param_->forward_mult(info[info.size() - 2]);  // readout.weight
  // Rotary embeddings (Su et al.): pair (i, i + dh/2) rotated by angle t * base^(-2i/dh).
  auto inv_freq = torch::pow(config_.rope_base, torch::arange(0, dh / 2, torch::kFloat64).mul(-2.0 / static_cast<double>(dh)));
  auto angles = torch::outer(torch::arange(T, torch::kFloat64), inv_freq);
  // Tables [2, 1, 1, T, dh/2]: index 0 rotates q and folds in the attention scale, index 1 rotates k.
  auto scale = torch::tensor({attn_scale_, 1.0}, torch::kFloat64).view({2, 1, 1, 1, 1});
  rope_cos_ = on_compute_device((angles.cos().view({1, 1, 1, T, dh / 2}) * scale).to(torch::kFloat32));
  rope_sin_ = on_compute_device((angles.sin().view({1, 1, 1, T, dh / 2}) * scale).to(torch::kFloat32));
  causal_mask_ = on_compute_device(torch::full({T, T}, -std::numeric_limits<float>::infinity()).triu(1));
}

std::vector<ParamInfo> TransformerLmTask::param_info() const {
  const int64_t d = config_.width, f = config_.mlp_ratio * d;
  const double wm = param_->width_mult(d);
  std::vector<ParamInfo> p;
  p.push_back({"embedding.weight", ParamRole::embedding, kVocab, d, wm});
  for (int64_t l = 0; l < config_.depth; ++l) {
    const std::string b = "block_" + std::to_string(l) + ".";
    p.push_back({b + "ln_1.weight", ParamRole::norm_gain, 1, d, wm});
    p.push_back({b + "ln_1.bias", ParamRole::bias, 1, d, wm});
    p.push_back({b + "attn.qkv.weight", ParamRole::hidden_weight, d, 3 * d, wm});
    p.push_back({b + "attn.out.weight", ParamRole::hidden_weight, d, d, wm});
    p.push_back({b + "ln_2.weight", ParamRole::norm_gain, 1, d, wm});
    p.push_back({b + "ln_2.bias", ParamRole::bias, 1, d, wm});
    if (!config_.moe.enabled()) {
      p.push_back({b + "mlp.fc_1.weight", ParamRole::hidden_weight, d, f, wm});
      p.push_back({b + "mlp.fc_1.bias", ParamRole::bias, 1, f, wm});
      p.push_back({b + "mlp.fc_2.weight", ParamRole::hidden_weight, f, d, wm});
      p.push_back({b + "mlp.fc_2.bias", ParamRole::bias, 1, d, wm});
      continue;
    }
    // The router maps the residual stream to E logits: a hidden-type weight (init N(0, 1/d), muP LR
    // x 1/width_mult), so that routing is not degenerate at initialisation (a zero readout-style
    // router would send every token to expert 0).
    const int64_t E = config_.moe.experts, h = config_.moe.hidden(d, config_.mlp_ratio);
    p.push_back({b + "moe.router.weight", ParamRole::hidden_weight, d, E, wm});
    p.push_back({b + "moe.experts.fc_1.weight", ParamRole::hidden_weight, d, h, wm});
    p.push_back({b + "moe.experts.fc_1.bias", ParamRole::bias, 1, h, wm});
    p.push_back({b + "moe.experts.fc_2.weight", ParamRole::hidden_weight, h, d, wm});
    p.push_back({b + "moe.experts.fc_2.bias", ParamRole::bias, 1, d, wm});
    if (config_.moe.shared_experts > 0) {
      const int64_t hs = h * config_.moe.shared_experts;  // s shared experts = one MLP of s*h units
      p.push_back({b + "moe.shared.fc_1.weight", ParamRole::hidden_weight, d, hs, wm});
      p.push_back({b + "moe.shared.fc_1.bias", ParamRole::bias, 1, hs, wm});
      p.push_back({b + "moe.shared.fc_2.weight", ParamRole::hidden_weight, hs, d, wm});
      p.push_back({b + "moe.shared.fc_2.bias", ParamRole::bias, 1, d, wm});
    }
  }
  p.push_back({"ln_f.weight", ParamRole::norm_gain, 1, d, wm});
  p.push_back({"ln_f.bias", ParamRole::bias, 1, d, wm});
  p.push_back({"readout.weight", ParamRole::output_weight, d, kVocab, wm});
  p.push_back({"readout.bias", ParamRole::bias, 1, kVocab, 1.0});
  return p;
}

std::vector<std::vector<int64_t>> TransformerLmTask::param_shapes() const {
  std::vector<std::vector<int64_t>> shapes;
  for (const auto& info : param_info()) {
    const bool vec = info.role == ParamRole::bias || info.role == ParamRole::norm_gain;
    std::vector<int64_t> shape = vec ? std::vector<int64_t>{info.fan_out} : std::vector<int64_t>{info.fan_out, info.fan_in};
    if (info.role == ParamRole::embedding) shape = {info.fan_in, info.fan_out};  // [vocab, d] lookup table
    if (info.name.find(".moe.experts.") != std::string::npos) shape.insert(shape.begin(), config_.moe.experts);
    shapes.push_back(shape);
  }
  return shapes;
}

int64_t TransformerLmTask::block_tensors() const {
  if (!config_.moe.enabled()) return 10;
  return 11 + (config_.moe.shared_experts > 0 ? 4 : 0);
}

ParamSet TransformerLmTask::init(at::Generator& gen) const {
  ParamSet p;
  p.info = param_info();
  const auto shapes = param_shapes();
  for (size_t k = 0; k < p.info.size(); ++k) {
    const auto& info = p.info[k];
    const auto& shape = shapes[k];
    if (info.role == ParamRole::norm_gain) {
      p.tensors.push_back(on_compute_device(torch::ones(shape)));
      continue;
    }
    const double std = param_->init_std(info);  // drawn on the host: the same parameters on every device
    p.tensors.push_back(on_compute_device(std > 0 ? torch::randn(shape, gen).mul_(std) : torch::zeros(shape)));
  }
  return p;
}

std::vector<std::string> TransformerLmTask::activation_names() const {
  std::vector<std::string> n = {"embedding"};
  for (int64_t l = 0; l < config_.depth; ++l) {
    n.push_back("attn_logits_" + std::to_string(l));
    n.push_back("block_" + std::to_string(l));
  }
  n.push_back("logits");
  return n;
}

torch::Tensor TransformerLmTask::attention(const torch::Tensor& qkv, int64_t T, std::vector<torch::Tensor>* activations) const {
  const int64_t B = qkv.size(0), H = config_.heads, dh = config_.width / H, half = dh / 2;
  auto parts = qkv.view({B, T, 3, H, dh}).permute({2, 0, 3, 1, 4});  // [3, B, H, T, dh]
  // q and k rotated in one pass; the tables' q half carries the attention scale.
  auto qk = parts.narrow(0, 0, 2);
  auto cos = rope_cos_.narrow(3, 0, T), sin = rope_sin_.narrow(3, 0, T);
  auto x1 = qk.narrow(-1, 0, half), x2 = qk.narrow(-1, half, half);
  auto rot = torch::cat({x1 * cos - x2 * sin, x1 * sin + x2 * cos}, -1);
  auto scores = torch::matmul(rot[0], rot[1].transpose(-2, -1));  // [B, H, T, T], scaled
  if (activations) activations->push_back(scores);
  auto probs = torch::softmax(scores + causal_mask_.narrow(0, 0, T).narrow(1, 0, T), -1);
  return torch::matmul(probs, parts[2]).transpose(1, 2).reshape({B, T, config_.width});
}

torch::Tensor TransformerLmTask::forward(const ParamSet& params, const torch::Tensor& tokens,
                                         std::vector<torch::Tensor>* activations, std::vector<Routing>* routings) const {
  const size_t expected = static_cast<size_t>(block_tensors() * config_.depth + 5);
  TORCH_CHECK(params.size() == expected, "TransformerLmTask::forward: expected ", expected, " tensors, got ", params.size());
  TORCH_CHECK(tokens.dim() == 2 && tokens.size(1) <= config_.context, "TransformerLmTask::forward: tokens must be [B, T<=",
              config_.context, "], got ", tokens.sizes());
  const int64_t T = tokens.size(1), d = config_.width;
  const auto& P = params.tensors;
  size_t i = 0;
  auto h = torch::embedding(P[i++], tokens);
  if (activations) activations->push_back(h);
  for (int64_t l = 0; l < config_.depth; ++l) {
    const auto &g1 = P[i], &b1 = P[i + 1], &wqkv = P[i + 2], &wo = P[i + 3], &g2 = P[i + 4], &b2 = P[i + 5];
    auto a = torch::layer_norm(h, {d}, g1, b1);
    h = h + torch::linear(attention(torch::linear(a, wqkv), T, activations), wo);
    auto m = torch::layer_norm(h, {d}, g2, b2);
    if (!config_.moe.enabled()) {
      const auto &w1 = P[i + 6], &c1 = P[i + 7], &w2 = P[i + 8], &c2 = P[i + 9];
      h = h + torch::linear(torch::gelu(torch::linear(m, w1, c1)), w2, c2);
    } else {
      const int64_t B = m.size(0);
      auto x = m.reshape({B * T, d});
      auto logits = torch::linear(x, P[i + 6]);
      const bool training = torch::GradMode::is_enabled();
      auto r = config_.moe.router == "sinkhorn" ? route_sinkhorn(logits, config_.moe.top_k, training)
                                                : route_topk(logits, config_.moe.top_k);
      auto y = experts_forward(x, r, P[i + 7], P[i + 8], P[i + 9], P[i + 10]);
      if (config_.moe.shared_experts > 0)
        y = y + torch::linear(torch::gelu(torch::linear(x, P[i + 11], P[i + 12])), P[i + 13], P[i + 14]);
      h = h + y.view({B, T, d});
      if (routings) routings->push_back(std::move(r));
    }
    i += static_cast<size_t>(block_tensors());
    if (activations) activations->push_back(h);
  }
  h = torch::layer_norm(h, {d}, P[i], P[i + 1]);
  auto logits = readout_mult_ == 1.0 ? torch::linear(h, P[i + 2], P[i + 3]) : torch::linear(h, P[i + 2]).mul(readout_mult_).add(P[i + 3]);
  if (activations) activations->push_back(logits);
  return logits;
}

LossAndMetrics TransformerLmTask::loss_and_metrics(const ParamSet& params, const Batch& batch_in,
                                                   std::vector<torch::Tensor>* activations) const {
  const Batch batch = batch_in.to(compute_device());
  const auto& tokens = batch.at("tokens");
  TORCH_CHECK(tokens.dim() == 2 && tokens.size(1) >= 2, "TransformerLmTask: tokens must be [B, T+1], got ", tokens.sizes());
  const int64_t T = tokens.size(1) - 1;
  std::vector<Routing> routings;
  auto logits = forward(params, tokens.narrow(1, 0, T), activations, config_.moe.enabled() ? &routings : nullptr);
  LossAndMetrics out;
  out.loss = torch::cross_entropy_loss(logits.reshape({-1, kVocab}), tokens.narrow(1, 1, T).reshape({-1}));
  out.metrics["loss"] = out.loss.detach();
  out.metrics["bits_per_byte"] = out.loss.detach() / std::log(2.0);
  if (!routings.empty()) {
    auto aux = torch::zeros({}, logits.options()), z = torch::zeros({}, logits.options());
    double mri = 0;
    for (size_t l = 0; l < routings.size(); ++l) {
      const auto& r = routings[l];
      aux = aux + load_balancing_loss(r.logits, r.experts);
      z = z + router_z_loss(r.logits);
      const double m = expert_token_fractions(r.experts, config_.moe.experts).max().item<double>();
      out.metrics["mri_" + std::to_string(l)] = torch::tensor(m, torch::kFloat64);
      mri += m / static_cast<double>(routings.size());
    }
    out.metrics["aux_loss"] = aux.detach();
    out.metrics["z_loss"] = z.detach();
    out.metrics["mri"] = torch::tensor(mri, torch::kFloat64);
    if (config_.moe.router == "aux" && torch::GradMode::is_enabled())
      out.loss = out.loss + config_.moe.aux_coef * aux + config_.moe.z_coef * z;
  }
  return out;
}

torch::Tensor TransformerLmTask::normalizer(const torch::Tensor& loss) const { return normalize_classifier_loss(loss, kVocab); }

// ------------------------------------------------------------------ family

TransformerFamily::TransformerFamily(const nlohmann::json& config, const std::string& path) {
  ConfigReader r(config, path);
  auto type = r.get<std::string>("type", "transformer_lm_family");
  config_check(type == "transformer_lm_family", r.path_of("type"), "expected \"transformer_lm_family\", got \"" + type + "\"");
  auto list = [&](const std::string& key, std::vector<int64_t> fallback) {
    auto v = r.get<std::vector<int64_t>>(key, fallback);
    config_check(!v.empty(), r.path_of(key), "must be a non-empty list");
    return v;
  };
  widths_ = list("widths", {64});
  depths_ = list("depths", {2});
  heads_ = list("heads", {2});
  contexts_ = list("contexts", {32});
  batch_sizes_ = list("batch_sizes", {16});
  nlohmann::json fixed = {{"type", "transformer_lm"}};
  fixed["corpus"] = r.get<std::string>("corpus", "english");
  fixed["data_dir"] = r.get<std::string>("data_dir", "");
  fixed["max_corpus_bytes"] = r.get<int64_t>("max_corpus_bytes", TransformerConfig().max_corpus_bytes);
  fixed["parametrization"] = r.object("parametrization");
  if (fixed["parametrization"].empty()) fixed["parametrization"] = TransformerConfig().parametrization;
  r.finish();
  config_ = {{"type", "transformer_lm_family"}, {"widths", widths_},     {"depths", depths_},
             {"heads", heads_},                 {"contexts", contexts_}, {"batch_sizes", batch_sizes_}};
  for (auto it = fixed.begin(); it != fixed.end(); ++it)
    if (it.key() != "type") config_[it.key()] = it.value();
  // Every combination must be a valid task (errors at the family's list key).
  const std::map<std::string, std::string> list_key = {
      {"width", "widths"}, {"depth", "depths"}, {"heads", "heads"}, {"context", "contexts"}, {"batch_size", "batch_sizes"}};
  for (auto w : widths_)
    for (auto d : depths_)
      for (auto h : heads_)
        for (auto c : contexts_)
          for (auto b : batch_sizes_) {
            auto probe = fixed;
            probe.update({{"width", w}, {"depth", d}, {"heads", h}, {"context", c}, {"batch_size", b}});
            try {
              TransformerConfig::from_json(probe, path);
            } catch (const ConfigError& e) {
              std::string p = e.path();
              for (const auto& [k, v] : list_key)
                if (p == path + "/" + k) p = path + "/" + v;
              throw ConfigError(p, e.message());
            }
          }
}

nlohmann::json TransformerFamily::sample(at::Generator& gen) const {
  auto pick = [&](const std::vector<int64_t>& v) {
    return v[static_cast<size_t>(torch::randint(static_cast<int64_t>(v.size()), {1}, gen).item<int64_t>())];
  };
  nlohmann::json c = config_;
  c.erase("widths");
  c.erase("depths");
  c.erase("contexts");
  c.erase("batch_sizes");
  c["type"] = "transformer_lm";
  c["width"] = pick(widths_);
  c["depth"] = pick(depths_);
  c["heads"] = pick(heads_);
  c["context"] = pick(contexts_);
  c["batch_size"] = pick(batch_sizes_);
  return c;
}

}  // namespace lopt
