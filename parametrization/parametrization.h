#pragma once
/// Standard parametrization (SP) and maximal-update parametrization (muP).
///
/// muP follows Yang et al., Tensor Programs V (table 3, Adam-type optimizers) and
/// microsoft/mup (MuReadout, MuAdam): with width_mult = fan_in / base_fan_in,
///   hidden weights: init std 1/sqrt(fan_in), Adam LR x 1/width_mult;
///   output weights: zero init (optional), logits x 1/width_mult, LR unchanged;
///   input weights, biases, gains: as SP.
/// At width == base_width every multiplier is 1, so muP equals SP (with zero_init_readout
/// off, exactly).
#include <nlohmann/json.hpp>

#include <memory>
#include <string>

#include "parametrization/param_set.h"

namespace lopt {

class Parametrization {
 public:
  virtual ~Parametrization() = default;
  /// Standard deviation of the Gaussian initialisation; 0 means zero-initialised.
  virtual double init_std(const ParamInfo& info) const = 0;
  /// Multiplier on an Adam-type optimizer's learning rate for this tensor.
  virtual double lr_mult(const ParamInfo& info) const = 0;
  /// Multiplier applied to the layer's output in the forward pass.
  virtual double forward_mult(const ParamInfo& info) const = 0;
  /// Width multiplier of a layer whose scaling dimension has size `width`.
  double width_mult(int64_t width) const { return static_cast<double>(width) / static_cast<double>(base_width_); }
  int64_t base_width() const { return base_width_; }
  virtual std::string name() const = 0;
  virtual nlohmann::json hyperparams() const;

 protected:
  explicit Parametrization(int64_t base_width);
  int64_t base_width_;
};

class StandardParametrization : public Parametrization {
 public:
  explicit StandardParametrization(int64_t base_width = 128) : Parametrization(base_width) {}
  double init_std(const ParamInfo& info) const override;
  double lr_mult(const ParamInfo&) const override { return 1.0; }
  double forward_mult(const ParamInfo&) const override { return 1.0; }
  std::string name() const override { return "sp"; }
};

class MupParametrization : public Parametrization {
 public:
  MupParametrization(int64_t base_width = 128, bool zero_init_readout = true)
      : Parametrization(base_width), zero_init_readout_(zero_init_readout) {}
  double init_std(const ParamInfo& info) const override;
  double lr_mult(const ParamInfo& info) const override;
  double forward_mult(const ParamInfo& info) const override;
  std::string name() const override { return "mup"; }
  nlohmann::json hyperparams() const override;

 private:
  bool zero_init_readout_;
};

/// "sp" or "mup". Throws ConfigError listing the valid names.
std::unique_ptr<Parametrization> make_parametrization(const std::string& name, int64_t base_width = 128);
/// From {"type": "sp"|"mup", "base_width": 128, "zero_init_readout": true}; `path` for errors.
std::unique_ptr<Parametrization> make_parametrization(const nlohmann::json& config, const std::string& path = "");

}  // namespace lopt
