#pragma once
/// Learned optimizers: a meta-parameter vector theta that, once bound, is an inner Optimizer.
/// After learned_optimization `learned_optimizers/base.py` (init / opt_fn).
#include <ATen/core/Generator.h>
#include <nlohmann/json.hpp>
#include <torch/types.h>

#include <memory>
#include <string>

#include "optimizers/optimizer.h"

namespace lopt {

class LearnedOptimizer {
 public:
  virtual ~LearnedOptimizer() = default;
  /// A fresh flat theta [num_theta()] drawn from `gen`.
  virtual torch::Tensor init_theta(at::Generator& gen) const = 0;
  /// Number of meta-parameters.
  virtual int64_t num_theta() const = 0;
  /// The inner optimizer defined by `theta` (kept by reference: gradients flow back to it).
  virtual std::unique_ptr<Optimizer> bind(const torch::Tensor& theta) const = 0;
  /// Writes / reads theta (format chosen by the implementation).
  virtual void save(const std::string& path, const torch::Tensor& theta) const = 0;
  virtual torch::Tensor load(const std::string& path) const = 0;
  /// Writes theta in the Hugging Face hub layout of the reference implementation (folder `dir`),
  /// where it has one; the default writes nothing.
  virtual void save_hub(const std::string& dir, const torch::Tensor& theta) const {
    (void)dir;
    (void)theta;
  }
  virtual nlohmann::json hyperparams() const = 0;
};

/// Builds a learned optimizer from {"type": "small_fc_lopt" | "mulo", ...}; ConfigError naming
/// `path` for unknown types or bad values.
std::unique_ptr<LearnedOptimizer> make_learned_optimizer(const nlohmann::json& config, const std::string& path = "/lopt");

}  // namespace lopt
