#pragma once
/// ParamInfo / ParamSet: the parameters of a task as plain tensors plus what each one is,
/// so that parametrizations (SP, muP) and optimizers can treat each tensor by its role.
#include <torch/types.h>

#include <cstdint>
#include <string>
#include <vector>

namespace lopt {

/// What a parameter tensor does in the network; decides its muP scaling.
enum class ParamRole {
  input_weight,   ///< maps a finite input dimension to the width (fan_out scales)
  hidden_weight,  ///< width x width ("matrix-like": both dimensions scale)
  output_weight,  ///< maps the width to a finite output (readout)
  bias,           ///< vector-like
  embedding,      ///< token embedding table (like an input weight)
  norm_gain,      ///< LayerNorm / RMSNorm gain (vector-like)
};

std::string to_string(ParamRole role);
ParamRole param_role_from_string(const std::string& s);
/// Every role, in declaration order.
const std::vector<ParamRole>& all_param_roles();
/// The names of some roles, in their iteration order (for messages and result files).
template <class Roles>
std::vector<std::string> role_names(const Roles& roles) {
  std::vector<std::string> names;
  for (ParamRole r : roles) names.push_back(to_string(r));
  return names;
}

/// Describes one parameter tensor. width_mult = width / base_width of the dimension(s) that scale.
struct ParamInfo {
  std::string name;
  ParamRole role = ParamRole::bias;
  int64_t fan_in = 1;
  int64_t fan_out = 1;
  double width_mult = 1.0;
};

/// Parameters of a task: tensors[i] is described by info[i].
struct ParamSet {
  std::vector<torch::Tensor> tensors;
  std::vector<ParamInfo> info;

  size_t size() const { return tensors.size(); }
  /// Total number of scalar elements.
  int64_t numel() const;
  /// Deep copy (tensors cloned; autograd history dropped).
  ParamSet clone() const;
  /// Same info, tensors replaced (sizes must match).
  ParamSet with_tensors(std::vector<torch::Tensor> t) const;
  /// Marks every tensor as requiring grad (on detached copies) for autograd.
  ParamSet detached_requiring_grad() const;
};

}  // namespace lopt
