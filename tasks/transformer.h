#pragma once
/// Byte-level decoder-only transformer language model, functional over a ParamSet so that every
/// optimizer of the toolkit (learned ones included) trains it.
///
/// Pre-norm blocks (LayerNorm -> causal multi-head attention with rotary position embeddings ->
/// residual; LayerNorm -> GELU MLP of 4x width -> residual), a final LayerNorm and an untied
/// readout over the 256 byte values. Under muP (Yang et al., Tensor Programs V; microsoft/mup
/// MuReadout and attention; the muLO authors' `src/mu_transformer.py` in
/// lefameuxbeding/learned_aggregation): attention logits scaled by 1/d_head instead of
/// 1/sqrt(d_head), zero-initialised readout with logits x 1/width_mult, and the Adam-type LR of the
/// matrix-like weights (qkv, attention output, both MLP weights) x 1/width_mult through their
/// ParamRole. Heads are fixed, so d_head = width / heads grows with width.
#include <memory>
#include <string>
#include <vector>

#include "parametrization/parametrization.h"
#include "tasks/data/text_source.h"
#include "tasks/moe.h"
#include "tasks/task.h"

namespace lopt {

struct TransformerConfig {
  int64_t width = 128;  ///< d_model
  int64_t depth = 2;    ///< number of blocks
  int64_t heads = 4;
  int64_t context = 64;
  int64_t batch_size = 32;
  int64_t mlp_ratio = 4;
  double rope_base = 10000.0;
  std::string corpus = "english";  ///< english, german, code (tasks/data/text_source.h)
  std::string data_dir;            ///< folder to read instead of the corpus's default
  int64_t max_corpus_bytes = 8 << 20;
  nlohmann::json parametrization = {{"type", "mup"}, {"base_width", 128}};
  /// Mixture-of-experts feed-forward layers in every block when moe.experts > 0 (tasks/moe.h).
  MoeConfig moe;
  /// Replay: replay_fraction of every training batch comes from replay_corpus (the old
  /// distribution in continual pre-training; total tokens unchanged). Evaluation reads `corpus`.
  std::string replay_corpus;
  std::string replay_data_dir;  ///< folder to read instead of the replayed corpus's default
  double replay_fraction = 0;
  /// The replayed corpus's source config.
  TextSourceConfig replay_source() const;

  static TransformerConfig from_json(const nlohmann::json& j, const std::string& path = "/task");
  nlohmann::json to_json() const;
  TextSourceConfig text_source() const;
};

/// Batches {"tokens": [B, context + 1]}; metrics loss (nats per byte) and bits_per_byte; with MoE
/// layers also aux_loss and z_loss (the router terms, summed over layers, before their
/// coefficients), mri (mean over layers of the maximum routing imbalance) and mri_<l> per layer.
/// The training loss adds aux_coef * aux_loss + z_coef * z_loss for the "aux" router.
class TransformerLmTask : public Task {
 public:
  explicit TransformerLmTask(TransformerConfig config);
  TransformerLmTask(TransformerConfig config, std::shared_ptr<const DataSource> data);

  ParamSet init(at::Generator& gen) const override;
  std::shared_ptr<const DataSource> data() const override { return data_; }
  int64_t batch_size() const override { return config_.batch_size; }
  LossAndMetrics loss_and_metrics(const ParamSet& params, const Batch& batch,
                                  std::vector<torch::Tensor>* activations = nullptr) const override;
  std::vector<std::string> activation_names() const override;
  std::string report_metric() const override { return "bits_per_byte"; }
  torch::Tensor normalizer(const torch::Tensor& loss) const override;
  nlohmann::json hyperparams() const override { return config_.to_json(); }

  /// Logits [B, T, 256] for tokens [B, T]. With `activations`: the embedding, each block's
  /// attention logits (pre-softmax, the explicit path) and output, and the logits.
  /// With `routings`, appends each MoE layer's routing decision (tokens flattened [B*T]).
  torch::Tensor forward(const ParamSet& params, const torch::Tensor& tokens,
                        std::vector<torch::Tensor>* activations = nullptr, std::vector<Routing>* routings = nullptr) const;
  std::vector<ParamInfo> param_info() const;
  /// Shape of each tensor of param_info() (expert weights stack the experts in front).
  std::vector<std::vector<int64_t>> param_shapes() const;
  /// Tensors per block.
  int64_t block_tensors() const;
  const TransformerConfig& config() const { return config_; }
  static constexpr int64_t kVocab = 256;

 protected:
  int64_t eval_chunk() const override { return 64; }

 private:
  torch::Tensor attention(const torch::Tensor& qkv, int64_t T, std::vector<torch::Tensor>* activations) const;
  TransformerConfig config_;
  std::shared_ptr<const DataSource> data_;
  std::unique_ptr<Parametrization> param_;
  double attn_scale_ = 1.0, readout_mult_ = 1.0;
  torch::Tensor rope_cos_, rope_sin_;  ///< [2, 1, 1, T, d_head/2]: q (times the attention scale), k
  torch::Tensor causal_mask_;          ///< [T, T] additive, -inf above the diagonal
};

/// Samples transformer LM configs: width, depth, heads, context and batch size from lists;
/// corpus and parametrization fixed.
/// Config: {"type": "transformer_lm_family", "widths": [32, 64], "depths": [2], "heads": [2],
///          "contexts": [32], "batch_sizes": [16], "corpus": "english", "parametrization": {...}}
class TransformerFamily : public TaskFamily {
 public:
  explicit TransformerFamily(const nlohmann::json& config, const std::string& path = "/task_family");
  nlohmann::json sample(at::Generator& gen) const override;
  nlohmann::json hyperparams() const override { return config_; }

 private:
  nlohmann::json config_;
  std::vector<int64_t> widths_, depths_, heads_, contexts_, batch_sizes_;
};

}  // namespace lopt
