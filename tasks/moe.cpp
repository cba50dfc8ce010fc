#include "tasks/moe.h"

#include <torch/torch.h>

#include <cmath>

#include "common/config.h"

namespace lopt {

int64_t MoeConfig::hidden(int64_t width, int64_t mlp_ratio) const {
  if (expert_hidden > 0) return expert_hidden;
  return std::max<int64_t>(1, mlp_ratio * width / (top_k + shared_experts));
}

MoeConfig MoeConfig::from_json(const nlohmann::json& j, const std::string& path) {
  ConfigReader r(j, path);
  MoeConfig c;
  c.experts = r.get<int64_t>("experts", c.experts);
  c.top_k = r.get<int64_t>("top_k", c.top_k);
  c.shared_experts = r.get<int64_t>("shared_experts", c.shared_experts);
  c.expert_hidden = r.get<int64_t>("expert_hidden", c.expert_hidden);
  c.router = r.get<std::string>("router", c.router);
  c.aux_coef = r.get<double>("aux_coef", c.aux_coef);
  c.z_coef = r.get<double>("z_coef", c.z_coef);
  r.finish();
  config_check(c.experts >= 0 && c.experts <= 1024, r.path_of("experts"), "must be in 0..1024 (0 = dense MLP)");
  if (c.experts > 0)
    config_check(c.top_k >= 1 && c.top_k <= c.experts, r.path_of("top_k"),
                 "must be in 1..experts (" + std::to_string(c.experts) + "), got " + std::to_string(c.top_k));
  config_check(c.shared_experts >= 0 && c.shared_experts <= 64, r.path_of("shared_experts"), "must be in 0..64");
  config_check(c.expert_hidden >= 0, r.path_of("expert_hidden"), "must be >= 0 (0 = FLOP-matched to the dense MLP)");
  config_check(c.router == "aux" || c.router == "sinkhorn", r.path_of("router"),
               "must be \"aux\" (penalty-balanced top-k) or \"sinkhorn\" (gpt-neox SinkhornRouter)");
  config_check(std::isfinite(c.aux_coef) && c.aux_coef >= 0, r.path_of("aux_coef"), "must be >= 0");
  config_check(std::isfinite(c.z_coef) && c.z_coef >= 0, r.path_of("z_coef"), "must be >= 0");
  return c;
}

nlohmann::json MoeConfig::to_json() const {
  return {{"experts", experts}, {"top_k", top_k},       {"shared_experts", shared_experts}, {"expert_hidden", expert_hidden},
          {"router", router},   {"aux_coef", aux_coef}, {"z_coef", z_coef}};
}

Routing route_topk(const torch::Tensor& logits, int64_t k) {
  auto probs = torch::softmax(logits, -1);
  auto [vals, idx] = probs.topk(k, -1);
  Routing r;
  r.logits = logits;
  r.experts = idx;
  r.gates = k == 1 ? vals : vals / vals.sum(-1, true);
  return r;
}

torch::Tensor sinkhorn(const torch::Tensor& cost_in, double tol, int64_t max_iters) {
  torch::NoGradGuard no_grad;
  auto cost = torch::exp(cost_in.to(torch::kFloat32));
  auto d0 = torch::ones({cost.size(0)}, cost.options()), d1 = torch::ones({cost.size(1)}, cost.options());
  const double eps = 1e-8;
  auto d1_old = d1;
  for (int64_t it = 0; it < max_iters; ++it) {
    d0 = (1.0 / static_cast<double>(d0.size(0))) / ((d1 * cost).sum(1) + eps);
    d1 = (1.0 / static_cast<double>(d1.size(0))) / ((d0.unsqueeze(1) * cost).sum(0) + eps);
    const double err = (d1_old - d1).abs().mean().item<double>();
    d1_old = d1;
    if (err <= tol) break;
  }
  return d1 * cost * d0.unsqueeze(1);
}

Routing route_sinkhorn(const torch::Tensor& logits, int64_t k, bool training) {
  auto act = k == 1 ? torch::sigmoid(logits) : torch::softmax(logits, -1);
  Routing r;
  r.logits = logits;
  if (training) {
    r.experts = std::get<1>(sinkhorn(logits.detach()).topk(k, -1));
    r.gates = act.gather(1, r.experts);
  } else {
    auto [vals, idx] = act.topk(k, -1);
    r.experts = idx;
    r.gates = vals;
  }
  return r;
}

torch::Tensor load_balancing_loss(const torch::Tensor& logits, const torch::Tensor& experts) {
  const int64_t E = logits.size(-1);
  auto probs = torch::softmax(logits, -1);
  auto f = torch::bincount(experts.reshape({-1}), {}, E).to(probs.scalar_type()) / static_cast<double>(experts.numel());
  return static_cast<double>(E) * (f * probs.mean(0)).sum();
}

torch::Tensor router_z_loss(const torch::Tensor& logits) { return torch::logsumexp(logits, -1).square().mean(); }

torch::Tensor expert_token_fractions(const torch::Tensor& experts, int64_t num_experts) {
  // Rows hold distinct experts, so counting assignments counts tokens.
  return torch::bincount(experts.reshape({-1}).detach(), {}, num_experts).to(torch::kFloat64) / static_cast<double>(experts.size(0));
}

torch::Tensor experts_forward(const torch::Tensor& x, const Routing& r, const torch::Tensor& w1, const torch::Tensor& b1,
                              const torch::Tensor& w2, const torch::Tensor& b2) {
  const int64_t N = x.size(0), k = r.experts.size(1), E = w1.size(0);
  auto flat = r.experts.reshape({-1});
  auto order = std::get<1>(flat.sort(c10::optional<bool>(true), 0));  // stable: tokens keep their order per expert
  auto token = torch::arange(N, torch::TensorOptions().dtype(torch::kInt64).device(x.device())).repeat_interleave(k).index_select(0, order);
  auto gate = r.gates.reshape({-1}).index_select(0, order);
  // Expert sizes on the host (the segments' lengths; one device-to-host copy per layer on a GPU).
  auto counts = torch::bincount(flat, {}, E).cpu().contiguous();
  auto xs = x.index({token});  // advanced indexing: its backward (index_put_ with accumulate) is faster than index_select's
  std::vector<torch::Tensor> outs;
  // unbind: one backward node that stacks the experts' gradients (per-expert select() would
  // materialise a full [E, ...] gradient for every expert).
  const auto W1 = w1.unbind(0), B1 = b1.unbind(0), W2 = w2.unbind(0), B2 = b2.unbind(0);
  int64_t off = 0;
  for (int64_t e = 0; e < E; ++e) {
    const int64_t c = counts.data_ptr<int64_t>()[e];
    if (c == 0) continue;
    auto seg = xs.narrow(0, off, c);
    outs.push_back(torch::linear(torch::gelu(torch::linear(seg, W1[e], B1[e])), W2[e], B2[e]));
    off += c;
  }
  auto ys = torch::cat(outs) * gate.unsqueeze(1);
  return torch::zeros({N, x.size(1)}, x.options()).index_add(0, token, ys);
}

}  // namespace lopt
