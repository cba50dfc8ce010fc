#include "parametrization/param_set.h"

#include "common/errors.h"

namespace lopt {

std::string to_string(ParamRole role) {
  switch (role) {
    case ParamRole::input_weight: return "input_weight";
    case ParamRole::hidden_weight: return "hidden_weight";
    case ParamRole::output_weight: return "output_weight";
    case ParamRole::bias: return "bias";
    case ParamRole::embedding: return "embedding";
    case ParamRole::norm_gain: return "norm_gain";
  }
  return "?";
}

const std::vector<ParamRole>& all_param_roles() {
  static const std::vector<ParamRole> roles = {ParamRole::input_weight, ParamRole::hidden_weight, ParamRole::output_weight,
                                               ParamRole::bias,         ParamRole::embedding,     ParamRole::norm_gain};
  return roles;
}

ParamRole param_role_from_string(const std::string& s) {
  for (auto r : all_param_roles())
    if (to_string(r) == s) return r;
  throw Error("unknown parameter role '" + s + "'");
}

int64_t ParamSet::numel() const {
  int64_t n = 0;
  for (const auto& t : tensors) n += t.numel();
  return n;
}

ParamSet ParamSet::clone() const {
  ParamSet out;
  out.info = info;
  for (const auto& t : tensors) out.tensors.push_back(t.detach().clone());
  return out;
}

ParamSet ParamSet::with_tensors(std::vector<torch::Tensor> t) const {
  TORCH_CHECK(t.size() == tensors.size(), "ParamSet::with_tensors: got ", t.size(), " tensors, expected ",
              tensors.size());
  ParamSet out;
  out.info = info;
  out.tensors = std::move(t);
  return out;
}

ParamSet ParamSet::detached_requiring_grad() const {
  ParamSet out;
  out.info = info;
  for (const auto& t : tensors) out.tensors.push_back(t.detach().requires_grad_(true));
  return out;
}

}  // namespace lopt
