#pragma once
/// small_fc_lopt and muLO: the per-parameter MLP learned optimizer of learned_optimization
/// `learned_optimizers/adafac_mlp_lopt.py`, as implemented by PyLO's AdafacLO_naive and
/// MuLO_naive (Belilovsky-Lab/pylo). Where the two differ, lopt follows PyLO (noted inline).
///
/// Per tensor: momentum (3 decays), rms (1 decay) and Adafactor row/column accumulators
/// (3 decays) are updated; 28 features are built and each normalised over the tensor; 11 time
/// features tanh(t/s - 1) are appended; an MLP 39 -> hidden -> ... -> 2 gives direction d and
/// magnitude m; step = d * exp(m * exp_mult) * step_mult; p <- p - lr * step, then
/// p <- p - lr * weight_decay * p. muLO multiplies lr by 1/width_mult for hidden (matrix-like) weights.
#include <array>
#include <mutex>
#include <vector>

#include "optimizers/fused_step.h"
#include "optimizers/learned_optimizer.h"
#include "optimizers/lo_features.h"
#include "optimizers/schedule.h"

namespace lopt {

struct SmallFcLoptConfig {
  int64_t hidden_size = 32;
  int64_t hidden_layers = 1;  ///< hidden->hidden layers (PyLO's linear_0 ...)
  double step_mult = 1e-2;    ///< muLO configs and PyLO; learned_optimization's default is 1e-3
  double exp_mult = 1e-3;
  double lr = 1.0;
  double weight_decay = 0.0;
  double max_grad_norm = 0.0;  ///< global-norm gradient clipping; 0 = off
  /// Time features use min(step, time_features_max_step) (0 = off): holds them at the values of the
  /// meta-training horizon for longer runs (an inference-time probe; not in PyLO).
  int64_t time_features_max_step = 0;
  /// Schedule of `lr` over inner steps (optimizers/schedule.h; default constant): an inference-time
  /// knob, e.g. to anneal a learned optimizer past its meta-training horizon (not in PyLO).
  nlohmann::json schedule = {{"type", "constant"}};
  bool mup = false;            ///< muLO: per-tensor LR x 1/width_mult for hidden weights
  /// ELO (type "elo", PyLO ELO_naive): the same network and features with the decays used as given
  /// (theta holds no decay offsets), no step_mult, p -= lr (d exp(exp_mult m) + wd p) with the decay
  /// on the old p, NaN gradients zeroed and optax's global-norm clipping. Its own checkpoint family.
  bool elo = false;
  std::vector<double> initial_momentum_decays = {0.9, 0.99, 0.999};
  std::vector<double> initial_rms_decays = {0.999};
  std::vector<double> initial_adafactor_decays = {0.9, 0.99, 0.999};
  /// No-grad path: "fused" (the SIMD kernel on CPU tensors, the CUDA kernels on CUDA tensors),
  /// "tensor" (tensor ops) or "gpu" (the CUDA kernels' algorithm; on CPU tensors its sequential host
  /// emulation, slow: for tests).
  std::string impl = "fused";
  /// LAgg-A (learned aggregation for local SGD): the number K of workers whose deltas are K extra
  /// MLP inputs, normalised with the 28 features (0 = a per-parameter optimizer; see
  /// optimizers/global_update.h). After lefameuxbeding/learned_aggregation `fed_adafac_mlp_lopt.py`.
  int64_t worker_inputs = 0;

  /// MLP inputs: 28 features + worker_inputs + 11 time features.
  int64_t num_inputs() const;

  /// The step the time features see for inner step `step`.
  int64_t time_feature_step(int64_t step) const {
    return time_features_max_step > 0 && step > time_features_max_step ? time_features_max_step : step;
  }

  static SmallFcLoptConfig from_json(const nlohmann::json& j, const std::string& path);
  nlohmann::json to_json() const;
};

/// Number of MLP inputs of the per-parameter optimizer: 28 normalised features + 11 time features.
constexpr int64_t kLoptInputs = 39;
constexpr int64_t kLoptTensorFeatures = 28;
constexpr int64_t kLoptTimeFeatures = lo::kTimeFeatures;

class SmallFcLopt : public LearnedOptimizer {
 public:
  explicit SmallFcLopt(SmallFcLoptConfig config);
  torch::Tensor init_theta(at::Generator& gen) const override;
  int64_t num_theta() const override;
  std::unique_ptr<Optimizer> bind(const torch::Tensor& theta,
                                  const nlohmann::json& provenance = nlohmann::json::object()) const override;
  /// safetensors with PyLO's MetaMLP names (network.input.weight, network.linear_0.weight, ...,
  /// network.output.weight); the decay offsets go in the metadata (PyLO keeps them in its config).
  void save(const std::string& path, const torch::Tensor& theta) const override;
  /// Reads PyLO-named safetensors (a file, or a hub folder's model.safetensors); decay offsets from
  /// the metadata when present, else PyLO's defaults. The config must match the file's (see
  /// resolve_checkpoint_config).
  torch::Tensor load(const std::string& path) const override;
  /// The Hugging Face hub layout PyLO's MetaMLP.from_pretrained reads: dir/model.safetensors (as
  /// save(), lopt metadata included) and dir/config.json {input_size, hidden_size, hidden_layers}.
  void save_hub(const std::string& dir, const torch::Tensor& theta) const override;
  int64_t worker_inputs() const override { return config_.worker_inputs; }
  nlohmann::json hyperparams() const override;
  const SmallFcLoptConfig& config() const { return config_; }

  /// (name, shape) of each piece of theta, in order.
  std::vector<std::pair<std::string, std::vector<int64_t>>> theta_layout() const;
  /// Named views into theta (differentiable).
  std::map<std::string, torch::Tensor> unflatten(const torch::Tensor& theta) const;
  /// Flat theta from named tensors (missing decay offsets are zero).
  torch::Tensor flatten(const std::map<std::string, torch::Tensor>& named) const;

 private:
  SmallFcLoptConfig config_;
};

/// The learned optimizer for one theta. Slots follow PyLO's state: "mom" [*shape, 3],
/// "rms" [*shape, 1], "fac_vec_row", "fac_vec_col" (factored, ndim >= 2) and "fac_vec_v" (ndim < 2).
class SmallFcLoptOptimizer : public Optimizer {
 public:
  SmallFcLoptOptimizer(const SmallFcLopt& lopt, torch::Tensor theta);
  OptState init(const ParamSet& params) const override;
  /// Tensor-op step: differentiable w.r.t. theta and the parameters.
  OptState update(const OptState& state, const std::vector<torch::Tensor>& grads,
                  const torch::Tensor& loss) const override;
  /// No-grad step in place; uses the fused CPU kernel when config.impl == "fused".
  void update_(OptState& state, const std::vector<torch::Tensor>& grads, const torch::Tensor& loss) const override;
  /// Fused steps of every member whose optimizer is a fused SmallFcLoptOptimizer (each with its
  /// own theta) in one kernel call; other members take their own update_.
  void update_many_(std::vector<PopulationMember>& members) const override;
  /// Config plus provenance (e.g. {"checkpoint": ..., "theta_seed": ...}) for result files.
  nlohmann::json hyperparams() const override;
  void set_provenance(const nlohmann::json& p) { provenance_ = p; }
  /// LAgg-A: step() with each worker's delta as extra inputs (worker_inputs > 0).
  int64_t worker_inputs() const override { return config_.worker_inputs; }
  void aggregate_(OptState& state, const std::vector<torch::Tensor>& mean_delta,
                  const std::vector<torch::Tensor>& worker_deltas, const torch::Tensor& loss) const override;

  /// update() that also returns each tensor's MLP inputs [*shape, num_inputs] and outputs [*shape, 2].
  /// With worker_inputs = K, `worker_deltas[i]` ([K, *shape]) are tensor i's extra inputs.
  OptState step(const OptState& state, const std::vector<torch::Tensor>& grads,
                std::vector<torch::Tensor>* mlp_inputs, std::vector<torch::Tensor>* mlp_outputs,
                const std::vector<torch::Tensor>* worker_deltas = nullptr) const;
  /// Learning rate applied to a tensor (lr x muP multiplier), before the schedule.
  double lr_for(const ParamInfo& info) const;
  /// lr_for(info) x the schedule's multiplier at `step`.
  double lr_at(int64_t step, const ParamInfo& info) const override;
  /// Effective decays (3 momentum, 1 rms, 3 adafactor) from the offsets in theta.
  struct Decays {
    torch::Tensor mom, rms, fac;
  };
  Decays decays() const;
  const SmallFcLoptConfig& config() const { return config_; }
  /// MLP layers in order (views into theta): weight [out, in], bias [out].
  const std::vector<torch::Tensor>& mlp_weights() const { return weights_; }
  const std::vector<torch::Tensor>& mlp_biases() const { return biases_; }

  /// theta's pieces as plain floats for the fused kernel (computed once per bound theta).
  struct FusedConstants {
    float mom_decay[3], rms_decay, fac_decay[3];
    std::vector<std::vector<float>> weights, biases;  // MLP layers, weight [out * in] row-major
    detail::FusedNet net;                              // the same, as the fused CPU step takes it
  };
  /// Thread-safe (built once, on first use, possibly from a parallel loop).
  const FusedConstants& fused_constants() const;
  /// The MLP packed for the GPU step (kernels/lopt_gpu.h: w_in, b_in, hidden layers, w_out, b_out)
  /// as a float32 tensor on `device`; built once per device, thread-safe.
  torch::Tensor packed_mlp(const torch::Device& device) const;

 private:
  mutable std::once_flag fused_once_;
  mutable std::shared_ptr<const FusedConstants> fused_;
  mutable std::mutex packed_mutex_;
  mutable std::map<std::string, torch::Tensor> packed_;  // by device
  SmallFcLoptConfig config_;
  torch::Tensor theta_;
  std::map<std::string, torch::Tensor> named_;
  std::vector<torch::Tensor> weights_, biases_;  // MLP layers in order
  std::shared_ptr<const LrSchedule> schedule_;
  nlohmann::json provenance_ = nlohmann::json::object();
};

/// The learned-optimizer config a checkpoint carries: lopt's metadata "lopt_config", or for a file
/// without it (PyLO's MetaMLP safetensors, or its hub folder) the geometry read from the tensors and
/// PyLO's defaults for the rest (from_lopt = false; the type is not recorded there).
struct CheckpointConfig {
  nlohmann::json config;
  bool from_lopt = false;
};
CheckpointConfig read_checkpoint_config(const std::string& checkpoint);

/// `config` (an optimizer config at JSON path `path`) completed from the checkpoint: keys the config
/// leaves out take the checkpoint's values; a key it names with a different value throws ConfigError
/// naming both, unless listed in "override": [...] (then a warning on stderr). A PyLO file gets a
/// one-line notice. The keys a checkpoint decides: type, hidden_size, hidden_layers, step_mult,
/// exp_mult, initial_*_decays.
nlohmann::json resolve_checkpoint_config(const nlohmann::json& config, const std::string& checkpoint,
                                         const std::string& path);

/// resolve_checkpoint of the ELO family: type, hidden_size, hidden_layers, exp_mult and the decays
/// from the checkpoint (a PyLO MetaMLP file: its geometry, PyLO's defaults for the rest).
nlohmann::json resolve_elo_checkpoint(const nlohmann::json& config, const std::string& checkpoint,
                                      const std::string& path);

/// Builds {"type": "small_fc_lopt" | "mulo" | "elo", ...} (make_learned_optimizer, as the concrete type).
std::unique_ptr<SmallFcLopt> make_small_fc_lopt(const nlohmann::json& config, const std::string& path = "/lopt");

namespace detail {
/// The same step as fused_lopt_steps (fused_step.h) through the GPU algorithm (kernels/lopt_gpu.h):
/// on CUDA tensors the CUDA kernels (LOPT_CUDA builds; otherwise an error saying so), on CPU tensors
/// its sequential host emulation (for tests: it runs the GPU's maths, indexing and reductions on any
/// machine). small_fc_lopt jobs only (job.opt set).
void gpu_lopt_steps(const std::vector<FusedJob>& jobs);
}  // namespace detail

}  // namespace lopt
