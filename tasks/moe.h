#pragma once
/// Mixture-of-experts feed-forward layers for the transformer LM (tasks/transformer.h): dropless
/// token-choice routing to E experts (top-k), optional always-on shared experts, and two routers.
///
///  * "aux" (penalty-balanced top-k; Switch Transformer / DeepSeekMoE): probs = softmax(logits),
///    the k largest are chosen, gates = those probs renormalised to sum to 1 (k = 1: the prob
///    itself, as Switch, so that the router gets a gradient from the loss). Training adds
///    aux_coef * E * sum_i f_i P_i (f_i: fraction of the N*k assignments that go to expert i,
///    P_i: mean router prob of expert i; 1 at perfect balance) and z_coef * mean(logsumexp(logits)^2).
///  * "sinkhorn" (EleutherAI/gpt-neox megatron/model/router.py SinkhornRouter): while training,
///    Sinkhorn iterations on exp(logits) (no gradient) decide the assignment; the gates come from
///    the raw logits (k = 1: sigmoid(logit); k > 1: softmax(logits) of the chosen experts, not
///    renormalised). In evaluation, plain top-k of that activation. No auxiliary loss.
///
/// "Training" means autograd is enabled (training and meta-training compute gradients;
/// Task::evaluate runs under NoGradGuard).
#include <nlohmann/json.hpp>
#include <torch/types.h>

#include <string>
#include <vector>

namespace lopt {

struct MoeConfig {
  int64_t experts = 0;         ///< E; 0 = a dense MLP
  int64_t top_k = 1;           ///< experts per token
  int64_t shared_experts = 0;  ///< always-on experts (DeepSeek-style), each of expert_hidden units
  /// Hidden units of one expert; 0 = mlp_ratio * width / (top_k + shared_experts), which makes the
  /// active FLOPs per token those of the dense MLP (FLOP-matched).
  int64_t expert_hidden = 0;
  std::string router = "aux";  ///< "aux" or "sinkhorn"
  double aux_coef = 0.01;
  double z_coef = 0.001;

  bool enabled() const { return experts > 0; }
  /// expert_hidden resolved for a model of `width` and `mlp_ratio`.
  int64_t hidden(int64_t width, int64_t mlp_ratio) const;
  static MoeConfig from_json(const nlohmann::json& j, const std::string& path = "/task/moe");
  nlohmann::json to_json() const;
};

/// A router's decision for N tokens.
struct Routing {
  torch::Tensor logits;   ///< [N, E]
  torch::Tensor experts;  ///< [N, k] int64, distinct per row
  torch::Tensor gates;    ///< [N, k] (differentiable w.r.t. the logits)
};

/// Top-k of softmax(logits) with gates renormalised over the chosen k (k = 1: not renormalised).
Routing route_topk(const torch::Tensor& logits, int64_t k);
/// gpt-neox's Sinkhorn routing: `training` picks experts by Sinkhorn on exp(logits), else by top-k.
Routing route_sinkhorn(const torch::Tensor& logits, int64_t k, bool training);
/// Sinkhorn scaling of exp(cost) to (approximately) uniform row and column sums, as gpt-neox's
/// SinkhornRouter.sinkhorn (tolerance 1e-4 on the column scaling; at most `max_iters` iterations).
torch::Tensor sinkhorn(const torch::Tensor& cost, double tol = 1e-4, int64_t max_iters = 1000);
/// E * sum_i f_i P_i (see the file comment).
torch::Tensor load_balancing_loss(const torch::Tensor& logits, const torch::Tensor& experts);
/// mean(logsumexp(logits, -1)^2).
torch::Tensor router_z_loss(const torch::Tensor& logits);
/// Fraction of the N tokens whose chosen set includes each expert ([E], float64, no gradient);
/// its maximum is the maximum routing imbalance (MRI).
torch::Tensor expert_token_fractions(const torch::Tensor& experts, int64_t num_experts);

/// The dropless expert computation: out[t] = sum_j gates[t, j] * expert_{experts[t, j]}(x[t]) with
/// expert e = fc_2[e](gelu(fc_1[e] x + b_1[e])) + b_2[e]; every token reaches all its k experts.
/// x [N, d]; w1 [E, h, d], b1 [E, h], w2 [E, d, h], b2 [E, d].
torch::Tensor experts_forward(const torch::Tensor& x, const Routing& r, const torch::Tensor& w1, const torch::Tensor& b1,
                              const torch::Tensor& w2, const torch::Tensor& b2);

}  // namespace lopt
