#pragma once
/// Data sources: where a task's batches come from, apart from the model that consumes them.
///
/// A DataSource yields batches as named tensors ("x"/"y" for images, "tokens" for text) for a
/// split (train / validation / test) and a shard (rank of world_size), from a caller's seeded
/// generator. Tasks are handed a source (shared between tasks of one config) and never load data
/// themselves. A BatchStream is the training loop's view: a seeded sequence of batches whose
/// position and generator state are saved and restored, so that an interrupted run resumes on
/// the batch it would have drawn.
#include <ATen/core/Generator.h>
#include <nlohmann/json.hpp>
#include <torch/types.h>

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace lopt {

enum class Split { train, validation, test };
std::string to_string(Split s);
/// "train", "validation" or "test"; ConfigError at `path` otherwise.
Split split_from_string(const std::string& s, const std::string& path = "/split");

/// Which part of a split a worker reads: rank r of world_size reads a disjoint 1/world_size
/// (IID: every world_size-th example). With dirichlet_alpha > 0 (labelled sources only) the parts
/// are label-skewed instead: each class's examples are split over the ranks in proportions drawn
/// from Dirichlet(alpha) (Hsu et al. 2019; small alpha = few classes per rank), fixed by
/// partition_seed.
struct Shard {
  int64_t rank = 0;
  int64_t world_size = 1;
  double dirichlet_alpha = 0;
  uint64_t partition_seed = 0;
};

/// Named tensors of one batch; every tensor's first dimension is the example index (or, stacked
/// for a population, [P, B, ...]).
struct Batch {
  std::map<std::string, torch::Tensor> tensors;
  /// The tensor `name`; throws std::invalid_argument naming the batch's keys when absent.
  const torch::Tensor& at(const std::string& name) const;
  /// Number of examples (first dimension of any tensor; second for a stacked population).
  int64_t size(bool stacked = false) const;
  /// Rows [begin, end) of every tensor.
  Batch slice(int64_t begin, int64_t end) const;
  /// Member p of a stacked batch.
  Batch member(int64_t p) const;
  /// Batches with identical keys and shapes stacked along a new leading dimension.
  static Batch stack(const std::vector<Batch>& batches);
  /// Every tensor on `device` (shares them when already there).
  Batch to(const torch::Device& device) const;
};

class DataSource {
 public:
  virtual ~DataSource() = default;
  /// The splits this source has (e.g. images: train, test; text: train, validation).
  virtual std::vector<Split> splits() const = 0;
  bool has_split(Split s) const;
  /// `batch_size` examples drawn with replacement from `shard` of `split` using `gen`.
  virtual Batch sample(Split split, int64_t batch_size, at::Generator& gen, Shard shard = {}) const = 0;
  /// Number of examples of `split` that evaluation walks through (images; text windows).
  virtual int64_t num_examples(Split split) const = 0;
  /// Examples [begin, end) of `split` in a fixed order (for evaluation).
  virtual Batch examples(Split split, int64_t begin, int64_t end) const = 0;
  /// The split a final figure is reported on: test when there is one, else validation.
  Split report_split() const;
  /// Whether shards may be label-skewed (Shard::dirichlet_alpha > 0): sources with class labels.
  virtual bool has_labels() const { return false; }
  virtual nlohmann::json hyperparams() const = 0;

 protected:
  /// Throws ConfigError naming the split and the ones available.
  void check_split(Split s) const;
};

/// A reproducible, resumable sequence of training batches.
class BatchStream {
 public:
  BatchStream(std::shared_ptr<const DataSource> source, Split split, int64_t batch_size, uint64_t seed,
              Shard shard = {});
  Batch next();
  /// Number of batches drawn so far.
  int64_t position() const { return position_; }
  /// {"position": n, "generator": <bytes as hex>}: restore() continues from exactly here.
  nlohmann::json state();
  void restore(const nlohmann::json& state);

 private:
  std::shared_ptr<const DataSource> source_;
  Split split_;
  int64_t batch_size_;
  Shard shard_;
  at::Generator gen_;
  int64_t position_ = 0;
};

/// Indices of `batch_size` draws with replacement from the examples i < n with i % world == rank.
/// With world_size 1 this is randint(n) (what every source used before shards existed).
torch::Tensor sample_shard_indices(int64_t n, int64_t batch_size, at::Generator& gen, Shard shard);

}  // namespace lopt

namespace lopt {

/// Batches drawn from several sources in fixed shares: of a batch of B examples, source i gives
/// round(fractions[i] * B) (largest remainders; the total is B), concatenated in source order and
/// drawn from the caller's generator in that order, so a BatchStream over it resumes by position.
/// Replay in continual pre-training: {new data, old data} with {1 - x, x}. Evaluation reads the first
/// source (splits, num_examples, examples). Sources must give batches with the same keys and shapes.
class MixtureSource : public DataSource {
 public:
  MixtureSource(std::vector<std::shared_ptr<const DataSource>> sources, std::vector<double> fractions);
  std::vector<Split> splits() const override { return sources_.front()->splits(); }
  Batch sample(Split split, int64_t batch_size, at::Generator& gen, Shard shard = {}) const override;
  int64_t num_examples(Split split) const override { return sources_.front()->num_examples(split); }
  Batch examples(Split split, int64_t begin, int64_t end) const override { return sources_.front()->examples(split, begin, end); }
  nlohmann::json hyperparams() const override;
  /// Examples of each source in a batch of `batch_size`.
  std::vector<int64_t> counts(int64_t batch_size) const;
  const std::vector<std::shared_ptr<const DataSource>>& sources() const { return sources_; }

 private:
  std::vector<std::shared_ptr<const DataSource>> sources_;
  std::vector<double> fractions_;
};

}  // namespace lopt
