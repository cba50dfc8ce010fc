#pragma once
/// MLP image classifier on flattened images, written functionally over a ParamSet and
/// parametrized by SP or muP (parametrization/parametrization.h).
#include <memory>
#include <string>
#include <vector>

#include "parametrization/parametrization.h"
#include "tasks/task.h"

namespace lopt {

struct MlpConfig {
  int64_t width = 128;
  int64_t depth = 2;  ///< number of hidden layers (>= 1): 1 input weight, depth-1 hidden weights, 1 readout
  std::string activation = "relu";  ///< relu, gelu, tanh
  int64_t batch_size = 128;
  int64_t image_size = 28;
  std::string dataset = "fashion_mnist";  ///< fashion_mnist or synthetic
  std::string data_dir;                   ///< empty: LOPT_DATA_DIR or the Debian package's folder
  nlohmann::json parametrization = {{"type", "mup"}, {"base_width", 128}};

  static MlpConfig from_json(const nlohmann::json& j, const std::string& path = "/task");
  nlohmann::json to_json() const;
};

class MlpTask : public Task {
 public:
  explicit MlpTask(MlpConfig config);
  /// Uses `data` instead of loading the configured dataset (tests, shared datasets).
  MlpTask(MlpConfig config, std::shared_ptr<const ImageDataset> data);

  ParamSet init(at::Generator& gen) const override;
  torch::Tensor loss(const ParamSet& params, const Batch& batch) const override;
  torch::Tensor population_loss(const ParamSet& stacked, const torch::Tensor& x, const torch::Tensor& y) const override;
  torch::Tensor population_loss_and_grads(const ParamSet& stacked, const torch::Tensor& x, const torch::Tensor& y,
                                          std::vector<torch::Tensor>* grads) const override;
  Batch sample_batch(Split split, at::Generator& gen) const override;
  std::map<std::string, double> evaluate(const ParamSet& params, Split split,
                                         int64_t max_examples = 0) const override;
  nlohmann::json hyperparams() const override;

  /// Logits [B, classes] for inputs x [B, D]. When `activations` is given, appends the
  /// output of every layer (post-activation hidden layers, then logits).
  torch::Tensor forward(const ParamSet& params, const torch::Tensor& x,
                        std::vector<torch::Tensor>* activations = nullptr) const;
  /// Names of the layers whose activations `forward` records ("hidden_0", ..., "logits").
  std::vector<std::string> layer_names() const;
  const MlpConfig& config() const { return config_; }
  const Parametrization& parametrization() const { return *param_; }
  const ImageDataset& data() const { return *data_; }
  /// Shapes and roles of the parameters (no tensors allocated).
  std::vector<ParamInfo> param_info() const;

 private:
  torch::Tensor activate(const torch::Tensor& h) const;
  MlpConfig config_;
  std::shared_ptr<const ImageDataset> data_;
  std::unique_ptr<Parametrization> param_;
  std::vector<double> forward_mult_;
};

/// Samples MLP task configs: width from a list or a log-uniform range, depth, batch size,
/// image size and activation from lists; parametrization and dataset fixed.
/// Config: {"type": "mlp_family", "widths": [64, 128] | "width_range": [64, 1024],
///          "depths": [2], "batch_sizes": [128], "image_sizes": [8], "activations": ["relu"],
///          "parametrization": {...}, "dataset": "fashion_mnist", "data_dir": ""}
class MlpFamily : public TaskFamily {
 public:
  MlpFamily(const nlohmann::json& config, const std::string& path = "/task_family");
  nlohmann::json sample(at::Generator& gen) const override;
  nlohmann::json hyperparams() const override { return config_; }

 private:
  nlohmann::json config_;
  std::vector<int64_t> widths_, depths_, batch_sizes_, image_sizes_;
  std::vector<std::string> activations_;
  int64_t width_lo_ = 0, width_hi_ = 0;
};

}  // namespace lopt
