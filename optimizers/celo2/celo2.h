#pragma once
/// Celo2 and Celo2-base (Moudgil, Knyazev, Belilovsky, ICLR 2026, arXiv 2602.19142), as PyLO's
/// CELO2_naive (Belilovsky-Lab/pylo `pylo/optim/CELO2_naive.py`, network `pylo/models/CELO2_MLP.py`)
/// implements the JAX original (amoudgl/celo `celo/optimizers/celo2_optax.py`, `celo2.py`).
///
/// Tensors of rank >= 2 (except embeddings) take the learned step; per tensor of shape S:
///   g <- clamp(g, -grad_clip, grad_clip)  (after optional global-norm clipping)
///   momentum (3 decays), rms (1 decay, 0.95), Adafactor factored second moments (3 decays); none
///   bias-corrected, decays used as given (no learned offsets): optimizers/lo_features.h
///   30 input channels in 14 groups: g, clamp(g, ±0.1), p, m[3], rms, m·r[3], r, fac_g[3], g·r,
///   row[3], col[3], rsqrt(row + 1e-8)[3], rsqrt(col + 1e-8)[3], fac_mom_mult[3]  (r = rsqrt(rms + 1e-8)),
///   each channel normalised by its RMS over the last two dimensions of S (eps 1e-9)
///   split-input MLP: h = relu(sum_i x_i W0_i + b0), then dense layers (relu between), 3 outputs
///   step = direction · exp(exp_mult · magnitude); Newton–Schulz-orthogonalised over the last two
///   dimensions (Celo2; not Celo2-base); normalised to unit RMS over the last two dimensions; × rmsmult
///   p <- p - lr_t (step + weight_decay · p),  lr_t = lr × schedule(t)
/// Tensors of rank <= 1 and embeddings take an AdamW step with its own moments (adamw_variant;
/// adamw_for_1d false sends them through the network too).
#include <array>
#include <map>
#include <string>
#include <tuple>
#include <vector>

#include "optimizers/fused_step.h"
#include "optimizers/learned_optimizer.h"
#include "optimizers/schedule.h"

namespace lopt {

/// Channels per input group, in the order Celo2 builds them for a factored tensor; a tensor that is
/// not factored (rank 1 through the network) has only the first 9 groups.
constexpr std::array<int64_t, 14> kCelo2FeatureDims = {1, 1, 1, 3, 1, 3, 1, 3, 1, 3, 3, 3, 3, 3};
/// The input groups' names (Celo2Config::zero_inputs), in kCelo2FeatureDims's order.
constexpr std::array<const char*, 14> kCelo2InputNames = {
    "grad",          "clipped_grad",      "param",      "momentum",   "rms",
    "momentum_over_rms", "rsqrt_rms",     "factored_grad", "grad_over_rms", "row_factor",
    "col_factor",    "rsqrt_row_factor",  "rsqrt_col_factor", "factored_momentum"};
constexpr int64_t kCelo2Inputs = 30;
constexpr int64_t kCelo2Outputs = 3;  ///< direction, magnitude, and a third the optimizer ignores

struct Celo2Config {
  bool orthogonalize = true;  ///< type "celo2"; "celo2_base" has false
  /// μCelo2 (type "mucelo2"; not in PyLO or the JAX original): Celo2 under μP, the μLO construction —
  /// each tensor's lr × the μP multiplier of its role (hidden weights 1/width_mult, as μAdam).
  bool mup = false;
  int64_t hidden_size = 8;
  int64_t hidden_layers = 2;  ///< dense layers after the split input layer (the last one has 3 outputs)
  double lr = 1e-3;
  double weight_decay = 0.0;
  nlohmann::json schedule = {{"type", "constant"}};
  double exp_mult = 0.0;
  double rmsmult = 1.0;
  double grad_clip = 1000.0;   ///< element-wise gradient clamp
  double max_grad_norm = 0.0;  ///< global-norm clipping (optax clip_by_global_norm); 0 = off
  std::vector<double> initial_momentum_decays = {0.9, 0.99, 0.999};
  std::vector<double> initial_rms_decays = {0.95};
  std::vector<double> initial_adafactor_decays = {0.9, 0.99, 0.999};
  int64_t ns_steps = 5;
  std::vector<double> ns_coeffs = {3.4445, -4.7750, 2.0315};
  double ns_eps = 1e-8;
  /// AdamW for tensors of rank <= 1 and embeddings (false, as PyLO's use_adamw_for_1d=False: every
  /// tensor goes through the network, vectors with the first 9 input groups).
  bool adamw_for_1d = true;
  /// "pylo": PyLO's _adamw_step — own moments, bias-corrected, p -= lr_a (m̂ / (sqrt(v̂) + eps) + wd_a p),
  ///   betas (0.9, 0.95), lr_a = lr × adam_lr_mult (1).
  /// "celo_jax": the JAX meta-training wrapper (celo2.py `Celo2`) — own moments, no bias correction,
  ///   s = m · rsqrt(v + eps), p -= lr_a (s + wd_a p), betas (0.9, 0.999), adam_lr_mult 20.
  std::string adamw_variant = "pylo";
  double adam_lr_mult = 1.0;
  double adam_beta1 = 0.9;
  double adam_beta2 = 0.95;
  double adam_eps = 1e-8;
  double adam_weight_decay = 0.0;  ///< defaults to weight_decay
  /// No-grad steps (training, meta-training populations): "fused" runs the features and the network
  /// of float32 CPU matrices in the SIMD kernel shared with μLO (optimizers/fused_step.h), then
  /// Newton–Schulz (batched over a population's members) and the normalisation in LibTorch;
  /// "tensor" runs update()'s tensor ops. Other tensors (rank >= 3, vectors through the network,
  /// other devices) always take the tensor ops.
  std::string impl = "fused";
  /// Input groups (kCelo2InputNames) the network sees as zero — an ablation: their first-layer weights
  /// are taken as zero, as if the normalised feature (mean near zero) were replaced by 0. Empty: none
  /// (and absent from to_json, so older resolved configs are unchanged). A checkpoint records it.
  std::vector<std::string> zero_inputs;

  static Celo2Config from_json(const nlohmann::json& j, const std::string& path);
  nlohmann::json to_json() const;
  std::string type() const { return mup ? "mucelo2" : orthogonalize ? "celo2" : "celo2_base"; }
};

class Celo2 : public LearnedOptimizer {
 public:
  explicit Celo2(Celo2Config config);
  /// Haiku's init (the JAX original; PyLO's reset_parameters): weights ~ normal truncated at 2σ,
  /// σ = 1/sqrt(30) for every split input weight, 1/sqrt(fan_in) for the dense ones; biases 0.
  torch::Tensor init_theta(at::Generator& gen) const override;
  int64_t num_theta() const override;
  std::unique_ptr<Optimizer> bind(const torch::Tensor& theta,
                                  const nlohmann::json& provenance = nlohmann::json::object()) const override;
  /// safetensors with PyLO's CELO2MLP state_dict names and (in, out) layout: w0.0 ... w0.13, b0,
  /// dense_w.0, dense_b.0, ...; lopt's config in the metadata "lopt_config".
  void save(const std::string& path, const torch::Tensor& theta) const override;
  torch::Tensor load(const std::string& path) const override;
  /// dir/model.safetensors and dir/config.json with CELO2MLP's constructor arguments.
  void save_hub(const std::string& dir, const torch::Tensor& theta) const override;
  nlohmann::json hyperparams() const override { return config_.to_json(); }
  const Celo2Config& config() const { return config_; }

  std::vector<std::pair<std::string, std::vector<int64_t>>> theta_layout() const;
  std::map<std::string, torch::Tensor> unflatten(const torch::Tensor& theta) const;
  torch::Tensor flatten(const std::map<std::string, torch::Tensor>& named) const;

 private:
  Celo2Config config_;
};

/// The bound Celo2. Slots: "mom", "rms", "fac_vec_row", "fac_vec_col", "fac_vec_v" (learned-step
/// tensors; empty for AdamW ones) and "exp_avg", "exp_avg_sq" (AdamW tensors; empty otherwise).
class Celo2Optimizer : public Optimizer {
 public:
  Celo2Optimizer(const Celo2& lopt, torch::Tensor theta, nlohmann::json provenance);
  OptState init(const ParamSet& params) const override;
  /// Tensor ops, differentiable with respect to theta and the parameters.
  OptState update(const OptState& state, const std::vector<torch::Tensor>& grads,
                  const torch::Tensor& loss) const override;
  /// No-grad step in place: the population step below with one member (config.impl decides the path).
  void update_(OptState& state, const std::vector<torch::Tensor>& grads, const torch::Tensor& loss) const override;
  /// A population's no-grad steps: the members' copies of each tensor are stacked and stepped
  /// together, each through its own network (batched matmuls) at its own step's lr; with impl
  /// "fused", every member's float32 CPU matrices go through one fused kernel call and their
  /// Newton–Schulz iterations through batched matmuls. Members of another optimizer or config, or
  /// with other parameter shapes, fall back to one at a time.
  void update_many_(std::vector<PopulationMember>& members) const override;
  double lr_at(int64_t step, const ParamInfo& info) const override;
  std::vector<torch::Tensor> pre_orthogonal_directions(const OptState& state, const std::vector<torch::Tensor>& grads,
                                                       const torch::Tensor& loss) const override;
  nlohmann::json hyperparams() const override;
  /// μCelo2's lr multiplier of a tensor (1 unless mup).
  double mup_mult(const ParamInfo& info) const;
  /// Whether tensor `i` of `params` takes the AdamW step.
  bool uses_adamw(const ParamSet& params, size_t i) const;

  /// The learned step of one tensor (before lr and weight decay), also giving the normalised MLP
  /// inputs [*S, channels] and outputs [*S, 3] when asked (for the parity tests), and the direction
  /// before Newton–Schulz (the network's step output, shaped as the tensor's accumulators).
  torch::Tensor learned_step(const torch::Tensor& p, const torch::Tensor& g, const torch::Tensor& mom,
                             const torch::Tensor& rms, const torch::Tensor& row, const torch::Tensor& col,
                             const torch::Tensor& v, std::array<torch::Tensor, 5>& new_slots,
                             torch::Tensor* mlp_inputs = nullptr, torch::Tensor* mlp_outputs = nullptr,
                             torch::Tensor* pre_orthogonal = nullptr) const;

 private:
  /// The network's weights: this optimizer's ([30, H], [H], ...) or a population's stacked
  /// ([M, 30, H], [M, H], ...; batched).
  struct Net {
    torch::Tensor w0, b0;
    std::vector<torch::Tensor> w, b;
    bool batched = false;
  };
  Net net() const;
  /// learned_step on `net`; with a batched net the tensors carry a leading member dimension.
  torch::Tensor learned_step(const Net& net, const torch::Tensor& p, const torch::Tensor& g, const torch::Tensor& mom,
                             const torch::Tensor& rms, const torch::Tensor& row, const torch::Tensor& col,
                             const torch::Tensor& v, std::array<torch::Tensor, 5>& new_slots, torch::Tensor* mlp_inputs,
                             torch::Tensor* mlp_outputs, torch::Tensor* pre_orthogonal) const;
  /// The AdamW step (adamw_variant) of a tensor at update number t (from 1), lr the branch's lr:
  /// (p, m, v) after it. lr and t are float64, 0-dim for one member or [M, 1, ...] for stacked members.
  std::tuple<torch::Tensor, torch::Tensor, torch::Tensor> adamw_step(const torch::Tensor& p, const torch::Tensor& g,
                                                                      const torch::Tensor& m, const torch::Tensor& v,
                                                                      const torch::Tensor& lr, const torch::Tensor& t) const;
  /// The gradients after global-norm clipping (max_grad_norm) and the element-wise clamp.
  std::vector<torch::Tensor> clipped(const std::vector<torch::Tensor>& grads) const;
  /// update_many_'s work once the members are known to stack (any count, one included).
  void step_stacked_(std::vector<PopulationMember>& members) const;
  /// Whether tensor i of these parameters takes the fused kernel.
  bool fuses(const ParamSet& params, size_t i) const;

  Celo2Config config_;
  torch::Tensor theta_;
  std::map<std::string, torch::Tensor> named_;
  torch::Tensor w0_;  ///< the split input weights stacked: [30, hidden]
  std::vector<torch::Tensor> dense_w_, dense_b_;
  torch::Tensor mom_decay_, rms_decay_, fac_decay_;
  std::shared_ptr<const LrSchedule> schedule_;
  nlohmann::json provenance_;
  std::string config_key_;  ///< config_ as JSON text: members with equal keys stack in update_many_
  detail::FusedNet fused_net_;  ///< the network in the fused kernel's form (impl "fused", CPU theta)
};

/// resolve_checkpoint of the celo2 family: the keys a checkpoint decides (type, hidden_size,
/// hidden_layers, exp_mult, initial_*_decays) from its lopt metadata, or for a PyLO CELO2MLP file
/// (no metadata) the geometry from its tensors.
nlohmann::json resolve_celo2_checkpoint(const nlohmann::json& config, const std::string& checkpoint,
                                        const std::string& path);

}  // namespace lopt
