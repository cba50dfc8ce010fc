#pragma once
/// MLP image classifier on flattened images, written functionally over a ParamSet and
/// parametrized by SP or muP (parametrization/parametrization.h).
#include <memory>
#include <string>
#include <vector>

#include "parametrization/parametrization.h"
#include "tasks/data/image_dataset.h"
#include "tasks/task.h"

namespace lopt {

struct MlpConfig {
  int64_t width = 128;
  int64_t depth = 2;  ///< number of hidden layers (>= 1): 1 input weight, depth-1 hidden weights, 1 readout
  std::string activation = "relu";  ///< relu, gelu, tanh
  int64_t batch_size = 128;
  int64_t image_size = 28;
  std::string dataset = "fashion_mnist";  ///< image_dataset_names(): fashion_mnist, digits (8x8), the two Fashion-MNIST stand-ins, synthetic
  std::string data_dir;                   ///< empty: LOPT_DATA_DIR or the Debian package's folder
  nlohmann::json parametrization = {{"type", "mup"}, {"base_width", 128}};

  static MlpConfig from_json(const nlohmann::json& j, const std::string& path = "/task");
  nlohmann::json to_json() const;
};

/// Batches {"x": [B, D], "y": [B]}; metrics loss (cross-entropy) and accuracy.
class MlpTask : public Task {
 public:
  /// Uses the configured dataset (make_image_source).
  explicit MlpTask(MlpConfig config);
  /// Uses `data` instead (tests, synthetic data); its image size and classes decide the shapes.
  MlpTask(MlpConfig config, std::shared_ptr<const ImageSource> data);

  ParamSet init(at::Generator& gen) const override;
  std::shared_ptr<const DataSource> data() const override { return data_; }
  int64_t batch_size() const override { return config_.batch_size; }
  LossAndMetrics loss_and_metrics(const ParamSet& params, const Batch& batch,
                                  std::vector<torch::Tensor>* activations = nullptr) const override;
  std::vector<std::string> activation_names() const override { return layer_names(); }
  std::string report_metric() const override { return "accuracy"; }
  torch::Tensor normalizer(const torch::Tensor& loss) const override;
  torch::Tensor population_loss(const ParamSet& stacked, const Batch& batch) const override;
  torch::Tensor population_loss_and_grads(const ParamSet& stacked, const Batch& batch,
                                          std::vector<torch::Tensor>* grads) const override;
  nlohmann::json hyperparams() const override;
  nlohmann::json population_key() const override;

  /// Logits [B, classes] for inputs x [B, D]. When `activations` is given, appends the
  /// output of every layer (post-activation hidden layers, then logits).
  torch::Tensor forward(const ParamSet& params, const torch::Tensor& x,
                        std::vector<torch::Tensor>* activations = nullptr) const;
  /// Names of the layers whose activations `forward` records ("hidden_0", ..., "logits").
  std::vector<std::string> layer_names() const;
  const MlpConfig& config() const { return config_; }
  const Parametrization& parametrization() const { return *param_; }
  const ImageDataset& dataset() const { return data_->dataset(); }
  /// Shapes and roles of the parameters (no tensors allocated).
  std::vector<ParamInfo> param_info() const;

 private:
  torch::Tensor activate(const torch::Tensor& h) const;
  MlpConfig config_;
  std::shared_ptr<const ImageSource> data_;
  std::unique_ptr<Parametrization> param_;
  std::vector<double> forward_mult_;
};

/// Samples MLP task configs: width from a list or a log-uniform range, depth, batch size,
/// image size, activation and dataset from lists; parametrization fixed; optionally a global
/// reparameterisation scale per task, log-uniform in reparam_scale_range (task augmentation: the
/// task is evaluated at w * s and initialised at w0 / s; make_task applies it to any task type).
/// Config: {"type": "mlp_family", "widths": [64, 128] | "width_range": [64, 1024],
///          "depths": [2], "batch_sizes": [128], "image_sizes": [8], "activations": ["relu"],
///          "parametrization": {...}, "dataset": "fashion_mnist" | "datasets": [...], "data_dir": "",
///          "reparam_scale_range": [1e-3, 1e3], "dataset_per_slot": false}
class MlpFamily : public TaskFamily {
 public:
  explicit MlpFamily(const nlohmann::json& config, const std::string& path = "/task_family");
  nlohmann::json sample(at::Generator& gen) const override;
  /// With dataset_per_slot, slot k takes datasets[k % n] (equal shares per estimate); else sample().
  nlohmann::json sample_for_slot(at::Generator& gen, int64_t slot) const override;
  nlohmann::json hyperparams() const override { return config_; }

 private:
  nlohmann::json config_;
  bool dataset_per_slot_ = false;
  std::vector<int64_t> widths_, depths_, batch_sizes_, image_sizes_;
  std::vector<std::string> activations_, datasets_;
  int64_t width_lo_ = 0, width_hi_ = 0;
  double reparam_lo_ = 0, reparam_hi_ = 0;
};

}  // namespace lopt
