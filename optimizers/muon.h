#pragma once
/// Muon (Keller Jordan et al. 2024, KellerJordan/Muon `MuonWithAuxAdam`): SGD momentum whose update
/// of each hidden weight matrix is orthogonalised by a quintic Newton–Schulz iteration, with every
/// other tensor (input and readout weights, embeddings, biases, norm gains) stepped by AdamW.
///
/// Matrices (roles in `muon_roles`, default hidden weights), per step t with gradient G:
///   M <- beta M + (1 - beta) G;  U = Nesterov ? (1 - beta) G + beta M : M          (lerps, as muon.py)
///   O = NS5(U): X = U^T if rows > cols; X /= (||X||_F + 1e-7);
///               5 x { A = X X^T; B = b A + c A A; X = a X + B X },  (a, b, c) = (3.4445, -4.7750, 2.0315)
///   W <- W (1 - lr wd) - lr sqrt(max(1, rows / cols)) O
/// in float32 (muon.py runs NS5 in bfloat16 on GPUs; `ns_dtype` "float64" is for reference checks).
/// Other tensors: AdamW (torch AdamW's maths; betas (0.9, 0.95), eps 1e-10 as MuonWithAuxAdam) at
/// lr x adamw_lr_ratio with the same schedule and weight decay. Tensors of rank > 2 are flattened to
/// (dim 0, rest) as muon.py does for convolution filters.
#include <array>
#include <memory>
#include <set>

#include "optimizers/optimizer.h"
#include "optimizers/schedule.h"

namespace lopt {

struct MuonOptions {
  double lr = 0.02;
  double momentum = 0.95;
  bool nesterov = true;
  int64_t ns_steps = 5;
  double weight_decay = 0.0;
  double adamw_lr_ratio = 0.015;  ///< AdamW branch lr = lr x ratio (MuonWithAuxAdam's example: 3e-4 / 0.02)
  double adamw_beta1 = 0.9;
  double adamw_beta2 = 0.95;
  double adamw_eps = 1e-10;
  std::set<ParamRole> muon_roles = {ParamRole::hidden_weight};
  bool ns_float64 = false;
  nlohmann::json schedule = {{"type", "constant"}};
};

/// The quintic Newton–Schulz orthogonalisation of muon.py (batched over leading dimensions of a
/// tensor of rank >= 2): an approximation of U V^T for G = U S V^T whose singular values lie in
/// roughly [0.7, 1.2] rather than exactly 1.
torch::Tensor newton_schulz5(const torch::Tensor& g, int64_t steps = 5);
/// The same iteration with other coefficients (a, b, c) and Frobenius-norm epsilon (Celo2: 1e-8).
torch::Tensor newton_schulz(const torch::Tensor& g, int64_t steps, const std::array<double, 3>& coeffs, double eps);

class Muon : public Optimizer {
 public:
  explicit Muon(MuonOptions options);
  OptState init(const ParamSet& params) const override;
  OptState update(const OptState& state, const std::vector<torch::Tensor>& grads,
                  const torch::Tensor& loss) const override;
  double lr_at(int64_t step, const ParamInfo& info) const override;
  std::vector<torch::Tensor> pre_orthogonal_directions(const OptState& state, const std::vector<torch::Tensor>& grads,
                                                       const torch::Tensor& loss) const override;
  nlohmann::json hyperparams() const override;
  /// Whether tensor `i` of `params` is stepped by Muon (a routed role and rank >= 2).
  bool is_muon(const ParamSet& params, size_t i) const;

 private:
  /// A Muon tensor's new momentum buffer and the direction handed to Newton–Schulz (its Nesterov
  /// blend with the gradient, or the buffer itself), from its gradient and the buffer before.
  std::pair<torch::Tensor, torch::Tensor> direction(const torch::Tensor& g, const torch::Tensor& buffer) const;
  MuonOptions opt_;
  std::unique_ptr<LrSchedule> schedule_;
};

/// Reads a {"type": "muon", ...} config (ConfigError naming the key).
MuonOptions muon_options_from_json(const nlohmann::json& config, const std::string& path);

}  // namespace lopt
