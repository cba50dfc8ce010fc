#pragma once
/// Learned optimizers: a meta-parameter vector theta that, once bound, is an inner Optimizer.
/// After learned_optimization `learned_optimizers/base.py` (init / opt_fn).
#include <ATen/core/Generator.h>
#include <nlohmann/json.hpp>
#include <torch/types.h>

#include <functional>
#include <memory>
#include <string>
#include <vector>

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
  /// `provenance` (e.g. {"checkpoint": ..., "theta_seed": ...}) goes into its hyperparams().
  virtual std::unique_ptr<Optimizer> bind(const torch::Tensor& theta,
                                          const nlohmann::json& provenance = nlohmann::json::object()) const = 0;
  /// Writes / reads theta (format chosen by the implementation).
  virtual void save(const std::string& path, const torch::Tensor& theta) const = 0;
  virtual torch::Tensor load(const std::string& path) const = 0;
  /// Writes theta in the Hugging Face hub layout of the reference implementation (folder `dir`),
  /// where it has one; the default writes nothing.
  virtual void save_hub(const std::string& dir, const torch::Tensor& theta) const {
    (void)dir;
    (void)theta;
  }
  /// Local SGD: the number of workers' deltas the bound optimizer takes as extra inputs (a learned
  /// aggregator); 0 for a per-parameter learned optimizer.
  virtual int64_t worker_inputs() const { return 0; }
  virtual nlohmann::json hyperparams() const = 0;
};

/// How a learned-optimizer type is built. Types of one `family` share a checkpoint format (a
/// checkpoint of one family is refused by another, naming the type to use).
struct LearnedOptimizerType {
  std::string family;
  /// The learned optimizer from its config at JSON path `path` (ConfigError naming the key).
  std::function<std::unique_ptr<LearnedOptimizer>(const nlohmann::json& config, const std::string& path)> make;
  /// `config` completed from a checkpoint of this family: the keys a checkpoint decides
  /// (architecture, meta-training hyperparameters) taken from it; ConfigError at `path` on a conflict.
  std::function<nlohmann::json(const nlohmann::json& config, const std::string& checkpoint, const std::string& path)>
      resolve_checkpoint;
};

/// Adds a learned-optimizer type (the builtins: optimizers/builtin_optimizers.cpp). It is then also an
/// optimizer type for make_optimizer, which binds it to a checkpoint's theta or an untrained one.
void register_learned_optimizer_type(const std::string& type, LearnedOptimizerType t);
/// Registered learned-optimizer types, sorted.
std::vector<std::string> learned_optimizer_types();
/// Whether `type` is a registered learned-optimizer type.
bool is_learned_optimizer_type(const std::string& type);
/// The registration of `type`; ConfigError at `path` listing the registered types.
LearnedOptimizerType learned_optimizer_type(const std::string& type, const std::string& path);

/// The learned-optimizer type of a config without "type" (meta-train's "lopt", checkpoints of old runs).
inline constexpr const char* kDefaultLearnedOptimizer = "mulo";

/// Builds a learned optimizer from {"type": <registered learned type>, ...} (kDefaultLearnedOptimizer
/// when "type" is absent); ConfigError naming `path` for unknown types or bad values.
std::unique_ptr<LearnedOptimizer> make_learned_optimizer(const nlohmann::json& config, const std::string& path = "/lopt");

/// lopt's "lopt_config" metadata of a checkpoint (a file or hub folder), or null for a file without
/// it (a foreign checkpoint); IoError when the metadata is malformed.
nlohmann::json stored_checkpoint_config(const std::string& checkpoint);
/// The type a checkpoint file records (lopt's "lopt_config" metadata), or "" for a file without it.
std::string checkpoint_type(const std::string& checkpoint);
/// The learned-optimizer config of a checkpoint as make_learned_optimizer takes it: the config
/// lopt recorded in it, or, for a foreign file (PyLO's MetaMLP), `foreign_type` completed from the file.
nlohmann::json checkpoint_learned_config(const std::string& checkpoint, const std::string& foreign_type = "mulo");
/// The safetensors file of a checkpoint: the path itself, or model.safetensors of a hub folder.
std::string checkpoint_weights_file(const std::string& checkpoint);

/// The network a checkpoint without lopt metadata holds, from its tensor names: "MetaMLP" (PyLO's
/// small_fc_lopt / muLO / ELO network), "CELO2MLP" (PyLO's Celo2 network) or "" (neither).
std::string foreign_network(const std::string& checkpoint);
/// Throws ConfigError at `path`/type when `checkpoint` is a foreign file holding another network than
/// `expected` ("MetaMLP" or "CELO2MLP"), naming both and the types that read it.
void check_foreign_network(const std::string& checkpoint, const std::string& expected, const std::string& path);
/// Prints "note: <text>" on stderr once per process for each distinct text.
void note_once(const std::string& text);

/// A family's resolve_checkpoint core: `config` (at JSON path `path`) completed with the `owned` keys
/// (those a checkpoint decides) of `stored` (the checkpoint's config): a key the config leaves out takes
/// the checkpoint's value; a key it names with another value is a ConfigError naming both, unless the
/// config lists it in "override": [...] (then a warning on stderr). "override" is removed.
nlohmann::json complete_from_checkpoint(const nlohmann::json& config, const nlohmann::json& stored,
                                        const std::vector<std::string>& owned, const std::string& checkpoint,
                                        const std::string& path);

}  // namespace lopt
