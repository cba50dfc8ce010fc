#pragma once
/// Coordinate check (Yang et al., Tensor Programs V, section D.1; microsoft/mup `coord_check.py`):
/// train models of growing width for a few Adam steps under SP and under muP and record the RMS of
/// every layer's activations after each step. Under muP the curves are flat in width; under SP
/// the logits grow with width. The model is an MLP built from depth / batch_size / image_size /
/// dataset, or any task given as "task" (e.g. {"type": "transformer_lm", "depth": 2, "heads": 2,
/// "context": 32}); its "width" and "parametrization" are set per point.
#include <nlohmann/json.hpp>

#include <string>
#include <vector>

#include "common/progress.h"

namespace lopt {

struct CoordCheckConfig {
  std::vector<int64_t> widths = {64, 128, 256, 512, 1024, 2048, 4096};
  std::vector<std::string> parametrizations = {"sp", "mup"};
  int64_t depth = 3;
  int64_t steps = 5;
  int64_t seeds = 3;
  double lr = 1e-2;  ///< Adam LR (muAdam under muP)
  int64_t batch_size = 64;
  int64_t image_size = 28;
  int64_t base_width = 64;
  std::string dataset = "fashion_mnist";
  std::string data_dir;
  nlohmann::json task = nlohmann::json::object();  ///< empty: the MLP above
  /// Optimizer per parametrization, e.g. {"sp": {"type": "celo2", ...}, "mup": {"type": "mucelo2", ...}};
  /// a parametrization not named takes Adam (sp) / μAdam (mup) at `lr`.
  nlohmann::json optimizers = nlohmann::json::object();

  static CoordCheckConfig from_json(const nlohmann::json& j);
  nlohmann::json to_json() const;
};

/// The task config of one point (width, parametrization) of a coordinate check.
nlohmann::json coord_check_task(const CoordCheckConfig& config, int64_t width, const std::string& parametrization);

/// rms[((p * W + w) * (steps + 1) + t) * L + l]: parametrization p, width w, after t updates, layer l.
struct CoordCheckResult {
  CoordCheckConfig config;
  std::vector<std::string> layers;
  std::vector<double> rms;
  double at(size_t p, size_t w, int64_t t, size_t l) const;
};

/// The optimizer config run under `parametrization`.
nlohmann::json coord_check_optimizer(const CoordCheckConfig& config, const std::string& parametrization);

CoordCheckResult run_coord_check(const CoordCheckConfig& config, ProgressMode progress = ProgressMode::automatic);
void write_coord_check(const std::string& path, const CoordCheckResult& result);

}  // namespace lopt
